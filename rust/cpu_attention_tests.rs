use super::*;
use crate::kv_layout::Tiled;

/// A small deterministic generator (xorshift), so the tests need no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

struct Case {
    shape: DecodeShape,
    query: Vec<f32>,
    key_cache: Vec<f32>,
    value_cache: Vec<f32>,
    block_tables: Vec<i32>,
    seq_lens: Vec<i32>,
}

/// Sequences with the given lengths, each on a shuffled (scattered) set of blocks.
fn case(lens: &[i32], heads: usize, kv_heads: usize, head_dim: usize, seed: u64) -> Case {
    let block_size = 16;
    let max_blocks = lens
        .iter()
        .map(|&l| (l as usize).div_ceil(block_size))
        .max()
        .unwrap_or(1);
    let num_blocks = lens.len() * max_blocks + 3;
    let mut rng = Rng(seed);
    let mut ids: Vec<i32> = (0..num_blocks as i32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.next() as usize % (i + 1));
    }
    let shape = DecodeShape {
        num_seqs: lens.len(),
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        num_blocks,
        block_size,
        max_blocks,
    };
    let cache = num_blocks * block_size * kv_heads * head_dim;
    let mut fill = |n: usize, amp: f32| (0..n).map(|_| rng.uniform() * amp).collect::<Vec<_>>();
    Case {
        shape,
        query: fill(lens.len() * heads * head_dim, 2.0),
        key_cache: fill(cache, 2.0),
        value_cache: fill(cache, 1.0),
        block_tables: ids[..lens.len() * max_blocks].to_vec(),
        seq_lens: lens.to_vec(),
    }
}

/// Dense f64 attention over each sequence's positions, read through its block table.
fn reference(c: &Case, scale: f32) -> Vec<f32> {
    let s = c.shape;
    let group = s.num_heads / s.num_kv_heads;
    let d = s.head_dim;
    let mut out = vec![0f32; c.query.len()];
    for seq in 0..s.num_seqs {
        let len = c.seq_lens[seq] as usize;
        for h in 0..s.num_heads {
            let kvh = h / group;
            let q = &c.query[(seq * s.num_heads + h) * d..][..d];
            // The tiled layout, written out: the tile of (block, KV head), keys as
            // [D/2, BS, 2], values as [BS/2, D, 2].
            let bs = s.block_size;
            let tile = |t: usize| {
                let b = c.block_tables[seq * s.max_blocks + t / bs] as usize;
                (b * s.num_kv_heads + kvh) * d * bs
            };
            let key = |t: usize, i: usize| tile(t) + ((i / 2) * bs + t % bs) * 2 + i % 2;
            let value = |t: usize, i: usize| tile(t) + ((t % bs / 2) * d + i) * 2 + t % 2;
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    (0..d)
                        .map(|i| q[i] as f64 * c.key_cache[key(t, i)] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (i, o) in out[(seq * s.num_heads + h) * d..][..d]
                .iter_mut()
                .enumerate()
            {
                *o = (0..len)
                    .map(|t| e[t] / sum * c.value_cache[value(t, i)] as f64)
                    .sum::<f64>() as f32;
            }
        }
    }
    out
}

fn run_f32(c: &Case, scale: f32) -> Result<Vec<f32>, CoreError> {
    let mut out = vec![0f32; c.query.len()];
    paged_decode_attention(
        c.shape,
        &c.query,
        &c.key_cache,
        &c.value_cache,
        &c.block_tables,
        &c.seq_lens,
        scale,
        &mut out,
    )?;
    Ok(out)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn f32_equals_dense_reference_for_head_sizes_and_gqa_ratios() {
    // head_dim 64/128 take the AVX-512 path where the CPU has it, 32 the portable one;
    // lengths cover 1 token, block boundaries and the parallel split.
    for (heads, kv_heads, d) in [
        (9, 3, 64),
        (4, 4, 64),
        (8, 1, 64),
        (32, 8, 128),
        (6, 3, 128),
        (4, 2, 32),
    ] {
        let lens = [1, 15, 16, 17, 33, 200, 513, 64];
        let c = case(&lens, heads, kv_heads, d, 7 + d as u64);
        let scale = (d as f32).powf(-0.5);
        let got = run_f32(&c, scale).expect("valid call");
        let want = reference(&c, scale);
        assert!(
            max_abs_diff(&got, &want) < 2e-5,
            "heads {heads}/{kv_heads} d {d}"
        );
    }
}

/// Sequence 0 through a given kernel in element type E: as one item of all its KV
/// heads (`whole`), or as one item per KV head.
fn items_through<E: Elem + simd::Load16>(
    kernel: Kernel,
    c: &Case,
    len: usize,
    whole: bool,
) -> Vec<f32> {
    let s = c.shape;
    let d = s.head_dim;
    let layout = Tiled::new(s.block_size, s.num_kv_heads, d).expect("valid layout");
    let group = s.num_heads / s.num_kv_heads;
    let n_kv = if whole { s.num_kv_heads } else { 1 };
    let conv = |x: &[f32]| x.iter().map(|&v| E::from_f32(v)).collect::<Vec<E>>();
    let (k, v) = (conv(&c.key_cache), conv(&c.value_cache));
    let q = conv(&c.query[..s.num_heads * d]);
    let geo = Geom {
        layout,
        n_kv,
        group,
        len,
    };
    let item_len = n_kv * group * d;
    let mut out = vec![E::from_f32(0.0); s.num_heads * d];
    let mut scratch = Scratch::default();
    for (item, out_item) in out.chunks_mut(item_len).enumerate() {
        scratch.blocks = c.block_tables[..len.div_ceil(s.block_size)]
            .iter()
            .map(|&b| layout.tile(b as usize, item * n_kv))
            .collect();
        let q_item = &q[item * item_len..(item + 1) * item_len];
        attend_item(kernel, &geo, q_item, &k, &v, 0.125, &mut scratch, out_item);
    }
    out.iter().map(|x| x.to_f32()).collect()
}

#[test]
fn every_kernel_agrees_with_the_portable_one() {
    for d in [64, 128] {
        // Odd and even lengths, a partial last tile, GQA group 3 (and 5: two passes of
        // the score kernels), items of one KV head and of all of them.
        for (len, heads) in [(1, 12), (2, 12), (17, 12), (300, 12), (301, 20), (35, 20)] {
            let c = case(&[len as i32, 5], heads, 4, d, 3 + len as u64);
            for whole in [false, true] {
                let want = items_through::<f32>(Kernel::Portable, &c, len, whole);
                assert!(want.iter().any(|&x| x != 0.0));
                let want_bf = items_through::<Bf16>(Kernel::Portable, &c, len, whole);
                let mut kernels = vec![];
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx512f") {
                    kernels.push(Kernel::Avx512);
                }
                let what = format!("d {d} len {len} heads {heads} whole {whole}");
                for &kernel in &kernels {
                    let got = items_through::<f32>(kernel, &c, len, whole);
                    assert!(max_abs_diff(&got, &want) < 1e-5, "{kernel:?} f32 {what}");
                    let got = items_through::<Bf16>(kernel, &c, len, whole);
                    assert!(
                        max_abs_diff(&got, &want_bf) < 1e-2,
                        "{kernel:?} bf16 {what}"
                    );
                }
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx512bf16") {
                    let kernel = Kernel::Avx512Bf16;
                    assert_eq!(Kernel::select::<Bf16>(d, 16), kernel);
                    let got = items_through::<Bf16>(kernel, &c, len, whole);
                    // Probabilities in bf16 (2^-9 relative) on top of the output rounding.
                    assert!(max_abs_diff(&got, &want_bf) < 1.5e-2, "bf16 kernel {what}");
                }
            }
        }
    }
}

