//! Incremental detokenization with stop strings: one `IncrementalDetokenizer` per
//! request, and `DetokenizerBatch`, the per-step call over many requests.
//!
//! Exactness: for a request with prompt `p`, the concatenation of everything a
//! detokenizer returns (pushes, then `flush`) for output ids `o` equals the text that `o`
//! adds after `p` in `tokenizer.decode(p + o)`; with an empty prompt, `decode(o)`. After
//! each push, the text returned so far equals that decode except for a trailing incomplete
//! UTF-8 character (held until the next byte arrives) and text held back as a possible
//! stop string. Nothing returned is ever taken back.
//!
//! EOS and stop-token ids are not pushed: the caller (the scheduler's `update`) checks them
//! before pushing, so their text never appears.
//!
//! Two strategies, chosen by the tokenizer's decoder (see `tokenizer::DecodeKind`):
//! - byte-level and SentencePiece tokenizers append each token's bytes (a table lookup)
//!   and emit the complete UTF-8 characters: no decoder call per token;
//! - any other decoder decodes a small window of recent ids and emits the new suffix once
//!   it does not end in U+FFFD (the prefix/read offset technique of `DecodeStream`).
//!
//! Byte-fallback groups that are invalid UTF-8 are where a full `decode` itself is not
//! prefix-stable (one invalid byte turns the whole group into U+FFFD); there the stream
//! shows U+FFFD per invalid byte and keeps what it already showed.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{CoreError, CoreResult};
use crate::stop::StopChecker;
use crate::tokenizer::{DecodeKind, Tokenizer};

/// How many prompt ids the generic path decodes as context before the first output id.
const PROMPT_CONTEXT_IDS: usize = 5;

/// Per-request options (vLLM's `SamplingParams` names).
#[derive(Clone, Debug)]
pub struct DetokenizeParams {
    pub skip_special_tokens: bool,
    pub spaces_between_special_tokens: bool,
    pub stop: Vec<String>,
    pub include_stop_str_in_output: bool,
    /// Stop strings are not looked for until more than this many tokens were pushed.
    pub min_tokens: usize,
}

impl Default for DetokenizeParams {
    fn default() -> Self {
        Self {
            skip_special_tokens: true,
            spaces_between_special_tokens: true,
            stop: Vec::new(),
            include_stop_str_in_output: false,
            min_tokens: 0,
        }
    }
}

/// Bytes path state: bytes of an incomplete UTF-8 character, and whether the text
/// has not started yet (a SentencePiece `Strip` then drops the first space).
#[derive(Debug)]
struct ByteStream {
    pending: Vec<u8>,
    at_start: bool,
}

/// Generic path state: `ids[prefix..read]` decoded to `prefix_text` was already shown.
#[derive(Debug)]
struct WindowStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    prefix_text: String,
    last_was_added: bool,
}

#[derive(Debug)]
enum Stream {
    Bytes(ByteStream),
    Window(WindowStream),
}

/// The text of one request's output, token by token.
#[derive(Debug)]
pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    spaces_between_special_tokens: bool,
    min_tokens: usize,
    stream: Stream,
    stop: StopChecker,
    num_output_tokens: usize,
    stopped: bool,
    /// Reused buffer for the decoded text of one push, before stop strings.
    scratch: String,
}

