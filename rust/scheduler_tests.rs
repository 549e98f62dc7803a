//! Unit and property tests of the scheduler (kept apart from the logic for length).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

pub(super) const EOS: i64 = 0;

pub(super) fn config(num_blocks: usize, block_size: usize) -> SchedulerConfig {
    SchedulerConfig {
        num_blocks,
        block_size,
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        max_model_len: 256,
        ..Default::default()
    }
}

pub(super) fn new_req(id: &str, prompt: &[i64], max_tokens: i64) -> NewRequest {
    NewRequest {
        request_id: id.into(),
        prompt_token_ids: prompt.to_vec(),
        max_tokens,
        eos_token_ids: vec![EOS],
        ..Default::default()
    }
}

pub(super) fn prompt(n: usize, seed: i64) -> Vec<i64> {
    (0..n as i64)
        .map(|i| 1 + (i * 31 + seed * 7) % 1000)
        .collect()
}

/// One step's batch, copied with the request ids, and the update's outputs.
#[derive(Debug)]
struct Step {
    ids: Vec<String>,
    num_new: Vec<i32>,
    num_computed: Vec<i32>,
    sampling: Vec<bool>,
    block_tables: Vec<Vec<i32>>,
    preempted: Vec<String>,
    outputs: Vec<(String, u32, Option<FinishReason>)>,
    num_tokens: usize,
}

/// Schedule, check the batch's invariants, and sample `token(id, output index)`.
fn step(s: &mut Scheduler, token: impl Fn(&str, usize) -> i64) -> Step {
    s.schedule().unwrap();
    let b = s.batch();
    let ids: Vec<String> = b
        .req_slots
        .iter()
        .map(|&slot| s.request_id(slot).unwrap().to_string())
        .collect();
    let mut tables = vec![-1; b.num_reqs() * b.max_num_blocks];
    s.write_block_tables(&mut tables);
    assert!(tables.iter().all(|&t| t >= 0));
    check_batch(s, b, &tables);
    let bcols = b.max_num_blocks.max(1);
    let mut st = Step {
        num_new: b.num_scheduled_tokens.clone(),
        num_computed: b.num_computed_tokens.clone(),
        sampling: b.sampling_mask.clone(),
        block_tables: tables
            .chunks(bcols)
            .map(|c| c.to_vec())
            .take(b.num_reqs())
            .collect(),
        preempted: b.preempted_req_ids.clone(),
        outputs: Vec::new(),
        num_tokens: b.num_tokens(),
        ids,
    };
    let sampled: Vec<i64> = st
        .ids
        .iter()
        .zip(&st.sampling)
        .filter(|(_, &smp)| smp)
        .map(|(id, _)| token(id, s.request(id).unwrap().num_output_tokens()))
        .collect();
    let sampling_ids: Vec<String> = st
        .ids
        .iter()
        .zip(&st.sampling)
        .filter(|(_, &smp)| smp)
        .map(|(id, _)| id.clone())
        .collect();
    let out = s.update(&sampled).unwrap().to_vec();
    assert_eq!(out.len(), sampling_ids.len());
    for (o, id) in out.iter().zip(&sampling_ids) {
        st.outputs.push((id.clone(), o.token, o.finish_reason));
    }
    s.check_invariants().unwrap();
    st
}

