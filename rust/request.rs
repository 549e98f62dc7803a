//! One request as the scheduler tracks it: its tokens (prompt then output), how many of
//! them have KV in the cache, its blocks, and the conditions that finish it.
//!
//! vLLM V1's model: scheduling moves `num_computed_tokens` towards `tokens.len()`, so
//! chunked prefill, decode and recomputation after preemption are one mechanism.

use crate::block_pool::RequestBlocks;
use crate::detokenizer::{DetokenizeParams, IncrementalDetokenizer};
use crate::error::{CoreError, CoreResult};

/// Why a request finished, as OpenAI's `finish_reason` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` or `max_model_len` reached.
    Length,
    /// Aborted by the caller.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Waiting,
    Running,
    /// Preempted: blocks freed, back in the waiting queue, to be recomputed.
    Preempted,
}

/// What `add_request` receives, before validation.
#[derive(Clone, Default)]
pub struct NewRequest {
    pub request_id: String,
    pub prompt_token_ids: Vec<i64>,
    pub max_tokens: i64,
    pub min_tokens: i64,
    pub eos_token_ids: Vec<i64>,
    pub stop_token_ids: Vec<i64>,
    pub ignore_eos: bool,
    pub priority: i64,
    pub cache_salt: Option<String>,
    pub arrival_time: Option<f64>,
    /// Detokenize the output (and check stop strings) with these settings; None: ids only.
    pub detokenize: Option<DetokenizeParams>,
}

/// The token-level stop conditions (stop strings join them with the detokenizer).
#[derive(Debug, Clone, Default)]
pub struct StopConditions {
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub eos_token_ids: Vec<u32>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

pub struct Request {
    pub id: String,
    /// Unique for the scheduler's lifetime (slots are reused, sequence numbers never).
    pub seq: u64,
    /// Prompt then output tokens.
    pub tokens: Vec<u32>,
    pub num_prompt_tokens: usize,
    /// Tokens whose KV is in the cache (prefix hits included) after the last schedule.
    pub num_computed_tokens: usize,
    /// Tokens found in the prefix cache when the request was first admitted.
    pub num_cached_tokens: Option<usize>,
    pub stop: StopConditions,
    pub priority: i64,
    pub arrival_time: f64,
    /// The root of the request's prefix-cache key chain (folds in the cache salt).
    pub cache_root: u64,
    pub status: RequestStatus,
    pub blocks: RequestBlocks,
    /// The key of the request in the waiting queue while it waits.
    pub wait_key: Option<WaitKey>,
    pub num_preemptions: u32,
    /// Tokens sampled by steps not yet passed to `update` (async scheduling only).
    pub num_output_placeholders: usize,
    /// Incremental text and stop strings; `update` runs it right after the token-level
    /// stop checks, so a stop string finishes the request in the same call.
    pub detok: Option<IncrementalDetokenizer>,
}

/// Waiting-queue order: (priority, arrival time, order of insertion). Under FCFS the
/// first two are zero; a preempted request takes a negative order to go first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitKey {
    pub priority: i64,
    pub arrival_time: f64,
    pub order: i64,
}

impl Eq for WaitKey {}

impl PartialOrd for WaitKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WaitKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&other.priority)
            .then(self.arrival_time.total_cmp(&other.arrival_time))
            .then(self.order.cmp(&other.order))
    }
}

fn token_ids(what: &str, ids: &[i64]) -> CoreResult<Vec<u32>> {
    ids.iter()
        .map(|&t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| t <= i32::MAX as u32)
                .ok_or_else(|| {
                    CoreError::InvalidRequest(format!(
                        "{what} must be token ids in [0, 2**31), got {t}"
                    ))
                })
        })
        .collect()
}

fn count(what: &str, value: i64) -> CoreResult<usize> {
    usize::try_from(value)
        .map_err(|_| CoreError::InvalidRequest(format!("{what} must be >= 0, got {value}")))
}