impl IncrementalDetokenizer {
    /// A detokenizer seeded with the prompt (its last ids give the first output token
    /// the right leading space). Unknown prompt ids are an error.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        prompt_ids: &[u32],
        params: DetokenizeParams,
    ) -> CoreResult<Self> {
        for &id in prompt_ids {
            tokenizer.check_id(id)?;
        }
        let stream =
            match tokenizer.kind() {
                DecodeKind::ByteLevel | DecodeKind::SentencePiece { .. } => Stream::Bytes(
                    seed_bytes(&tokenizer, prompt_ids, params.skip_special_tokens),
                ),
                DecodeKind::Generic => Stream::Window(seed_window(
                    &tokenizer,
                    prompt_ids,
                    params.skip_special_tokens,
                )?),
            };
        Ok(Self {
            tokenizer,
            skip_special_tokens: params.skip_special_tokens,
            spaces_between_special_tokens: params.spaces_between_special_tokens,
            min_tokens: params.min_tokens,
            stream,
            stop: StopChecker::new(params.stop, params.include_stop_str_in_output),
            num_output_tokens: 0,
            stopped: false,
            scratch: String::new(),
        })
    }

    /// Push one output token id; append the text that can be shown now to `out`.
    /// Returns the index of the matched stop string (see `stop_string`); once stopped,
    /// later pushes add nothing.
    pub fn push(&mut self, id: u32, out: &mut String) -> CoreResult<Option<usize>> {
        if self.stopped {
            return Ok(None);
        }
        self.tokenizer.check_id(id)?;
        self.num_output_tokens += 1;
        let check = self.num_output_tokens > self.min_tokens;
        if self.stop.is_empty() {
            self.decode_into(id, out)?;
            return Ok(None);
        }
        let mut decoded = std::mem::take(&mut self.scratch);
        decoded.clear();
        let result = self.decode_into(id, &mut decoded);
        let stop = result.map(|()| self.stop.feed(&decoded, check, out));
        self.scratch = decoded;
        let stop = stop?;
        self.stopped = stop.is_some();
        Ok(stop)
    }

    /// The rest of the text when the request ends for another reason (EOS, length,
    /// abort): an incomplete character (as U+FFFD, like `decode`) and held-back text.
    pub fn flush(&mut self) -> CoreResult<String> {
        let mut out = String::new();
        if self.stopped {
            return Ok(out);
        }
        let mut decoded = String::new();
        match &mut self.stream {
            Stream::Bytes(stream) => {
                // `decode` shows a cut-off character as one U+FFFD (lossy UTF-8), or
                // one per byte (byte fallback).
                let per_byte = matches!(self.tokenizer.kind(), DecodeKind::SentencePiece { .. });
                let count = if per_byte {
                    stream.pending.len()
                } else {
                    stream.pending.len().min(1)
                };
                decoded.extend(std::iter::repeat_n(char::REPLACEMENT_CHARACTER, count));
                stream.pending.clear();
            }
            Stream::Window(stream) => {
                let text = self
                    .tokenizer
                    .decode_checked(&stream.ids[stream.prefix..], self.skip_special_tokens)?;
                push_new_suffix(&text, &stream.prefix_text, &mut decoded);
                stream.ids.clear();
                stream.prefix = 0;
                stream.read = 0;
                stream.prefix_text.clear();
            }
        }
        self.stop.feed(&decoded, false, &mut out);
        self.stop.flush(&mut out);
        Ok(out)
    }

    pub fn stop_string(&self, index: usize) -> &str {
        self.stop.stop_string(index)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn num_output_tokens(&self) -> usize {
        self.num_output_tokens
    }

    fn decode_into(&mut self, id: u32, out: &mut String) -> CoreResult<()> {
        let tokenizer = &*self.tokenizer;
        match &mut self.stream {
            Stream::Bytes(stream) => {
                if self.skip_special_tokens && tokenizer.is_special(id) {
                    return Ok(());
                }
                let mut piece = tokenizer.piece(id);
                if stream.at_start && !piece.is_empty() {
                    stream.at_start = false;
                    if piece[0] == b' ' && strips_leading_space(tokenizer) {
                        piece = &piece[1..];
                    }
                }
                let per_byte = matches!(tokenizer.kind(), DecodeKind::SentencePiece { .. });
                if stream.pending.is_empty() {
                    if let Ok(text) = std::str::from_utf8(piece) {
                        out.push_str(text);
                        return Ok(());
                    }
                }
                stream.pending.extend_from_slice(piece);
                drain_utf8(&mut stream.pending, out, per_byte);
                Ok(())
            }
            Stream::Window(stream) => {
                stream.ids.push(id);
                let is_added = tokenizer.is_added(id);
                let raw_added = !self.spaces_between_special_tokens
                    && !self.skip_special_tokens
                    && is_added
                    && stream.last_was_added;
                stream.last_was_added = is_added;
                let text = tokenizer
                    .decode_checked(&stream.ids[stream.prefix..], self.skip_special_tokens)?;
                if text.len() <= stream.prefix_text.len()
                    || text.ends_with(char::REPLACEMENT_CHARACTER)
                {
                    return Ok(());
                }
                if raw_added {
                    // vLLM's rule: no decoder separator between two added tokens.
                    out.push_str(&tokenizer.id_to_token(id).unwrap_or_default());
                } else {
                    push_new_suffix(&text, &stream.prefix_text, out);
                }
                // The shown window becomes the new context; drop what is before it.
                stream.ids.drain(..stream.read);
                stream.prefix = 0;
                stream.read = stream.ids.len();
                stream.prefix_text =
                    tokenizer.decode_checked(&stream.ids, self.skip_special_tokens)?;
                Ok(())
            }
        }
    }
}