/// The batch-level invariants: budget, max_num_seqs, unique slots, slots inside each
/// request's own blocks, tokens and positions consistent with the requests.
fn check_batch(s: &Scheduler, b: &Batch, block_tables: &[i32]) {
    let cfg = s.config();
    let bs = cfg.block_size as i64;
    assert!(b.num_tokens() <= cfg.max_num_batched_tokens);
    assert!(b.num_reqs() <= cfg.max_num_seqs);
    let unique: HashSet<i64> = b.slot_mapping.iter().copied().collect();
    assert_eq!(
        unique.len(),
        b.slot_mapping.len(),
        "a KV slot is written twice"
    );
    assert_eq!(b.query_start_loc.len(), b.num_reqs() + 1);
    let cols = b.max_num_blocks;
    for r in 0..b.num_reqs() {
        let req = s.req(b.req_slots[r]);
        let (lo, hi) = (
            b.query_start_loc[r] as usize,
            b.query_start_loc[r + 1] as usize,
        );
        assert!(hi > lo);
        assert_eq!(b.seq_lens[r] as usize, req.num_computed_tokens);
        let table = &block_tables[r * cols..(r + 1) * cols];
        assert_eq!(
            table[..req.blocks.table.len()],
            *req.blocks
                .table
                .iter()
                .map(|&x| x as i32)
                .collect::<Vec<_>>()
        );
        assert!(table[req.blocks.table.len()..].iter().all(|&x| x == 0));
        for row in lo..hi {
            let pos = b.positions[row] as usize;
            assert_eq!(b.input_ids[row] as u32, req.tokens[pos]);
            let slot = b.slot_mapping[row];
            assert_eq!(i64::from(table[pos / cfg.block_size]), slot / bs);
            assert_ne!(slot / bs, 0, "the null block is written");
        }
        assert_eq!(b.positions[hi - 1] + 1, b.seq_lens[r]);
    }
    let expected: Vec<i32> = (0..b.num_reqs())
        .filter(|&r| b.sampling_mask[r])
        .map(|r| b.query_start_loc[r + 1] - 1)
        .collect();
    assert_eq!(b.logits_indices, expected);
}

fn run_to_end(s: &mut Scheduler, max_steps: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    while s.has_unfinished_requests() {
        assert!(steps.len() < max_steps, "requests never finish");
        steps.push(step(s, |_, _| 5));
    }
    steps
}

#[test]
fn prefill_then_decode_then_length() {
    let mut s = Scheduler::new(config(32, 4)).unwrap();
    s.add_request(new_req("a", &prompt(10, 1), 3)).unwrap();
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["a"]);
    assert_eq!(st.num_new, vec![10]);
    assert_eq!(st.outputs, vec![("a".into(), 5, None)]);
    let st = step(&mut s, |_, _| 6);
    assert_eq!((st.num_new[0], st.num_computed[0]), (1, 10));
    let st = step(&mut s, |_, _| 7);
    assert_eq!(
        st.outputs,
        vec![("a".into(), 7, Some(FinishReason::Length))]
    );
    assert!(!s.has_unfinished_requests());
    assert_eq!(s.stats().free_blocks, 31);
}

#[test]
fn chunked_prefill_samples_only_after_the_last_chunk() {
    let mut cfg = config(64, 4);
    cfg.max_num_batched_tokens = 16;
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(new_req("a", &prompt(40, 1), 2)).unwrap();
    let mut chunks = Vec::new();
    loop {
        let st = step(&mut s, |_, _| 5);
        chunks.push((st.num_new[0], st.sampling[0]));
        if st.sampling[0] {
            break;
        }
    }
    assert_eq!(chunks, vec![(16, false), (16, false), (8, true)]);
}

#[test]
fn decode_and_prefill_share_a_step_running_first() {
    let mut s = Scheduler::new(config(64, 4)).unwrap();
    s.add_request(new_req("a", &prompt(5, 1), 4)).unwrap();
    step(&mut s, |_, _| 5);
    s.add_request(new_req("b", &prompt(7, 2), 4)).unwrap();
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["a", "b"]);
    assert_eq!(st.num_new, vec![1, 7]);
}

#[test]
fn without_chunking_a_prompt_waits_for_a_step_with_room() {
    let mut cfg = config(128, 4);
    cfg.enable_chunked_prefill = false;
    cfg.max_num_batched_tokens = 256;
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(new_req("a", &prompt(200, 1), 4)).unwrap();
    s.add_request(new_req("b", &prompt(100, 2), 4)).unwrap();
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["a"]);
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["a", "b"]);
    assert_eq!(st.num_new, vec![1, 100]);
    // Without chunking the budget must hold max_model_len.
    let mut bad = config(64, 4);
    bad.enable_chunked_prefill = false;
    assert!(matches!(
        Scheduler::new(bad),
        Err(CoreError::InvalidRequest(_))
    ));
}