#[test]
fn unwritten_slots_do_not_leak_into_the_output() {
    // NaN in every slot past each sequence's length (a block's unwritten tail): an odd
    // last position pairs with one of them in the value tiles.
    for d in [64, 32] {
        for len in [1, 7, 16, 33] {
            let mut c = case(&[len], 6, 2, d, 9);
            let bs = c.shape.block_size;
            let b = c.block_tables[(len as usize - 1) / bs] as usize;
            let tile = d * bs;
            let unwritten = if (len as usize).is_multiple_of(bs) {
                bs..bs
            } else {
                len as usize % bs..bs
            };
            for kv in 0..2 {
                let at = (b * 2 + kv) * tile;
                for t in unwritten.clone() {
                    for i in 0..d {
                        c.key_cache[at + ((i / 2) * bs + t) * 2 + i % 2] = f32::NAN;
                        c.value_cache[at + ((t / 2) * d + i) * 2 + t % 2] = f32::NAN;
                    }
                }
            }
            let got = run_f32(&c, 0.125).expect("valid call");
            assert!(got.iter().all(|x| x.is_finite()), "d {d} len {len}");
            let bf = |x: &[f32]| x.iter().map(|&v| Bf16::from_f32(v)).collect::<Vec<_>>();
            let mut out = vec![Bf16::default(); c.query.len()];
            let (q, k, v) = (bf(&c.query), bf(&c.key_cache), bf(&c.value_cache));
            let s = c.shape;
            let (bt, sl) = (&c.block_tables, &c.seq_lens);
            paged_decode_attention(s, &q, &k, &v, bt, sl, 0.125, &mut out).expect("valid call");
            assert!(
                out.iter().all(|x| x.to_f32().is_finite()),
                "bf16 d {d} len {len}"
            );
        }
    }
}