impl StopConditions {
    /// The token-level validation of `NewRequest`'s stop fields.
    pub fn from_new(new: &NewRequest) -> CoreResult<Self> {
        let max_tokens = count("max_tokens", new.max_tokens)?;
        if max_tokens == 0 {
            return Err(CoreError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        let min_tokens = count("min_tokens", new.min_tokens)?;
        if min_tokens > max_tokens {
            return Err(CoreError::InvalidRequest(format!(
                "min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})"
            )));
        }
        Ok(StopConditions {
            max_tokens,
            min_tokens,
            eos_token_ids: token_ids("eos_token_ids", &new.eos_token_ids)?,
            stop_token_ids: token_ids("stop_token_ids", &new.stop_token_ids)?,
            ignore_eos: new.ignore_eos,
        })
    }
}

/// Validate the prompt's token ids.
pub fn prompt_tokens(new: &NewRequest) -> CoreResult<Vec<u32>> {
    if new.prompt_token_ids.is_empty() {
        return Err(CoreError::InvalidRequest(format!(
            "request {:?} has an empty prompt",
            new.request_id
        )));
    }
    token_ids("prompt_token_ids", &new.prompt_token_ids)
}

impl Request {
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }

    pub fn output_token_ids(&self) -> &[u32] {
        &self.tokens[self.num_prompt_tokens..]
    }

    /// After a token was appended: has the request finished, and on which stop token?
    /// A natural stop wins over the length limit reached by the same token; EOS and
    /// stop tokens count only from `min_tokens` on.
    pub fn check_stop(&self, max_model_len: usize) -> Option<(FinishReason, Option<u32>)> {
        let n_out = self.num_output_tokens();
        if n_out >= self.stop.min_tokens {
            if let Some(&last) = self.tokens.last() {
                if !self.stop.ignore_eos && self.stop.eos_token_ids.contains(&last) {
                    return Some((FinishReason::Stop, None));
                }
                if self.stop.stop_token_ids.contains(&last) {
                    return Some((FinishReason::Stop, Some(last)));
                }
            }
        }
        if n_out >= self.stop.max_tokens || self.tokens.len() >= max_model_len {
            return Some((FinishReason::Length, None));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &[u32], stop: StopConditions) -> Request {
        Request {
            id: "r".into(),
            seq: 0,
            tokens: prompt.to_vec(),
            num_prompt_tokens: prompt.len(),
            num_computed_tokens: 0,
            num_cached_tokens: None,
            stop,
            priority: 0,
            arrival_time: 0.0,
            cache_root: 0,
            status: RequestStatus::Waiting,
            blocks: RequestBlocks::default(),
            wait_key: None,
            num_preemptions: 0,
            num_output_placeholders: 0,
            detok: None,
        }
    }

    #[test]
    fn stop_conditions_in_order() {
        let stop = StopConditions {
            max_tokens: 4,
            min_tokens: 2,
            eos_token_ids: vec![2],
            stop_token_ids: vec![7],
            ignore_eos: false,
        };
        let mut r = request(&[5, 5], stop);
        r.tokens.push(2); // EOS before min_tokens: keep going
        assert_eq!(r.check_stop(100), None);
        r.tokens.push(7); // stop token at min_tokens
        assert_eq!(r.check_stop(100), Some((FinishReason::Stop, Some(7))));
        r.tokens.pop();
        r.tokens.push(2);
        assert_eq!(r.check_stop(100), Some((FinishReason::Stop, None)));
        r.tokens.pop();
        r.tokens.push(3);
        assert_eq!(r.check_stop(100), None);
        assert_eq!(r.check_stop(4), Some((FinishReason::Length, None)));
        r.tokens.extend([3, 3]);
        assert_eq!(r.check_stop(100), Some((FinishReason::Length, None)));
        r.stop.ignore_eos = true;
        r.tokens.pop();
        r.tokens.pop();
        r.tokens.push(2);
        assert_eq!(r.check_stop(100), None);
    }

    #[test]
    fn validation_messages() {
        let mut new = NewRequest {
            request_id: "x".into(),
            max_tokens: 1,
            ..Default::default()
        };
        assert!(prompt_tokens(&new).is_err());
        new.prompt_token_ids = vec![1, -2];
        let err = prompt_tokens(&new).unwrap_err().to_string();
        assert!(err.contains("-2"), "{err}");
        new.prompt_token_ids = vec![1, 1 << 31];
        assert!(prompt_tokens(&new).is_err());
        new.max_tokens = 0;
        assert!(StopConditions::from_new(&new).is_err());
        new.max_tokens = 2;
        new.min_tokens = 3;
        assert!(StopConditions::from_new(&new).is_err());
        new.min_tokens = 1;
        new.stop_token_ids = vec![-1];
        assert!(StopConditions::from_new(&new).is_err());
    }

    #[test]
    fn wait_key_orders_priority_then_arrival_then_order() {
        let k = |priority, arrival_time, order| WaitKey {
            priority,
            arrival_time,
            order,
        };
        assert!(k(0, 5.0, 9) < k(1, 0.0, 0));
        assert!(k(0, 1.0, 9) < k(0, 2.0, 0));
        assert!(k(0, 1.0, -1) < k(0, 1.0, 0));
    }
}