#[test]
fn max_num_seqs_caps_running_requests() {
    let mut cfg = config(64, 4);
    cfg.max_num_seqs = 2;
    let mut s = Scheduler::new(cfg).unwrap();
    for i in 0..3 {
        s.add_request(new_req(&format!("r{i}"), &prompt(3, i), 2))
            .unwrap();
    }
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["r0", "r1"]);
    assert_eq!(s.num_waiting(), 1);
    run_to_end(&mut s, 20);
}

#[test]
fn preemption_takes_the_last_admitted_and_recomputes_it_first() {
    // 6 usable blocks of 2 tokens; two requests of 4-token prompts growing to 8.
    let mut cfg = config(7, 2);
    cfg.enable_prefix_caching = false;
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(new_req("a", &prompt(4, 1), 4)).unwrap();
    s.add_request(new_req("b", &prompt(4, 2), 4)).unwrap();
    s.add_request(new_req("c", &prompt(2, 3), 1)).unwrap();
    let st = step(&mut s, |_, _| 5); // a, b: 2 blocks each; c: 1 block
    assert_eq!(st.ids, vec!["a", "b", "c"]);
    let st = step(&mut s, |_, _| 5); // a, b decode in their 3rd block
    assert_eq!(st.ids, vec!["a", "b"]);
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["a", "b"]);
    // Now a and b each need a 4th block: only 0 free -> b (admitted last) is preempted.
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.preempted, vec!["b"]);
    assert_eq!(st.ids, vec!["a"]);
    assert_eq!(s.request("b").unwrap().output_token_ids(), &[5, 5, 5]);
    let steps = run_to_end(&mut s, 20);
    // b comes back with its outputs recomputed: prompt 4 + 3 outputs in one go.
    let back = steps
        .iter()
        .find(|st| st.ids.contains(&"b".to_string()))
        .unwrap();
    let i = back.ids.iter().position(|id| id == "b").unwrap();
    assert_eq!((back.num_computed[i], back.num_new[i]), (0, 7));
    assert_eq!(s.stats().num_preemptions, 1);
    assert_eq!(s.stats().free_blocks, 6);
}

#[test]
fn no_admission_in_a_step_that_preempted() {
    let mut cfg = config(5, 2);
    cfg.enable_prefix_caching = false;
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(new_req("a", &prompt(4, 1), 4)).unwrap();
    s.add_request(new_req("b", &prompt(3, 2), 3)).unwrap();
    step(&mut s, |_, _| 5); // a: 2 blocks, b: 2 blocks; 0 free
    s.add_request(new_req("c", &prompt(1, 3), 1)).unwrap();
    let st = step(&mut s, |_, _| 5); // a needs a block: b preempted, c must wait
    assert_eq!(st.preempted, vec!["b"]);
    assert_eq!(st.ids, vec!["a"]);
    run_to_end(&mut s, 30);
}

#[test]
fn priority_policy_preempts_the_largest_priority_value() {
    let mut cfg = config(5, 2);
    cfg.enable_prefix_caching = false;
    cfg.policy = Policy::Priority;
    let mut s = Scheduler::new(cfg).unwrap();
    let mut low = new_req("low", &prompt(4, 1), 3);
    low.priority = 5;
    let mut high = new_req("high", &prompt(3, 2), 4);
    high.priority = -1;
    s.add_request(low).unwrap();
    s.add_request(high).unwrap();
    // Waiting order is by priority: high first.
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["high", "low"]);
    // high (3 tokens + 1) fits its 2 blocks; next step low needs a 3rd block.
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["high"]);
    assert_eq!(st.preempted, vec!["low"]);
    run_to_end(&mut s, 30);
}

#[test]
fn priority_victim_already_scheduled_gives_back_its_tokens_and_cache() {
    let mut cfg = config(6, 2);
    cfg.policy = Policy::Priority;
    let mut s = Scheduler::new(cfg).unwrap();
    let mut low = new_req("low", &prompt(3, 1), 4);
    low.priority = 9;
    low.arrival_time = Some(0.0);
    let mut high = new_req("high", &prompt(4, 2), 4);
    high.priority = 0;
    high.arrival_time = Some(1.0);
    s.add_request(low).unwrap();
    step(&mut s, |_, _| 5); // low alone: 2 blocks
    s.add_request(high).unwrap();
    step(&mut s, |_, _| 5); // low decodes (4 tokens, block 2 full), high prefills 2 blocks
                            // Running order is [low, high]. low takes its 3rd block (the last free one)
                            // first; high then finds none and low, already scheduled, is the victim.
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.ids, vec!["high"]);
    assert_eq!(st.preempted, vec!["low"]);
    run_to_end(&mut s, 40);
}

