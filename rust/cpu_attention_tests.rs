use super::*;

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
            let row = |t: usize| {
                let b = c.block_tables[seq * s.max_blocks + t / s.block_size] as usize;
                ((b * s.block_size + t % s.block_size) * s.num_kv_heads + kvh) * d
            };
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    let k = &c.key_cache[row(t)..][..d];
                    q.iter()
                        .zip(k)
                        .map(|(a, b)| *a as f64 * *b as f64)
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
                    .map(|t| e[t] / sum * c.value_cache[row(t) + i] as f64)
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

/// One (sequence, KV head) item through a given kernel, in element type E.
fn item_through<E: Elem + simd::Load16>(
    kernel: Kernel,
    c: &Case,
    len: usize,
    d: usize,
) -> Vec<f32> {
    let s = c.shape;
    let group = s.num_heads / s.num_kv_heads;
    let conv = |x: &[f32]| x.iter().map(|&v| E::from_f32(v)).collect::<Vec<E>>();
    let (k, v) = (conv(&c.key_cache), conv(&c.value_cache));
    let q = conv(&c.query[group * d..2 * group * d]);
    let mut scratch = Scratch {
        rows: (0..len)
            .map(|t| {
                let blk = c.block_tables[t / 16] as usize;
                ((blk * 16 + t % 16) * s.num_kv_heads + 1) * d
            })
            .collect(),
        ..Scratch::default()
    };
    let mut out = vec![E::from_f32(0.0); group * d];
    attend_item(kernel, &s, group, &q, &k, &v, 0.125, &mut scratch, &mut out);
    out.iter().map(|x| x.to_f32()).collect()
}

#[test]
fn every_kernel_agrees_with_the_portable_one() {
    for d in [64, 128] {
        // Odd and even lengths, a partial last tile, GQA group 3.
        for len in [1, 2, 17, 300, 301] {
            let c = case(&[len as i32, 5], 12, 4, d, 3 + len as u64);
            let want = item_through::<f32>(Kernel::Portable, &c, len, d);
            assert!(want.iter().any(|&x| x != 0.0));
            let want_bf = item_through::<Bf16>(Kernel::Portable, &c, len, d);
            let mut kernels = vec![];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512 { chunks: d / 16 });
            }
            for &kernel in &kernels {
                let got = item_through::<f32>(kernel, &c, len, d);
                assert!(
                    max_abs_diff(&got, &want) < 1e-5,
                    "{kernel:?} f32 d {d} len {len}"
                );
                let got = item_through::<Bf16>(kernel, &c, len, d);
                assert!(
                    max_abs_diff(&got, &want_bf) < 1e-2,
                    "{kernel:?} bf16 d {d} len {len}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512bf16") {
                let kernel = Kernel::Avx512Bf16 { chunks: d / 16 };
                assert_eq!(Kernel::select::<Bf16>(d), kernel);
                let got = item_through::<Bf16>(kernel, &c, len, d);
                // Probabilities in bf16 (2^-9 relative) on top of the output rounding.
                assert!(
                    max_abs_diff(&got, &want_bf) < 1.5e-2,
                    "bf16 kernel d {d} len {len}"
                );
            }
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
