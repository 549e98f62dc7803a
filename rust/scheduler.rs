//! Continuous batching with vLLM V1's semantics.
//!
//! Each step moves every scheduled request's `num_computed_tokens` towards its number of
//! tokens, under one token budget and `max_num_seqs`: running requests first (decode,
//! or the next chunk of a long prompt), then waiting ones (prefill, after a
//! prefix-cache lookup). When blocks run out the most recently admitted request (the
//! lowest priority under "priority") is preempted: its blocks are freed, it goes to the
//! head of the waiting queue and is recomputed later; no request is admitted in a
//! step that preempted. `update` appends the sampled tokens and finishes what stopped.
//!
//! With `async_scheduling` one step may be scheduled before the previous one is
//! updated: a request whose last step samples holds a placeholder for that token, and
//! its next decode row is scheduled with input id -1 (the runner fills it from its
//! samples). A placeholder is never scheduled past the length limits, never preempted,
//! and the blocks holding it are cached only once it is known.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::batch::{Batch, BatchRow, ScheduledRequest};
use crate::block_pool::{root_key, BlockId, BlockPool};
use crate::detokenizer::IncrementalDetokenizer;
use crate::error::{CoreError, CoreResult};
use crate::request::{
    prompt_tokens, FinishReason, NewRequest, Request, RequestStatus, StopConditions, WaitKey,
};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Fcfs,
    Priority,
}

impl Policy {
    pub fn parse(name: &str) -> CoreResult<Self> {
        match name {
            "fcfs" => Ok(Policy::Fcfs),
            "priority" => Ok(Policy::Priority),
            other => Err(CoreError::InvalidRequest(format!(
                "unknown scheduling policy {other:?} (expected \"fcfs\" or \"priority\")"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Blocks in the KV cache, the null block included.
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub max_model_len: usize,
    pub enable_prefix_caching: bool,
    pub enable_chunked_prefill: bool,
    pub policy: Policy,
    /// Schedule step N+1 before step N is updated (placeholders for N's samples).
    pub async_scheduling: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_blocks: 1024,
            block_size: 16,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            max_model_len: 8192,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            policy: Policy::Fcfs,
            async_scheduling: false,
        }
    }
}

impl SchedulerConfig {
    pub fn validate(&self) -> CoreResult<()> {
        let invalid = |m: String| Err(CoreError::InvalidRequest(m));
        if self.num_blocks < 2 || self.num_blocks >= u32::MAX as usize {
            return invalid(format!(
                "num_blocks must be in [2, 2**32 - 1) (block 0 is the null block), got {}",
                self.num_blocks
            ));
        }
        if self.block_size == 0 {
            return invalid("block_size must be at least 1".into());
        }
        if self.max_num_seqs == 0 || self.max_num_batched_tokens == 0 {
            return invalid("max_num_seqs and max_num_batched_tokens must be at least 1".into());
        }
        if self.max_model_len < 2 || self.max_model_len > i32::MAX as usize {
            return invalid(format!(
                "max_model_len must be in [2, 2**31), got {}",
                self.max_model_len
            ));
        }
        if !self.enable_chunked_prefill && self.max_num_batched_tokens < self.max_model_len {
            // Without chunking a request (prompt plus the outputs it recomputes after a
            // preemption) must fit one step, or it could wait forever.
            return invalid(format!(
                "without chunked prefill, max_num_batched_tokens ({}) must be at least \
                 max_model_len ({})",
                self.max_num_batched_tokens, self.max_model_len
            ));
        }
        Ok(())
    }
}

/// One request's result of `update`: the token it sampled, the text that became
/// visible, and whether it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    pub slot: u32,
    pub token: u32,
    /// New text that can be shown now (text that may still become a stop string is
    /// held back until it cannot).
    pub text: String,
    pub finish_reason: Option<FinishReason>,
    /// The stop token that finished the request (not set for EOS).
    pub stop_reason: Option<u32>,
    /// The stop string that finished the request.
    pub stop_str: Option<String>,
}

/// Counters for `stats()`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SchedulerStats {
    pub num_blocks: usize,
    pub blocks_in_use: usize,
    pub free_blocks: usize,
    pub cached_blocks: usize,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub num_preemptions: u64,
    pub kv_cache_usage: f64,
    pub num_running: usize,
    pub num_waiting: usize,
}

pub struct Scheduler {
    config: SchedulerConfig,
    /// Needed only by requests that detokenize.
    tokenizer: Option<Arc<Tokenizer>>,
    pool: BlockPool,
    /// Requests by slot; `index` maps ids to slots. Slots are reused.
    slots: Vec<Option<Request>>,
    free_slots: Vec<u32>,
    index: HashMap<String, u32>,
    /// Running requests in order of admission (the last is preempted first).
    running: Vec<u32>,
    waiting: BTreeMap<WaitKey, u32>,
    next_seq: u64,
    /// Decreasing insertion order for the head of the FCFS waiting queue.
    next_head: i64,
    /// Per scheduled step not yet updated (oldest first): the requests that sample, in
    /// the order of `logits_indices`. At most one step (two with async scheduling).
    pending: VecDeque<Vec<(u32, u64)>>,
    aborted: Vec<String>,
    scheduled: Vec<ScheduledRequest>,
    hits: Vec<BlockId>,
    batch: Batch,
    outputs: Vec<StepOutput>,
    prefix_cache_queries: u64,
    prefix_cache_hits: u64,
    num_preemptions: u64,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> CoreResult<Self> {
        config.validate()?;
        let pool = BlockPool::new(
            config.num_blocks,
            config.block_size,
            config.enable_prefix_caching,
        );
        Ok(Scheduler {
            config,
            tokenizer: None,
            pool,
            slots: Vec::new(),
            free_slots: Vec::new(),
            index: HashMap::new(),
            running: Vec::new(),
            waiting: BTreeMap::new(),
            next_seq: 0,
            next_head: -1,
            pending: VecDeque::new(),
            aborted: Vec::new(),
            scheduled: Vec::new(),
            hits: Vec::new(),
            batch: Batch::default(),
            outputs: Vec::new(),
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            num_preemptions: 0,
        })
    }