#[test]
fn parallel_siblings_share_the_prompt_blocks_in_one_step() {
    let mut s = Scheduler::new(config(64, 4)).unwrap();
    let p = prompt(18, 3); // 4 full blocks + 2 tokens
    for i in 0..3 {
        s.add_request(new_req(&format!("s{i}"), &p, 3)).unwrap();
    }
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.num_new, vec![18, 2, 2]);
    assert_eq!(st.num_computed, vec![0, 16, 16]);
    for t in &st.block_tables[1..] {
        assert_eq!(t[..4], st.block_tables[0][..4]);
        assert_ne!(t[4], st.block_tables[0][4]);
    }
    let stats = s.stats();
    assert_eq!(stats.prefix_cache_queries, 54);
    assert_eq!(stats.prefix_cache_hits, 32);
    assert_eq!(stats.blocks_in_use, 4 + 3);
    run_to_end(&mut s, 10);
    assert_eq!(s.stats().free_blocks, 63);
}

#[test]
fn later_request_reuses_freed_prefix_blocks() {
    let mut s = Scheduler::new(config(64, 4)).unwrap();
    let mut p = prompt(12, 3);
    s.add_request(new_req("a", &p, 1)).unwrap();
    let first = step(&mut s, |_, _| 5).block_tables[0].clone();
    assert!(!s.has_unfinished_requests());
    p.extend([900, 901]);
    s.add_request(new_req("b", &p, 1)).unwrap();
    let st = step(&mut s, |_, _| 5);
    assert_eq!(st.num_computed, vec![12]);
    assert_eq!(st.block_tables[0][..3], first[..3]);
    // A different salt does not see them.
    let mut salted = new_req("c", &p, 1);
    salted.cache_salt = Some("tenant".into());
    s.add_request(salted).unwrap();
    assert_eq!(step(&mut s, |_, _| 5).num_computed, vec![0]);
}

#[test]
fn stop_tokens_eos_and_max_model_len() {
    let mut cfg = config(64, 4);
    cfg.max_model_len = 12;
    let mut s = Scheduler::new(cfg).unwrap();
    let mut a = new_req("a", &prompt(4, 1), 100);
    a.stop_token_ids = vec![42];
    a.min_tokens = 2;
    s.add_request(a).unwrap();
    s.add_request(new_req("b", &prompt(4, 2), 100)).unwrap();
    let mut ign = new_req("c", &prompt(8, 3), 100);
    ign.ignore_eos = true;
    s.add_request(ign).unwrap();
    // Outputs: a samples 42 always (stops at its 2nd token); b samples EOS; c EOS.
    let tok = |id: &str, _: usize| if id == "a" { 42 } else { EOS };
    let st = step(&mut s, tok);
    assert_eq!(
        st.outputs,
        vec![
            ("a".into(), 42, None),
            ("b".into(), 0, Some(FinishReason::Stop)),
            ("c".into(), 0, None)
        ]
    );
    let st = step(&mut s, tok);
    assert_eq!(st.outputs[0], ("a".into(), 42, Some(FinishReason::Stop)));
    assert_eq!(s.update(&[]).unwrap().len(), 0);
    let mut last = None;
    while s.has_unfinished_requests() {
        last = step(&mut s, tok).outputs.pop();
    }
    // c: 8 prompt tokens, max_model_len 12 -> 4 outputs, finished by length.
    assert_eq!(last, Some(("c".into(), 0, Some(FinishReason::Length))));
}