fn strips_leading_space(tokenizer: &Tokenizer) -> bool {
    tokenizer.kind()
        == DecodeKind::SentencePiece {
            strip_leading_space: true,
        }
}

/// The bytes stream after the prompt: whether any text came before, and the prompt's
/// trailing incomplete character (whose next bytes the output completes).
fn seed_bytes(tokenizer: &Tokenizer, prompt_ids: &[u32], skip_special_tokens: bool) -> ByteStream {
    // Whether an id adds bytes to the text (skipped special tokens add none).
    let contributes = |id: u32| {
        let skipped = skip_special_tokens && tokenizer.is_special(id);
        !skipped && !tokenizer.piece(id).is_empty()
    };
    let Some(first) = prompt_ids.iter().position(|&id| contributes(id)) else {
        return ByteStream {
            pending: Vec::new(),
            at_start: true,
        };
    };
    // An incomplete character is at most 3 bytes: collect the last >= 4 bytes of the prompt.
    let mut tail_start = prompt_ids.len();
    let mut tail_len = 0;
    while tail_start > first && tail_len < 4 {
        tail_start -= 1;
        if contributes(prompt_ids[tail_start]) {
            tail_len += tokenizer.piece(prompt_ids[tail_start]).len();
        }
    }
    let mut tail = Vec::with_capacity(tail_len);
    for (i, &id) in prompt_ids.iter().enumerate().skip(tail_start) {
        if contributes(id) {
            let piece = tokenizer.piece(id);
            let strip = i == first && piece[0] == b' ' && strips_leading_space(tokenizer);
            tail.extend_from_slice(if strip { &piece[1..] } else { piece });
        }
    }
    let mut discard = String::new();
    drain_utf8(&mut tail, &mut discard, false);
    ByteStream {
        pending: tail,
        at_start: false,
    }
}

/// The generic stream after the prompt: its last few ids are the decoding context.
fn seed_window(
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    skip_special_tokens: bool,
) -> CoreResult<WindowStream> {
    let ids = prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT_IDS)..].to_vec();
    let mut read = ids.len();
    let mut prefix_text = tokenizer.decode_checked(&ids, skip_special_tokens)?;
    // A prompt that ends inside a character: let the output complete it.
    while read > 0 && prefix_text.ends_with(char::REPLACEMENT_CHARACTER) {
        read -= 1;
        prefix_text = tokenizer.decode_checked(&ids[..read], skip_special_tokens)?;
    }
    Ok(WindowStream {
        last_was_added: ids.last().is_some_and(|&id| tokenizer.is_added(id)),
        ids,
        prefix: 0,
        read,
        prefix_text,
    })
}