    /// The tokenizer that requests with `NewRequest::detokenize` decode with.
    pub fn set_tokenizer(&mut self, tokenizer: Arc<Tokenizer>) {
        self.tokenizer = Some(tokenizer);
    }

    pub fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_unfinished(&self) -> usize {
        self.index.len()
    }

    pub fn has_unfinished_requests(&self) -> bool {
        !self.index.is_empty()
    }

    pub fn request(&self, request_id: &str) -> CoreResult<&Request> {
        self.index
            .get(request_id)
            .and_then(|&slot| self.slots[slot as usize].as_ref())
            .ok_or_else(|| CoreError::UnknownRequest(request_id.to_string()))
    }

    pub fn slot_of(&self, request_id: &str) -> Option<u32> {
        self.index.get(request_id).copied()
    }

    /// The results of the last `update`.
    pub fn outputs(&self) -> &[StepOutput] {
        &self.outputs
    }

    /// The id of the request in `slot`, if the slot holds one.
    pub fn request_id(&self, slot: u32) -> Option<&str> {
        self.slots
            .get(slot as usize)?
            .as_ref()
            .map(|r| r.id.as_str())
    }

    fn req(&self, slot: u32) -> &Request {
        match &self.slots[slot as usize] {
            Some(r) => r,
            None => unreachable!("slot {slot} is queued but empty"),
        }
    }

    fn req_mut(&mut self, slot: u32) -> &mut Request {
        match &mut self.slots[slot as usize] {
            Some(r) => r,
            None => unreachable!("slot {slot} is queued but empty"),
        }
    }