#[test]
fn abort_in_every_state() {
    let mut cfg = config(64, 4);
    cfg.max_num_batched_tokens = 8;
    let mut s = Scheduler::new(cfg).unwrap();
    s.add_request(new_req("run", &prompt(3, 1), 9)).unwrap();
    s.add_request(new_req("chunk", &prompt(20, 2), 9)).unwrap();
    s.add_request(new_req("wait", &prompt(5, 3), 9)).unwrap();
    step(&mut s, |_, _| 5);
    assert_eq!(s.num_running(), 2);
    assert!(matches!(
        s.abort_request("nope"),
        Err(CoreError::UnknownRequest(_))
    ));
    s.abort_request("wait").unwrap();
    s.abort_request("chunk").unwrap();
    // Abort between schedule and update: the sampled token is dropped.
    assert_eq!(
        s.schedule().unwrap().finished_req_ids,
        vec!["wait", "chunk"]
    );
    s.abort_request("run").unwrap();
    assert_eq!(s.update(&[5]).unwrap().len(), 0);
    s.check_invariants().unwrap();
    let b = s.schedule().unwrap();
    assert_eq!(b.num_reqs(), 0);
    assert_eq!(b.finished_req_ids, vec!["run"]);
    assert_eq!(s.stats().free_blocks, 63);
    assert!(s.schedule().unwrap().finished_req_ids.is_empty());
    // The id is free again.
    s.add_request(new_req("run", &prompt(3, 1), 1)).unwrap();
}

#[test]
fn invalid_requests_are_rejected_with_reasons() {
    let mut s = Scheduler::new(config(9, 4)).unwrap(); // 8 usable blocks = 32 tokens
    s.add_request(new_req("a", &prompt(3, 1), 2)).unwrap();
    let err = |s: &mut Scheduler, r: NewRequest| match s.add_request(r) {
        Err(CoreError::InvalidRequest(m)) => m,
        other => panic!("expected InvalidRequest, got {other:?}"),
    };
    assert!(err(&mut s, new_req("a", &prompt(3, 1), 2)).contains("already in use"));
    assert!(err(&mut s, new_req("b", &[], 2)).contains("empty prompt"));
    assert!(err(&mut s, new_req("b", &[1, -1], 2)).contains("-1"));
    assert!(err(&mut s, new_req("b", &prompt(30, 1), 8)).contains("KV blocks"));
    let mut cfg = config(64, 4);
    cfg.max_model_len = 16;
    let mut s2 = Scheduler::new(cfg).unwrap();
    assert!(err(&mut s2, new_req("b", &prompt(16, 1), 1)).contains("max_model_len"));
    // Wrong number of sampled tokens.
    s.schedule().unwrap();
    assert!(matches!(
        s.update(&[1, 2]),
        Err(CoreError::InvalidRequest(_))
    ));
    assert!(matches!(s.update(&[-3]), Err(CoreError::InvalidRequest(_))));
    assert!(matches!(s.schedule(), Err(CoreError::InvalidRequest(_))));
    s.update(&[1]).unwrap();
    assert!(matches!(
        Policy::parse("lifo"),
        Err(CoreError::InvalidRequest(_))
    ));
    assert!(Scheduler::new(config(1, 4)).is_err());
}

// ---------------------------------------------------------------- property tests

#[derive(Debug, Clone)]
pub(super) enum Op {
    Add {
        len: usize,
        shared: bool,
        n: usize,
        max_tokens: i64,
        priority: i64,
    },
    Abort(usize),
    Step,
}

pub(super) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..40, any::<bool>(), 1usize..3, 1i64..24, 0i64..3).prop_map(
            |(len, shared, n, max_tokens, priority)| Op::Add { len, shared, n, max_tokens, priority }
        ),
        1 => (0usize..64).prop_map(Op::Abort),
        6 => Just(Op::Step),
    ]
}

pub(super) fn cfg_strategy() -> impl Strategy<Value = SchedulerConfig> {
    (
        4usize..40,
        1usize..6,
        1usize..6,
        4usize..48,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(num_blocks, block_size, max_num_seqs, budget, cache, chunk, prio)| {
                let max_model_len = if chunk { 64 } else { budget.max(2) };
                SchedulerConfig {
                    num_blocks,
                    block_size,
                    max_num_seqs,
                    max_num_batched_tokens: if chunk { budget } else { max_model_len },
                    max_model_len,
                    enable_prefix_caching: cache,
                    enable_chunked_prefill: chunk,
                    policy: if prio { Policy::Priority } else { Policy::Fcfs },
                    async_scheduling: false,
                }
            },
        )
}

