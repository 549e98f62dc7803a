//! Where the scheduler and the detokenizer meet: `update` appends, decodes and checks
//! stop strings in one pass, so a stop string frees the request in the same call.

use std::sync::Arc;

use super::*;
use crate::detokenizer::DetokenizeParams;
use crate::tokenizer::tests::byte_level_json;

const HELLO: i64 = 300; // "Hello"
const WORLD: i64 = 301; // " world"
const BANG: i64 = 303; // "!"
const EOS: i64 = 2; // "</s>", special

fn scheduler() -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 16,
        block_size: 4,
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        max_model_len: 64,
        ..Default::default()
    })
    .unwrap();
    s.set_tokenizer(Arc::new(Tokenizer::from_json(&byte_level_json()).unwrap()));
    s
}

fn add(s: &mut Scheduler, id: &str, max_tokens: i64, stop: &[&str]) {
    s.add_request(NewRequest {
        request_id: id.into(),
        prompt_token_ids: vec![HELLO, BANG],
        max_tokens,
        eos_token_ids: vec![EOS],
        detokenize: Some(DetokenizeParams {
            stop: stop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
}

/// One step in which the only request samples `token`.
fn step(s: &mut Scheduler, token: i64) -> StepOutput {
    s.schedule().unwrap();
    let out = s.update(&[token]).unwrap();
    assert_eq!(out.len(), 1);
    out[0].clone()
}

#[test]
fn stop_string_across_tokens_finishes_and_frees_in_the_same_update() {
    let mut s = scheduler();
    add(&mut s, "a", 10, &["lo w"]);
    let first = step(&mut s, HELLO);
    // "lo" could still become "lo w": it is held back.
    assert_eq!(first.text, "Hel");
    assert_eq!(first.finish_reason, None);
    let second = step(&mut s, WORLD);
    assert_eq!(second.text, "");
    assert_eq!(second.finish_reason, Some(FinishReason::Stop));
    assert_eq!(second.stop_str.as_deref(), Some("lo w"));
    assert!(!s.has_unfinished_requests());
    assert_eq!(s.stats().blocks_in_use, 0);
}

#[test]
fn length_finish_flushes_held_back_text() {
    let mut s = scheduler();
    add(&mut s, "a", 2, &["!?"]);
    assert_eq!(step(&mut s, BANG).text, "");
    let last = step(&mut s, HELLO);
    assert_eq!(last.finish_reason, Some(FinishReason::Length));
    assert_eq!(last.text, "!Hello");
    assert_eq!(last.stop_str, None);
}

#[test]
fn eos_text_is_not_shown_and_ends_with_stop() {
    let mut s = scheduler();
    add(&mut s, "a", 10, &[]);
    assert_eq!(step(&mut s, WORLD).text, " world");
    let last = step(&mut s, EOS);
    assert_eq!(last.finish_reason, Some(FinishReason::Stop));
    assert_eq!((last.text.as_str(), last.stop_reason), ("", None));
}

#[test]
fn detokenizing_without_a_tokenizer_is_rejected() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 8,
        block_size: 4,
        ..Default::default()
    })
    .unwrap();
    let err = s
        .add_request(NewRequest {
            request_id: "a".into(),
            prompt_token_ids: vec![1],
            max_tokens: 1,
            detokenize: Some(DetokenizeParams::default()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, CoreError::InvalidRequest(_)), "{err:?}");
}