    /// Validate and queue a request; returns its slot.
    pub fn add_request(&mut self, new: NewRequest) -> CoreResult<u32> {
        let invalid = |m: String| Err(CoreError::InvalidRequest(m));
        if self.index.contains_key(&new.request_id) {
            return invalid(format!("request id {:?} is already in use", new.request_id));
        }
        let tokens = prompt_tokens(&new)?;
        let stop = StopConditions::from_new(&new)?;
        let cfg = &self.config;
        let n = tokens.len();
        if n >= cfg.max_model_len {
            return invalid(format!(
                "prompt of {n} tokens does not fit max_model_len {} (it needs room for at \
                 least one output token)",
                cfg.max_model_len
            ));
        }
        if !cfg.enable_chunked_prefill && n > cfg.max_num_batched_tokens {
            return invalid(format!(
                "prompt of {n} tokens exceeds max_num_batched_tokens {} and chunked prefill \
                 is disabled",
                cfg.max_num_batched_tokens
            ));
        }
        // A request must fit the cache on its own at its longest, or it could never finish.
        let longest = (n + stop.max_tokens).min(cfg.max_model_len);
        let blocks = longest.div_ceil(cfg.block_size);
        if blocks > self.pool.num_usable() {
            return invalid(format!(
                "request needs up to {blocks} KV blocks ({longest} tokens of prompt and \
                 output) but the cache has only {}",
                self.pool.num_usable()
            ));
        }
        let detok = match new.detokenize {
            None => None,
            Some(params) => {
                let Some(tokenizer) = self.tokenizer.clone() else {
                    return invalid("detokenization needs a tokenizer; the core has none".into());
                };
                Some(IncrementalDetokenizer::new(tokenizer, &tokens, params)?)
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let arrival_time = new.arrival_time.unwrap_or_else(now);
        let request = Request {
            cache_root: root_key(new.cache_salt.as_deref()),
            id: new.request_id,
            seq,
            num_prompt_tokens: n,
            tokens,
            num_computed_tokens: 0,
            num_cached_tokens: None,
            stop,
            priority: new.priority,
            arrival_time,
            status: RequestStatus::Waiting,
            blocks: Default::default(),
            wait_key: None,
            num_preemptions: 0,
            num_output_placeholders: 0,
            detok,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(request.id.clone(), slot);
        self.slots[slot as usize] = Some(request);
        self.enqueue(slot, false);
        Ok(slot)
    }

    /// Put a request into the waiting queue: at its place, or first (preempted, FCFS).
    fn enqueue(&mut self, slot: u32, at_head: bool) {
        let policy = self.config.policy;
        let order = if at_head && policy == Policy::Fcfs {
            self.next_head -= 1;
            self.next_head
        } else {
            self.req(slot).seq as i64
        };
        let r = self.req_mut(slot);
        let key = match policy {
            Policy::Fcfs => WaitKey {
                priority: 0,
                arrival_time: 0.0,
                order,
            },
            Policy::Priority => WaitKey {
                priority: r.priority,
                arrival_time: r.arrival_time,
                order,
            },
        };
        r.wait_key = Some(key);
        self.waiting.insert(key, slot);
    }

    fn remove_slot(&mut self, slot: u32) -> Request {
        let Some(mut r) = self.slots[slot as usize].take() else {
            unreachable!("slot {slot} is already empty")
        };
        self.pool.free(&mut r.blocks);
        self.index.remove(&r.id);
        self.free_slots.push(slot);
        r
    }

    /// Abort a request in any state; its id is reported by the next `schedule`.
    pub fn abort_request(&mut self, request_id: &str) -> CoreResult<()> {
        let slot = *self
            .index
            .get(request_id)
            .ok_or_else(|| CoreError::UnknownRequest(request_id.to_string()))?;
        let r = self.req(slot);
        if let Some(key) = r.wait_key {
            self.waiting.remove(&key);
        } else if let Some(pos) = self.running.iter().position(|&s| s == slot) {
            self.running.remove(pos);
        }
        let r = self.remove_slot(slot);
        self.aborted.push(r.id);
        Ok(())
    }

    /// Free a running request's blocks and send it back to wait (at the head).
    fn preempt(&mut self, slot: u32) {
        let pool = &mut self.pool;
        let Some(r) = self.slots[slot as usize].as_mut() else {
            unreachable!("preempting an empty slot")
        };
        pool.free(&mut r.blocks);
        r.num_computed_tokens = 0;
        r.status = RequestStatus::Preempted;
        r.num_preemptions += 1;
        self.batch.preempted_req_ids.push(r.id.clone());
        self.num_preemptions += 1;
        self.enqueue(slot, true);
    }

    /// The running request to preempt: the last admitted, or under the priority policy
    /// the one with the largest (priority, arrival time). A request with a placeholder
    /// in flight cannot be recomputed (its token is unknown): None if only those remain.
    fn victim(&self) -> Option<usize> {
        let movable = |pos: &usize| self.req(self.running[*pos]).num_output_placeholders == 0;
        match self.config.policy {
            Policy::Fcfs => (0..self.running.len()).rev().find(movable),
            Policy::Priority => {
                // Largest (priority, arrival time, sequence) = least important.
                let order = |slot: u32| {
                    let r = self.req(slot);
                    (r.priority, r.arrival_time, r.seq)
                };
                let mut best: Option<usize> = None;
                for pos in (0..self.running.len()).filter(movable) {
                    let later = best.is_none()
                        || best.is_some_and(|b| {
                            let (a, b) = (order(self.running[pos]), order(self.running[b]));
                            a.0.cmp(&b.0)
                                .then(a.1.total_cmp(&b.1))
                                .then(a.2.cmp(&b.2))
                                .is_gt()
                        });
                    if later {
                        best = Some(pos);
                    }
                }
                best
            }
        }
    }

    /// The tokens of `r` to compute next: all known and placeholder tokens not yet
    /// computed, or none when its placeholder cannot be scheduled yet (the previous
    /// step is not updated, or the placeholder certainly ends the request by length).
    fn num_to_schedule(&self, r: &Request) -> usize {
        let ph = r.num_output_placeholders;
        if ph > 0
            && (ph > 1
                || r.num_output_tokens() + ph >= r.stop.max_tokens
                || r.num_tokens() + ph >= self.config.max_model_len)
        {
            return 0;
        }
        r.num_tokens() + ph - r.num_computed_tokens
    }

    /// Decide the next step and fill the batch (`batch()`).
    pub fn schedule(&mut self) -> CoreResult<&Batch> {
        let max_in_flight = if self.config.async_scheduling { 2 } else { 1 };
        if self.pending.len() >= max_in_flight {
            let live = self.pending[0].iter().any(|&(slot, seq)| {
                self.slots[slot as usize]
                    .as_ref()
                    .is_some_and(|r| r.seq == seq)
            });
            if live {
                return Err(CoreError::InvalidRequest(
                    "schedule() called again before update() of the previous step".into(),
                ));
            }
            // Nothing of that step is left to update.
            self.pending.pop_front();
        }
        self.scheduled.clear();
        self.batch.preempted_req_ids.clear();
        let mut budget = self.config.max_num_batched_tokens;
        let mut preempted = false;

        // Running requests: decode, or the next chunk of a prompt.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let num_new = self.num_to_schedule(self.req(slot)).min(budget);
            if num_new == 0 {
                i += 1;
                continue;
            }
            loop {
                let Some(r) = self.slots[slot as usize].as_mut() else {
                    unreachable!("running slot is empty")
                };
                let num_done_before = r.blocks.num_done;
                if self.pool.allocate_slots(
                    &mut r.blocks,
                    &r.tokens,
                    r.cache_root,
                    r.num_computed_tokens,
                    num_new,
                    &[],
                ) {
                    self.scheduled.push(ScheduledRequest {
                        slot,
                        num_new_tokens: num_new,
                        num_done_before,
                    });
                    budget -= num_new;
                    i += 1;
                    break;
                }
                let Some(pos) = self.victim() else {
                    // Every candidate has a placeholder in flight: skip this request.
                    i += 1;
                    break;
                };
                let victim = self.running.remove(pos);
                if pos < i {
                    // Already scheduled this step: give back its tokens, and forget
                    // the blocks it cached this step (they will not be written).
                    let k = self
                        .scheduled
                        .iter()
                        .position(|s| s.slot == victim)
                        .unwrap_or_else(|| unreachable!("scheduled victim not found"));
                    let s = self.scheduled.remove(k);
                    budget += s.num_new_tokens;
                    let Some(v) = self.slots[victim as usize].as_mut() else {
                        unreachable!("victim slot is empty")
                    };
                    self.pool.uncache_from(&mut v.blocks, s.num_done_before);
                    i -= 1;
                }
                self.preempt(victim);
                preempted = true;
                if victim == slot {
                    break;
                }
            }
        }

        // Waiting requests, in queue order, while nothing was preempted.
        while !preempted && budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some((&key, &slot)) = self.waiting.first_key_value() else {
                break;
            };
            let Some(r) = self.slots[slot as usize].as_mut() else {
                unreachable!("waiting slot is empty")
            };
            self.pool
                .find_cached_prefix(&mut r.blocks, &r.tokens, r.cache_root, &mut self.hits);
            let num_hit = self.hits.len() * self.config.block_size;
            let remaining = r.num_tokens() - num_hit;
            if !self.config.enable_chunked_prefill && remaining > budget {
                break;
            }
            let num_new = remaining.min(budget);
            let num_done_before = r.blocks.num_done;
            if !self.pool.allocate_slots(
                &mut r.blocks,
                &r.tokens,
                r.cache_root,
                num_hit,
                num_new,
                &self.hits,
            ) {
                break;
            }
            r.num_computed_tokens = num_hit;
            r.num_cached_tokens.get_or_insert(num_hit);
            r.status = RequestStatus::Running;
            r.wait_key = None;
            self.prefix_cache_queries += r.num_tokens() as u64;
            self.prefix_cache_hits += num_hit as u64;
            self.waiting.remove(&key);
            self.running.push(slot);
            self.scheduled.push(ScheduledRequest {
                slot,
                num_new_tokens: num_new,
                num_done_before,
            });
            budget -= num_new;
        }

        self.build_batch();
        Ok(&self.batch)
    }

    /// Fill the batch from `scheduled` and advance each request's computed tokens.
    fn build_batch(&mut self) {
        let max_blocks = self
            .scheduled
            .iter()
            .map(|s| self.req(s.slot).blocks.table.len())
            .max()
            .unwrap_or(0);
        let preempted = std::mem::take(&mut self.batch.preempted_req_ids);
        self.batch.start(max_blocks);
        self.batch.preempted_req_ids = preempted;
        self.batch.finished_req_ids.append(&mut self.aborted);
        let bs = self.config.block_size;
        let mut sampling = Vec::new();
        for s in &self.scheduled {
            let Some(r) = self.slots[s.slot as usize].as_mut() else {
                unreachable!("scheduled slot is empty")
            };
            self.batch.push(
                BatchRow {
                    slot: s.slot,
                    tokens: &r.tokens,
                    num_placeholders: r.num_output_placeholders,
                    block_table: &r.blocks.table,
                    num_computed: r.num_computed_tokens,
                    num_new: s.num_new_tokens,
                    num_cached: r.num_cached_tokens.unwrap_or(0),
                },
                bs,
            );
            r.num_computed_tokens += s.num_new_tokens;
            if r.num_computed_tokens == r.tokens.len() + r.num_output_placeholders {
                sampling.push((s.slot, r.seq));
                if self.config.async_scheduling {
                    r.num_output_placeholders += 1;
                }
            }
        }
        if !self.scheduled.is_empty() {
            self.pending.push_back(sampling);
        }
    }

    /// Write the last step's block tables into `dst`, row-major `[R, B]` (B =
    /// `batch().max_num_blocks`), padded with the null block. Call it before `update`,
    /// which frees the blocks of finished requests.
    pub fn write_block_tables(&self, dst: &mut [i32]) {
        let cols = self.batch.max_num_blocks;
        debug_assert_eq!(dst.len(), cols * self.batch.num_reqs());
        if cols == 0 {
            return;
        }
        for (row, &slot) in dst.chunks_exact_mut(cols).zip(&self.batch.req_slots) {
            let table = &self.req(slot).blocks.table;
            for (d, &b) in row.iter_mut().zip(table) {
                *d = b as i32;
            }
            row[table.len()..].fill(0);
        }
    }

    /// Append the sampled tokens (in the order of the last step's `logits_indices`),
    /// check every stop condition, and free what finished.
    pub fn update(&mut self, sampled: &[i64]) -> CoreResult<&[StepOutput]> {
        let expected = self.pending.front().map_or(0, Vec::len);
        if sampled.len() != expected {
            return Err(CoreError::InvalidRequest(format!(
                "update() got {} sampled tokens but the last step sampled {expected} requests",
                sampled.len(),
            )));
        }
        if let Some(&bad) = sampled
            .iter()
            .find(|&&t| !(0..=i64::from(i32::MAX)).contains(&t))
        {
            return Err(CoreError::InvalidRequest(format!(
                "sampled token ids must be in [0, 2**31), got {bad}"
            )));
        }
        self.outputs.clear();
        let max_model_len = self.config.max_model_len;
        let mut any_finished = false;
        let pending = self.pending.pop_front().unwrap_or_default();
        for (&(slot, seq), &token) in pending.iter().zip(sampled) {
            let Some(r) = self.slots[slot as usize].as_mut() else {
                continue; // aborted after the step was scheduled
            };
            if r.seq != seq {
                continue;
            }
            let token = token as u32;
            r.tokens.push(token);
            r.num_output_placeholders = r.num_output_placeholders.saturating_sub(1);
            let mut stop = r.check_stop(max_model_len);
            let mut text = String::new();
            let mut stop_str = None;
            if let Some(detok) = r.detok.as_mut() {
                // The text of EOS or a stop token that ends the request is not shown; an
                // id the tokenizer lacks (a padded vocabulary) shows no text either.
                let ends_on_token = matches!(stop, Some((FinishReason::Stop, _)));
                let known = self
                    .tokenizer
                    .as_ref()
                    .is_some_and(|t| t.check_id(token).is_ok());
                if !ends_on_token && known {
                    if let Some(i) = detok.push(token, &mut text)? {
                        stop_str = Some(detok.stop_string(i).to_string());
                        stop = Some((FinishReason::Stop, None));
                    }
                }
                if stop.is_some() && stop_str.is_none() {
                    text.push_str(&detok.flush()?);
                }
            }
            if stop.is_some() {
                any_finished = true;
                self.remove_slot(slot);
            }
            self.outputs.push(StepOutput {
                slot,
                token,
                text,
                finish_reason: stop.map(|s| s.0),
                stop_reason: stop.and_then(|s| s.1),
                stop_str,
            });
        }
        if any_finished {
            let slots = &self.slots;
            self.running.retain(|&s| slots[s as usize].is_some());
        }
        Ok(&self.outputs)
    }

    pub fn stats(&self) -> SchedulerStats {
        let usable = self.pool.num_usable();
        let free = self.pool.num_free();
        SchedulerStats {
            num_blocks: self.pool.num_blocks(),
            blocks_in_use: usable - free,
            free_blocks: free,
            cached_blocks: self.pool.num_cached(),
            prefix_cache_queries: self.prefix_cache_queries,
            prefix_cache_hits: self.prefix_cache_hits,
            num_preemptions: self.num_preemptions,
            kv_cache_usage: (usable - free) as f64 / usable as f64,
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
        }
    }

    /// Check every internal invariant (for tests): the pool against the block tables,
    /// the queues against the requests, the index against the slots.
    pub fn check_invariants(&self) -> Result<(), String> {
        let live: Vec<&Request> = self.slots.iter().flatten().collect();
        self.pool
            .check(live.iter().map(|r| r.blocks.table.as_slice()))?;
        if live.len() != self.index.len() || live.len() != self.running.len() + self.waiting.len() {
            return Err(format!(
                "{} requests but {} indexed, {} running and {} waiting",
                live.len(),
                self.index.len(),
                self.running.len(),
                self.waiting.len()
            ));
        }
        if self.running.len() > self.config.max_num_seqs {
            return Err("more running requests than max_num_seqs".into());
        }
        for &slot in &self.running {
            let r = self.slots[slot as usize]
                .as_ref()
                .ok_or("running slot is empty")?;
            if r.status != RequestStatus::Running || r.wait_key.is_some() {
                return Err(format!("running request {} has a waiting state", r.id));
            }
            let need = r.num_computed_tokens.div_ceil(self.config.block_size);
            if r.blocks.table.len() != need {
                return Err(format!(
                    "request {} has {} blocks for {} computed tokens",
                    r.id,
                    r.blocks.table.len(),
                    r.num_computed_tokens
                ));
            }
        }
        for (key, &slot) in &self.waiting {
            let r = self.slots[slot as usize]
                .as_ref()
                .ok_or("waiting slot is empty")?;
            if r.wait_key != Some(*key) || !r.blocks.table.is_empty() {
                return Err(format!("waiting request {} is inconsistent", r.id));
            }
        }
        for (id, &slot) in &self.index {
            if self.request_id(slot) != Some(id.as_str()) {
                return Err(format!("index entry {id} points to the wrong slot"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "scheduler_async_tests.rs"]
mod async_tests;

#[cfg(test)]
#[path = "scheduler_detok_tests.rs"]
mod detok_tests;