/// Append `text` minus the already shown `prefix`. A decoder that rewrote the shown
/// text (not prefix-stable) cannot be followed exactly; show what lies beyond the
/// length of the prefix rather than take anything back.
fn push_new_suffix(text: &str, prefix: &str, out: &mut String) {
    if let Some(rest) = text.strip_prefix(prefix) {
        out.push_str(rest);
        return;
    }
    let mut start = prefix.len().min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    out.push_str(&text[start..]);
}

/// Move the complete characters of `buf` to `out`, keeping an incomplete trailing
/// character in `buf`. Invalid bytes become U+FFFD: one per invalid sequence like
/// `String::from_utf8_lossy` (byte-level), or one per byte (`per_byte`, byte fallback).
fn drain_utf8(buf: &mut Vec<u8>, out: &mut String, per_byte: bool) {
    let mut pos = 0;
    while pos < buf.len() {
        match std::str::from_utf8(&buf[pos..]) {
            Ok(text) => {
                out.push_str(text);
                pos = buf.len();
            }
            Err(err) => {
                let valid = err.valid_up_to();
                // The bytes up to `valid` were just checked, so this cannot fail.
                out.push_str(std::str::from_utf8(&buf[pos..pos + valid]).unwrap_or_default());
                pos += valid;
                match err.error_len() {
                    Some(len) => {
                        let count = if per_byte { len } else { 1 };
                        out.extend(std::iter::repeat_n(char::REPLACEMENT_CHARACTER, count));
                        pos += len;
                    }
                    None => break,
                }
            }
        }
    }
    buf.drain(..pos);
}

/// What one request gets from one step.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepOutput {
    pub text: String,
    /// The stop string that ended the request (the request is then removed).
    pub stop: Option<String>,
}

/// Incremental detokenizers keyed by request id, advanced together once per step.
#[derive(Debug)]
pub struct DetokenizerBatch {
    tokenizer: Arc<Tokenizer>,
    /// Detokenizers in slots, so that one step can hold `&mut` to many at once.
    slots: Vec<Option<IncrementalDetokenizer>>,
    free_slots: Vec<usize>,
    index: HashMap<String, usize>,
    /// Scratch for `step`: each slot's position in the update list, plus one.
    positions: Vec<usize>,
    /// The last step's outputs (kept to reuse their strings).
    outputs: Vec<StepOutput>,
}

/// Below this many tokens a step runs on the calling thread (a thread costs ~10 µs).
const PARALLEL_MIN_TOKENS: usize = 4096;

