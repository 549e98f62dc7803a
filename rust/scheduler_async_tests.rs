//! Tests of async scheduling: the placeholder rules, and the overlapped loop (schedule
//! N+1, then update N) ending every request exactly as the plain loop does.

use std::collections::HashMap;

use proptest::prelude::*;

use super::tests::{cfg_strategy, new_req, op, prompt, sample, Op, EOS};
use super::*;

fn async_config(num_blocks: usize, block_size: usize) -> SchedulerConfig {
    SchedulerConfig {
        num_blocks,
        block_size,
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        max_model_len: 256,
        async_scheduling: true,
        ..Default::default()
    }
}

/// Schedule and return (request id, input ids, positions, samples) per row.
fn schedule(s: &mut Scheduler) -> Vec<(String, Vec<i32>, Vec<i32>, bool)> {
    s.schedule().unwrap();
    let b = s.batch();
    (0..b.num_reqs())
        .map(|r| {
            let (lo, hi) = (
                b.query_start_loc[r] as usize,
                b.query_start_loc[r + 1] as usize,
            );
            (
                s.request_id(b.req_slots[r]).unwrap().to_string(),
                b.input_ids[lo..hi].to_vec(),
                b.positions[lo..hi].to_vec(),
                b.sampling_mask[r],
            )
        })
        .collect()
}