/// A deterministic "model": the sampled token depends on the request and position,
/// and is EOS now and then.
pub(super) fn sample(id: &str, i: usize) -> i64 {
    let h = id
        .bytes()
        .fold(i as u64 * 0x9E37, |h, b| h.wrapping_mul(31) + u64::from(b));
    if h % 11 == 0 {
        EOS
    } else {
        1 + (h % 50) as i64
    }
}

/// Live requests' expected tokens, prompt length and max_tokens.
type Model = HashMap<String, (Vec<i64>, usize, i64)>;

/// Check a step's outputs against the model of every request's tokens.
fn apply(s: &Scheduler, st: &Step, model: &mut Model) -> Result<(), TestCaseError> {
    for (id, token, reason) in &st.outputs {
        let entry = model
            .get_mut(id)
            .ok_or_else(|| TestCaseError::fail("unknown output"))?;
        entry.0.push(i64::from(*token));
        let (toks, n_prompt, max_tokens) = entry.clone();
        let n_out = (toks.len() - n_prompt) as i64;
        prop_assert!(n_out <= max_tokens && toks.len() <= s.config().max_model_len);
        match reason {
            Some(reason) => {
                model.remove(id);
                prop_assert!(s.request(id).is_err());
                if *reason == FinishReason::Length {
                    prop_assert!(toks.len() == s.config().max_model_len || n_out == max_tokens);
                } else {
                    prop_assert_eq!(*token, EOS as u32);
                }
            }
            None => {
                let r = s.request(id).unwrap();
                let have: Vec<i64> = r.tokens.iter().map(|&t| i64::from(t)).collect();
                prop_assert_eq!(have, toks);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_every_invariant(
        cfg in cfg_strategy(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut s = Scheduler::new(cfg.clone()).unwrap();
        let shared: Vec<i64> = prompt(40, 99);
        let mut added: Vec<String> = Vec::new();
        // The expected tokens of every live request (prompt then sampled outputs).
        let mut model: Model = HashMap::new();
        let mut next = 0;
        for o in &ops {
            match *o {
                Op::Add { len, shared: use_shared, n, max_tokens, priority } => {
                    let p: Vec<i64> = if use_shared {
                        shared[..len].to_vec()
                    } else {
                        prompt(len, next as i64)
                    };
                    for _ in 0..n {
                        let id = format!("r{next}");
                        next += 1;
                        let mut r = new_req(&id, &p, max_tokens);
                        r.priority = priority;
                        let longest = (len + max_tokens as usize).min(cfg.max_model_len);
                        let fits = len < cfg.max_model_len
                            && longest.div_ceil(cfg.block_size) < cfg.num_blocks;
                        match s.add_request(r) {
                            Ok(_) => {
                                prop_assert!(fits);
                                model.insert(id.clone(), (p.clone(), p.len(), max_tokens));
                                added.push(id);
                            }
                            Err(CoreError::InvalidRequest(_)) => prop_assert!(!fits),
                            Err(e) => prop_assert!(false, "unexpected error {e}"),
                        }
                    }
                }
                Op::Abort(k) => {
                    if !added.is_empty() {
                        let id = added[k % added.len()].clone();
                        let live = model.remove(&id).is_some();
                        prop_assert_eq!(s.abort_request(&id).is_ok(), live);
                    }
                }
                Op::Step => {
                    let st = step(&mut s, sample);
                    apply(&s, &st, &mut model)?;
                }
            }
            s.check_invariants().map_err(TestCaseError::fail)?;
        }
        // Drain: every request finishes (no starvation) and every block is free again.
        let mut steps = 0;
        while s.has_unfinished_requests() {
            steps += 1;
            prop_assert!(steps < 5000, "requests never finish");
            let st = step(&mut s, sample);
            prop_assert!(st.num_tokens > 0 || !st.preempted.is_empty(), "an idle step");
            apply(&s, &st, &mut model)?;
        }
        prop_assert!(model.is_empty());
        let stats = s.stats();
        prop_assert_eq!(stats.free_blocks, cfg.num_blocks - 1);
        prop_assert_eq!(stats.blocks_in_use, 0);
        s.check_invariants().map_err(TestCaseError::fail)?;
    }
}