impl DetokenizerBatch {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            tokenizer,
            slots: Vec::new(),
            free_slots: Vec::new(),
            index: HashMap::new(),
            positions: Vec::new(),
            outputs: Vec::new(),
        }
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.index.contains_key(request_id)
    }

    pub fn add_request(
        &mut self,
        request_id: &str,
        prompt_ids: &[u32],
        params: DetokenizeParams,
    ) -> CoreResult<()> {
        if self.index.contains_key(request_id) {
            return Err(CoreError::InvalidRequest(format!(
                "request id {request_id:?} is already added"
            )));
        }
        let detokenizer = IncrementalDetokenizer::new(self.tokenizer.clone(), prompt_ids, params)?;
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot] = Some(detokenizer);
                slot
            }
            None => {
                self.slots.push(Some(detokenizer));
                self.slots.len() - 1
            }
        };
        self.index.insert(request_id.to_string(), slot);
        Ok(())
    }

    fn take(&mut self, request_id: &str) -> CoreResult<IncrementalDetokenizer> {
        let slot = self
            .index
            .remove(request_id)
            .ok_or_else(|| CoreError::UnknownRequest(request_id.to_string()))?;
        self.free_slots.push(slot);
        self.slots[slot]
            .take()
            .ok_or_else(|| CoreError::Internal(format!("empty slot for request {request_id:?}")))
    }

    /// End a request for a reason other than a stop string; returns its held-back text.
    pub fn finish(&mut self, request_id: &str) -> CoreResult<String> {
        self.take(request_id)?.flush()
    }

    /// Drop a request without its remaining text.
    pub fn abort(&mut self, request_id: &str) -> CoreResult<()> {
        self.take(request_id).map(drop)
    }

    /// Push each request's new ids; returns one output per update, in order. A request
    /// whose stop string matched is removed. All ids are checked before any request
    /// advances, so an error leaves every request as it was.
    pub fn step<S: AsRef<str> + Sync>(
        &mut self,
        updates: &[(S, &[u32])],
    ) -> CoreResult<&[StepOutput]> {
        // Validate, and note each slot's position in the update list (1-based; 0 = none).
        self.positions.clear();
        self.positions.resize(self.slots.len(), 0);
        for (position, (request_id, ids)) in updates.iter().enumerate() {
            let request_id = request_id.as_ref();
            let slot = *self
                .index
                .get(request_id)
                .ok_or_else(|| CoreError::UnknownRequest(request_id.to_string()))?;
            for &id in ids.iter() {
                self.tokenizer.check_id(id)?;
            }
            if self.positions[slot] != 0 {
                return Err(CoreError::InvalidRequest(format!(
                    "request id {request_id:?} appears twice in one step"
                )));
            }
            self.positions[slot] = position + 1;
        }
        // Disjoint `&mut` to the detokenizers, in update order.
        let mut work: Vec<Option<&mut IncrementalDetokenizer>> =
            (0..updates.len()).map(|_| None).collect();
        for (detokenizer, &position) in self.slots.iter_mut().zip(&self.positions) {
            if position != 0 {
                work[position - 1] = detokenizer.as_mut();
            }
        }
        // Reuse last step's strings: no allocation per request once warm.
        let outputs = &mut self.outputs;
        outputs.resize_with(updates.len(), StepOutput::default);
        for output in outputs.iter_mut() {
            output.text.clear();
            output.stop = None;
        }
        let total_tokens: usize = updates.iter().map(|(_, ids)| ids.len()).sum();
        let threads = if total_tokens >= PARALLEL_MIN_TOKENS {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8)
        } else {
            1
        };
        let run = |work: &mut [Option<&mut IncrementalDetokenizer>],
                   updates: &[(S, &[u32])],
                   outputs: &mut [StepOutput]|
         -> CoreResult<()> {
            for ((detokenizer, (_, ids)), output) in
                work.iter_mut().zip(updates).zip(outputs.iter_mut())
            {
                let detokenizer = detokenizer.as_deref_mut().ok_or_else(|| {
                    CoreError::Internal("request slot vanished during a step".into())
                })?;
                for &id in ids.iter() {
                    if let Some(index) = detokenizer.push(id, &mut output.text)? {
                        output.stop = Some(detokenizer.stop_string(index).to_string());
                        break;
                    }
                }
            }
            Ok(())
        };
        if threads <= 1 {
            run(&mut work, updates, outputs)?;
        } else {
            let chunk = updates.len().div_ceil(threads);
            std::thread::scope(|scope| -> CoreResult<()> {
                let handles: Vec<_> = work
                    .chunks_mut(chunk)
                    .zip(updates.chunks(chunk))
                    .zip(outputs.chunks_mut(chunk))
                    .map(|((work, updates), outputs)| {
                        scope.spawn(move || run(work, updates, outputs))
                    })
                    .collect();
                for handle in handles {
                    handle.join().map_err(|_| {
                        CoreError::Internal("a detokenizer thread panicked".into())
                    })??;
                }
                Ok(())
            })?;
        }
        for (position, (request_id, _)) in updates.iter().enumerate() {
            if self.outputs[position].stop.is_some() {
                self.take(request_id.as_ref())?;
            }
        }
        Ok(&self.outputs[..updates.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tests::{byte_level_json, sentencepiece_json};

    fn tokenizers() -> Vec<Arc<Tokenizer>> {
        vec![
            Arc::new(Tokenizer::from_json(&byte_level_json()).unwrap()),
            Arc::new(Tokenizer::from_json(&sentencepiece_json()).unwrap()),
        ]
    }

    /// The same tokenizer with a decoder the fast path does not know.
    fn generic(json: &str) -> Arc<Tokenizer> {
        let mut inner: tokenizers::Tokenizer = json.parse().unwrap();
        let decoder = inner.get_decoder().cloned().unwrap();
        inner.with_decoder(Some(tokenizers::decoders::sequence::Sequence::new(vec![
            decoder,
        ])));
        Arc::new(Tokenizer::new(inner))
    }

    fn all_tokenizers() -> Vec<Arc<Tokenizer>> {
        let mut all = tokenizers();
        all.push(generic(&sentencepiece_json()));
        all
    }

    /// Text that `output` adds after `prompt` in a full decode.
    fn reference(tok: &Tokenizer, prompt: &[u32], output: &[u32], skip: bool) -> String {
        let all: Vec<u32> = prompt.iter().chain(output).copied().collect();
        let full = tok.decode(&all, skip).unwrap();
        let before = tok.decode(prompt, skip).unwrap();
        full[before.len()..].to_string()
    }

    fn stream(
        tok: &Arc<Tokenizer>,
        prompt: &[u32],
        output: &[u32],
        params: DetokenizeParams,
    ) -> (Vec<String>, String) {
        let mut detok = IncrementalDetokenizer::new(tok.clone(), prompt, params).unwrap();
        let pieces = output
            .iter()
            .map(|&id| {
                let mut out = String::new();
                detok.push(id, &mut out).unwrap();
                out
            })
            .collect();
        (pieces, detok.flush().unwrap())
    }

    #[test]
    fn matches_decode_for_every_prefix() {
        // "Hello world" + é as bytes + 中 as bytes + specials + "!"
        let output = [
            300,
            301,
            10 + 0xC3,
            10 + 0xA9,
            302,
            10 + 0xE4,
            10 + 0xB8,
            10 + 0xAD,
            1,
            3,
            2,
            303,
            302,
            301,
        ];
        for tok in all_tokenizers() {
            for skip in [true, false] {
                for prompt in [&[][..], &[1][..], &[1, 300][..], &[300, 301, 302][..]] {
                    for n in 0..=output.len() {
                        let params = DetokenizeParams {
                            skip_special_tokens: skip,
                            ..Default::default()
                        };
                        let (pieces, rest) = stream(&tok, prompt, &output[..n], params);
                        let expected = reference(&tok, prompt, &output[..n], skip);
                        assert_eq!(
                            pieces.concat() + &rest,
                            expected,
                            "{:?} prompt {prompt:?} n {n}",
                            tok.kind()
                        );
                        assert!(expected.starts_with(&pieces.concat()));
                    }
                }
            }
        }
    }

    #[test]
    fn leading_space_after_the_prompt() {
        let tok = Arc::new(Tokenizer::from_json(&sentencepiece_json()).unwrap());
        let (pieces, _) = stream(&tok, &[1, 300], &[301], DetokenizeParams::default());
        assert_eq!(pieces, [" world"]);
        let (pieces, _) = stream(&tok, &[1], &[301], DetokenizeParams::default());
        assert_eq!(pieces, ["world"]);
    }

    #[test]
    fn prompt_ending_inside_a_character() {
        for tok in tokenizers() {
            let (pieces, _) = stream(
                &tok,
                &[300, 10 + 0xE4],
                &[10 + 0xB8, 10 + 0xAD],
                DetokenizeParams::default(),
            );
            assert_eq!(pieces, ["", "中"]);
        }
    }

    #[test]
    fn stop_strings_across_tokens_and_min_tokens() {
        for tok in all_tokenizers() {
            let stop = |min_tokens, include| DetokenizeParams {
                stop: vec!["ld!".into()],
                include_stop_str_in_output: include,
                min_tokens,
                ..Default::default()
            };
            // "Hello world! world" : "ld!" spans the 2nd and 3rd tokens.
            let ids = [300, 301, 303, 301];
            let mut detok = IncrementalDetokenizer::new(tok.clone(), &[], stop(0, false)).unwrap();
            let mut out = String::new();
            assert_eq!(detok.push(300, &mut out).unwrap(), None);
            assert_eq!(detok.push(301, &mut out).unwrap(), None);
            assert_eq!(out, "Hello wor");
            assert_eq!(detok.push(303, &mut out).unwrap(), Some(0));
            assert_eq!(out, "Hello wor");
            assert_eq!(detok.push(301, &mut out).unwrap(), None);
            assert!(detok.is_stopped() && detok.flush().unwrap().is_empty());

            let mut detok = IncrementalDetokenizer::new(tok.clone(), &[], stop(0, true)).unwrap();
            let mut out = String::new();
            for id in ids {
                detok.push(id, &mut out).unwrap();
            }
            assert_eq!(out, "Hello world!");

            // Not checked during the first 3 tokens.
            let mut detok = IncrementalDetokenizer::new(tok.clone(), &[], stop(3, false)).unwrap();
            let mut out = String::new();
            for id in ids {
                assert_eq!(detok.push(id, &mut out).unwrap(), None);
            }
            assert_eq!(out + &detok.flush().unwrap(), "Hello world! world");
        }
    }

    #[test]
    fn batch_step_errors_leave_requests_untouched() {
        let tok = tokenizers().remove(0);
        let mut batch = DetokenizerBatch::new(tok);
        batch
            .add_request("a", &[], DetokenizeParams::default())
            .unwrap();
        assert!(matches!(
            batch.add_request("a", &[], DetokenizeParams::default()),
            Err(CoreError::InvalidRequest(_))
        ));
        assert!(matches!(
            batch.add_request("b", &[77_777], DetokenizeParams::default()),
            Err(CoreError::Tokenizer(_))
        ));
        let bad: [(&str, &[u32]); 2] = [("a", &[300]), ("zzz", &[301])];
        assert!(matches!(
            batch.step(&bad),
            Err(CoreError::UnknownRequest(_))
        ));
        let bad: [(&str, &[u32]); 1] = [("a", &[300, 99_999])];
        assert!(matches!(batch.step(&bad), Err(CoreError::Tokenizer(_))));
        let twice: [(&str, &[u32]); 2] = [("a", &[300]), ("a", &[301])];
        assert!(matches!(
            batch.step(&twice),
            Err(CoreError::InvalidRequest(_))
        ));
        let good: [(&str, &[u32]); 1] = [("a", &[300])];
        assert_eq!(batch.step(&good).unwrap()[0].text, "Hello");
        assert!(matches!(
            batch.finish("zzz"),
            Err(CoreError::UnknownRequest(_))
        ));
        assert_eq!(batch.finish("a").unwrap(), "");
        assert!(batch.is_empty());
    }

    #[test]
    fn batch_step_threads_and_stops() {
        let tok = tokenizers().remove(1);
        let mut batch = DetokenizerBatch::new(tok);
        let n = 600;
        let names: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let stop = if i % 2 == 0 {
                vec!["world".to_string()]
            } else {
                vec![]
            };
            batch
                .add_request(
                    name,
                    &[1],
                    DetokenizeParams {
                        stop,
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        let ids = [300u32, 302, 303, 301, 300, 303, 302];
        let updates: Vec<(&str, &[u32])> = names.iter().map(|n| (n.as_str(), &ids[..])).collect();
        let outputs = batch.step(&updates).unwrap();
        for (i, output) in outputs.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(output.text, "Hello ! ");
                assert_eq!(output.stop.as_deref(), Some("world"));
            } else {
                assert_eq!(output.text, "Hello ! world Hello! ");
                assert_eq!(output.stop, None);
            }
        }
        assert_eq!(batch.len(), n / 2);
    }
}