#[test]
fn placeholder_row_is_scheduled_before_the_token_is_known() {
    let mut s = Scheduler::new(async_config(16, 4)).unwrap();
    s.add_request(new_req("a", &[5, 6, 7], 3)).unwrap();
    let a = schedule(&mut s);
    assert_eq!(a, vec![("a".into(), vec![5, 6, 7], vec![0, 1, 2], true)]);
    // Step B decodes the token step A samples: input -1 at position 3.
    let b = schedule(&mut s);
    assert_eq!(b, vec![("a".into(), vec![-1], vec![3], true)]);
    // Block 0 holds the placeholder: not cached until the token is known.
    assert_eq!(s.stats().cached_blocks, 0);
    // A third step needs A's tokens first.
    assert!(s.schedule().is_err());
    assert_eq!(s.update(&[11]).unwrap()[0].token, 11);
    s.check_invariants().unwrap();
    // max_tokens 3: the placeholder of B is output 2, so C may decode it (output 3)...
    let c = schedule(&mut s);
    assert_eq!(c, vec![("a".into(), vec![-1], vec![4], true)]);
    assert_eq!(
        s.stats().cached_blocks,
        1,
        "block 0 is cached once it is known"
    );
    s.update(&[12]).unwrap();
    // ...but not past it: C's token is the last one.
    assert!(schedule(&mut s).is_empty());
    let out = s.update(&[13]).unwrap().to_vec();
    assert_eq!(out[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(s.request("a").map(|_| ()).ok(), None);
    assert_eq!(s.stats().blocks_in_use, 0);
}

#[test]
fn max_tokens_one_schedules_no_placeholder() {
    let mut s = Scheduler::new(async_config(16, 4)).unwrap();
    s.add_request(new_req("a", &[5, 6, 7], 1)).unwrap();
    schedule(&mut s);
    assert!(schedule(&mut s).is_empty());
    assert_eq!(
        s.update(&[9]).unwrap()[0].finish_reason,
        Some(FinishReason::Length)
    );
    assert!(!s.has_unfinished_requests());
}

#[test]
fn eos_drops_the_sample_in_flight_and_frees_the_blocks() {
    let mut s = Scheduler::new(async_config(16, 4)).unwrap();
    s.add_request(new_req("a", &[5, 6, 7], 10)).unwrap();
    s.add_request(new_req("b", &[8, 9], 10)).unwrap();
    schedule(&mut s);
    assert_eq!(schedule(&mut s).len(), 2);
    let out = s.update(&[EOS, 4]).unwrap().to_vec();
    assert_eq!(out[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(out[1].finish_reason, None);
    s.check_invariants().unwrap();
    // B's row of "a" is dropped; "b" gets its token.
    let out = s.update(&[21, 22]).unwrap().to_vec();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].token, s.request_id(out[0].slot)), (22, Some("b")));
    assert_eq!(s.request("b").unwrap().output_token_ids(), &[4, 22]);
    s.abort_request("b").unwrap();
    assert_eq!(s.stats().blocks_in_use, 0);
}

#[test]
fn a_request_with_a_placeholder_in_flight_is_not_preempted() {
    // Block size 2, three usable blocks: two 2-token prompts fill two.
    let mut s = Scheduler::new(async_config(4, 2)).unwrap();
    s.add_request(new_req("a", &[5, 6], 4)).unwrap();
    s.add_request(new_req("b", &[7, 8], 4)).unwrap();
    schedule(&mut s);
    // "a" takes the last block; "b" needs one, and both hold placeholders: no victim,
    // "b" waits a step instead of being preempted.
    let b = schedule(&mut s);
    assert_eq!(b.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["a"]);
    assert!(s.batch().preempted_req_ids.is_empty());
    s.update(&[1, 2]).unwrap();
    s.check_invariants().unwrap();
    // Now "b" has no placeholder and "a" has one: "b" is the only possible victim.
    let c = schedule(&mut s);
    assert_eq!(s.batch().preempted_req_ids, ["b"]);
    assert_eq!(c.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["a"]);
    s.check_invariants().unwrap();
}

type Finished = HashMap<String, (Vec<u32>, FinishReason)>;

/// One step of the plain loop (schedule, update) or of the overlapped loop (schedule
/// N+1, update N); records every request that finishes with its tokens.
fn drive(
    s: &mut Scheduler,
    overlapped: bool,
    in_flight: &mut Option<Vec<(u32, String)>>,
    finished: &mut Finished,
) -> Result<(), TestCaseError> {
    s.schedule().unwrap();
    let b = s.batch();
    let rows: Vec<(u32, String)> = b
        .req_slots
        .iter()
        .zip(&b.sampling_mask)
        .filter(|(_, &m)| m)
        .map(|(&slot, _)| (slot, s.request_id(slot).unwrap().to_string()))
        .collect();
    let scheduled = b.num_reqs() > 0;
    let to_update = if overlapped {
        std::mem::replace(in_flight, scheduled.then_some(rows))
    } else {
        scheduled.then_some(rows)
    };
    if let Some(rows) = to_update {
        // The "model" samples by request and output index, whenever it runs; a row of
        // a request that has finished meanwhile gets any token.
        let before: Vec<Option<Vec<u32>>> = rows
            .iter()
            .map(|(_, id)| s.request(id).ok().map(|r| r.tokens.clone()))
            .collect();
        let sampled: Vec<i64> = rows
            .iter()
            .map(|(_, id)| {
                s.request(id)
                    .map_or(1, |r| sample(id, r.num_output_tokens()))
            })
            .collect();
        for o in s.update(&sampled).unwrap().to_vec() {
            let Some(reason) = o.finish_reason else {
                continue;
            };
            let k = rows
                .iter()
                .position(|(slot, _)| *slot == o.slot)
                .ok_or_else(|| TestCaseError::fail("output of an unknown row"))?;
            let mut toks = before[k].clone().unwrap_or_default();
            toks.push(o.token);
            prop_assert!(finished.insert(rows[k].1.clone(), (toks, reason)).is_none());
        }
    }
    s.check_invariants().map_err(TestCaseError::fail)
}

/// Run `ops` (aborts skipped) plain or overlapped; every request's tokens and finish.
fn run(cfg: &SchedulerConfig, ops: &[Op], overlapped: bool) -> Result<Finished, TestCaseError> {
    let mut cfg = cfg.clone();
    cfg.async_scheduling = overlapped;
    let mut s = Scheduler::new(cfg).unwrap();
    let shared = prompt(40, 99);
    let mut finished = Finished::new();
    let mut in_flight = None;
    let mut next = 0;
    for o in ops {
        match *o {
            Op::Add {
                len,
                shared: use_shared,
                n,
                max_tokens,
                priority,
            } => {
                let p = if use_shared {
                    shared[..len].to_vec()
                } else {
                    prompt(len, next)
                };
                for _ in 0..n {
                    let mut r = new_req(&format!("r{next}"), &p, max_tokens);
                    next += 1;
                    r.priority = priority;
                    let _ = s.add_request(r); // too long for the cache: refused in both
                }
            }
            Op::Abort(_) => {}
            Op::Step => drive(&mut s, overlapped, &mut in_flight, &mut finished)?,
        }
    }
    let mut steps = 0;
    while s.has_unfinished_requests() || in_flight.is_some() {
        steps += 1;
        prop_assert!(steps < 5000, "requests never finish");
        drive(&mut s, overlapped, &mut in_flight, &mut finished)?;
    }
    prop_assert_eq!(s.stats().blocks_in_use, 0);
    Ok(finished)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn overlapped_loop_finishes_every_request_like_the_plain_loop(
        cfg in cfg_strategy(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let plain = run(&cfg, &ops, false)?;
        let overlapped = run(&cfg, &ops, true)?;
        prop_assert_eq!(overlapped, plain);
    }
}