#[test]
fn bf16_matches_the_f32_kernel_on_rounded_inputs() {
    let c = case(&[1, 40, 130, 257], 9, 3, 64, 11);
    let bf = |x: &[f32]| x.iter().map(|&v| Bf16::from_f32(v)).collect::<Vec<_>>();
    let back = |x: &[Bf16]| x.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
    let (q, k, v) = (bf(&c.query), bf(&c.key_cache), bf(&c.value_cache));
    let rounded = Case {
        shape: c.shape,
        query: back(&q),
        key_cache: back(&k),
        value_cache: back(&v),
        block_tables: c.block_tables.clone(),
        seq_lens: c.seq_lens.clone(),
    };
    let want = reference(&rounded, 0.125);
    let mut out = vec![Bf16::default(); q.len()];
    paged_decode_attention(
        c.shape,
        &q,
        &k,
        &v,
        &c.block_tables,
        &c.seq_lens,
        0.125,
        &mut out,
    )
    .expect("valid call");
    // The output's rounding to bf16 (2^-9 relative), and where the CPU has AVX512-BF16
    // the probabilities' rounding too (values are within [-1, 1]).
    for (g, w) in back(&out).iter().zip(&want) {
        assert!((g - w).abs() <= w.abs() / 256.0 + 2e-3, "{g} vs {w}");
    }
}

#[test]
fn bf16_rounding_is_nearest_even() {
    assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
    assert_eq!(Bf16::from_f32(f32::from_bits(0x3f80_8000)).0, 0x3f80); // tie -> even
    assert_eq!(Bf16::from_f32(f32::from_bits(0x3f81_8000)).0, 0x3f82); // tie -> even
    assert_eq!(Bf16::from_f32(f32::from_bits(0x3f80_8001)).0, 0x3f81);
    assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
    assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
}

#[test]
fn extreme_scores_stay_finite() {
    let mut c = case(&[100], 2, 1, 64, 5);
    c.query.iter_mut().for_each(|x| *x *= 1000.0);
    let got = run_f32(&c, 1.0).expect("valid call");
    assert!(got.iter().all(|x| x.is_finite()));
    assert!(max_abs_diff(&got, &reference(&c, 1.0)) < 1e-4);
}

#[test]
fn bad_inputs_are_invalid_request_errors() {
    let c = case(&[20, 3], 4, 2, 64, 1);
    let expect_err = |c: &Case, needle: &str| match run_f32(c, 1.0) {
        Err(CoreError::InvalidRequest(msg)) => assert!(msg.contains(needle), "{msg}"),
        other => panic!("expected InvalidRequest({needle}), got {other:?}"),
    };
    let mut bad = case(&[20, 3], 4, 2, 64, 1);
    bad.block_tables[1] = c.shape.num_blocks as i32;
    expect_err(&bad, "outside the cache");
    bad.block_tables[1] = -1;
    expect_err(&bad, "outside the cache");
    let mut bad = case(&[20, 3], 4, 2, 64, 1);
    bad.seq_lens[1] = 0;
    expect_err(&bad, "seq_lens[1]");
    bad.seq_lens[1] = (c.shape.max_blocks * 16 + 1) as i32;
    expect_err(&bad, "seq_lens[1]");
    let mut bad = case(&[20, 3], 4, 2, 64, 1);
    bad.shape.num_kv_heads = 3;
    expect_err(&bad, "multiple");
    let mut bad = case(&[20, 3], 4, 2, 64, 1);
    bad.query.pop();
    expect_err(&bad, "query/out");
    let mut bad = case(&[20, 3], 4, 2, 64, 1);
    bad.key_cache.pop();
    expect_err(&bad, "caches");
    let mut bad = case(&[20, 3], 4, 2, 64, 1);
    bad.shape.block_size = 15;
    expect_err(&bad, "even");
    // A block id past a sequence's last used block is never read, so it is not checked.
    let mut ok = case(&[20, 3], 4, 2, 64, 1);
    ok.block_tables[ok.shape.max_blocks + 1] = -5;
    assert!(run_f32(&ok, 1.0).is_ok());
}

/// `cargo test --release --lib bench_decode -- --ignored --nocapture`: the kernel alone at
/// 64 sequences x 512 positions (one layer of the default model), bf16.
#[test]
#[ignore]
fn bench_decode() {
    let c = case(&[512; 64], 9, 3, 64, 1);
    let bf = |x: &[f32]| x.iter().map(|&v| Bf16::from_f32(v)).collect::<Vec<_>>();
    let (q, k, v) = (bf(&c.query), bf(&c.key_cache), bf(&c.value_cache));
    let mut out = vec![Bf16::default(); q.len()];
    let mut call = || {
        paged_decode_attention(
            c.shape,
            &q,
            &k,
            &v,
            &c.block_tables,
            &c.seq_lens,
            0.125,
            &mut out,
        )
        .expect("valid call")
    };
    call();
    let n = 50;
    let t = std::time::Instant::now();
    for _ in 0..n {
        call();
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    let bytes = 2.0 * 64.0 * 512.0 * 3.0 * 64.0 * 2.0;
    println!(
        "{:.3} ms per call, {:.1} GB/s",
        per * 1e3,
        bytes / per / 1e9
    );
}
