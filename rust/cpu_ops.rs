//! Small fused CPU ops for the model's hot path, where torch runs several kernels (and
//! Python dispatches) for what is one pass over a few kilobytes per token.

use crate::cpu_attention::simd::Load16;
use crate::cpu_attention::Elem;
use crate::error::CoreError;

/// Lanes of the partial sums: wide enough for the compiler to vectorise the reduction,
/// which it may not reorder on its own.
const LANES: usize = 16;

fn invalid(msg: String) -> CoreError {
    CoreError::InvalidRequest(format!("rms_norm: {msg}"))
}

/// RMSNorm of each row of `x` [rows, hidden] times `weight`, into `out`. With a
/// residual, first `residual += x` (rounded to the element type, as a separate add
/// would be) and the norm is taken of that sum. Computed in f32, rounded once.
pub fn rms_norm<E: Load16>(
    x: &[E],
    residual: Option<&mut [E]>,
    weight: &[E],
    eps: f32,
    out: &mut [E],
) -> Result<(), CoreError> {
    let hidden = weight.len();
    if hidden == 0 || !x.len().is_multiple_of(hidden) {
        return Err(invalid(format!(
            "{} values are not rows of the weight's {hidden}",
            x.len()
        )));
    }
    if out.len() != x.len() || residual.as_ref().is_some_and(|r| r.len() != x.len()) {
        return Err(invalid(
            "x, residual and out must have the same shape".into(),
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if E::IS_BF16 && hidden.is_multiple_of(16) && wide_vectors() {
        let (Some(xb), Some(wb), Some(ob)) = (E::bits(x), E::bits(weight), E::bits_mut(out)) else {
            unreachable!("bf16 elements have bf16 bits");
        };
        // SAFETY: the CPU has AVX-512F/BW (`wide_vectors`); the lengths were checked.
        unsafe { rms_norm_bf16_avx512(xb, residual.and_then(E::bits_mut), wb, eps, ob) };
        return Ok(());
    }
    rms_norm_rows(x, residual, weight, eps, out);
    Ok(())
}

/// bf16 bits of 16 floats, rounded to nearest even (NaN to the quiet NaN), as `Bf16::from_f32`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn round_bf16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let bits = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    let rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0_0000));
    _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(rounded))
}

/// 16 bf16 values (as bits) widened to f32.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn widen_bf16(p: *const u16) -> std::arch::x86_64::__m512 {
    crate::cpu_attention::Bf16::load16(p.cast())
}

/// `rms_norm` on bf16 rows of a multiple of 16 values, 16 at a time (the generic loop
/// measured 4x slower: its bf16 conversions did not vectorise well).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rms_norm_bf16_avx512(
    x: &[u16],
    mut residual: Option<&mut [u16]>,
    weight: &[u16],
    eps: f32,
    out: &mut [u16],
) {
    use std::arch::x86_64::*;
    let hidden = weight.len();
    let mut row = vec![0f32; hidden];
    for (r, (xr, or)) in x
        .chunks_exact(hidden)
        .zip(out.chunks_exact_mut(hidden))
        .enumerate()
    {
        let mut sq = _mm512_setzero_ps();
        for i in (0..hidden).step_by(16) {
            let mut v = widen_bf16(xr.as_ptr().add(i));
            if let Some(res) = residual.as_deref_mut() {
                let p = res.as_mut_ptr().add(r * hidden + i);
                _mm256_storeu_si256(p.cast(), round_bf16(_mm512_add_ps(widen_bf16(p), v)));
                v = widen_bf16(p); // the sum as rounded, as a separate add would leave it
            }
            _mm512_storeu_ps(row.as_mut_ptr().add(i), v);
            sq = _mm512_fmadd_ps(v, v, sq);
        }
        let inv = 1.0 / (_mm512_reduce_add_ps(sq) / hidden as f32 + eps).sqrt();
        let inv = _mm512_set1_ps(inv);
        for i in (0..hidden).step_by(16) {
            let v = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(i)), inv);
            let o = _mm512_mul_ps(v, widen_bf16(weight.as_ptr().add(i)));
            _mm256_storeu_si256(or.as_mut_ptr().add(i).cast(), round_bf16(o));
        }
    }
}

/// Whether this CPU runs the AVX-512 loops (AVX-512F/BW/VL).
#[cfg(target_arch = "x86_64")]
fn wide_vectors() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// `rms_norm` in plain loops (any element type, any CPU), on checked lengths.
fn rms_norm_rows<E: Elem>(
    x: &[E],
    residual: Option<&mut [E]>,
    weight: &[E],
    eps: f32,
    out: &mut [E],
) {
    let hidden = weight.len();
    let w: Vec<f32> = weight.iter().map(|v| v.to_f32()).collect();
    let mut row = vec![0f32; hidden];
    let norm_row = |src: &[f32], dst: &mut [E]| {
        let mut lanes = [0f32; LANES];
        let mut chunks = src.chunks_exact(LANES);
        for c in &mut chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v * v;
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        let inv = 1.0 / ((lanes.iter().sum::<f32>() + tail) / hidden as f32 + eps).sqrt();
        for ((d, s), wv) in dst.iter_mut().zip(src).zip(&w) {
            *d = E::from_f32(s * inv * wv);
        }
    };
    match residual {
        Some(res) => {
            for ((xr, rr), or) in x
                .chunks_exact(hidden)
                .zip(res.chunks_exact_mut(hidden))
                .zip(out.chunks_exact_mut(hidden))
            {
                for ((r, a), b) in row.iter_mut().zip(rr.iter_mut()).zip(xr) {
                    *a = E::from_f32(a.to_f32() + b.to_f32());
                    *r = a.to_f32();
                }
                norm_row(&row, or);
            }
        }
        None => {
            for (xr, or) in x.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
                for (r, a) in row.iter_mut().zip(xr) {
                    *r = a.to_f32();
                }
                norm_row(&row, or);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_attention::Bf16;

    fn reference(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        let h = w.len();
        x.chunks(h)
            .flat_map(|r| {
                let inv = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
                r.iter().zip(w).map(move |(v, wv)| v * inv * wv)
            })
            .collect()
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 250.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn f32_equals_reference_with_and_without_residual() {
        let (rows, h) = (5, 37); // a hidden size that leaves a tail after the lanes
        let (x, w, mut res) = (data(rows * h, 1), data(h, 2), data(rows * h, 3));
        let mut out = vec![0f32; x.len()];
        rms_norm(&x, None, &w, 1e-5, &mut out).expect("valid");
        let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
        let want = reference(&f(&x), &f(&w), 1e-5);
        assert!(out
            .iter()
            .zip(&want)
            .all(|(a, b)| (*a as f64 - b).abs() < 1e-5));
        let sum: Vec<f32> = x.iter().zip(&res).map(|(a, b)| a + b).collect();
        rms_norm(&x, Some(&mut res), &w, 1e-5, &mut out).expect("valid");
        assert_eq!(res, sum);
        let want = reference(&f(&sum), &f(&w), 1e-5);
        assert!(out
            .iter()
            .zip(&want)
            .all(|(a, b)| (*a as f64 - b).abs() < 1e-5));
    }

    #[test]
    fn bf16_rounds_the_residual_and_the_output_once() {
        let h = 64;
        let bf = |v: &[f32]| v.iter().map(|&a| Bf16::from_f32(a)).collect::<Vec<_>>();
        let (x, w, mut res) = (bf(&data(2 * h, 4)), bf(&data(h, 5)), bf(&data(2 * h, 6)));
        let sum: Vec<Bf16> = x
            .iter()
            .zip(&res)
            .map(|(a, b)| Bf16::from_f32(a.to_f32() + b.to_f32()))
            .collect();
        let mut out = vec![Bf16::default(); x.len()];
        rms_norm(&x, Some(&mut res), &w, 1e-6, &mut out).expect("valid");
        assert_eq!(res, sum);
        let f = |v: &[Bf16]| v.iter().map(|a| a.to_f32() as f64).collect::<Vec<_>>();
        let want = reference(&f(&sum), &f(&w), 1e-6);
        for (a, b) in f(&out).iter().zip(&want) {
            assert!((a - b).abs() <= b.abs() / 256.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let mut out = vec![0f32; 6];
        assert!(rms_norm(&[0f32; 6], None, &[1f32; 4], 1e-5, &mut out).is_err());
        assert!(rms_norm(&[0f32; 6], None, &[], 1e-5, &mut out).is_err());
        let mut short = vec![0f32; 3];
        assert!(rms_norm(&[0f32; 6], Some(&mut short), &[1f32; 3], 1e-5, &mut out).is_err());
        assert!(rms_norm(&[0f32; 6], None, &[1f32; 3], 1e-5, &mut [0f32; 5]).is_err());
    }
}

/// The shapes of a `rope` call.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Rotate q and k of each token (neox rope: `x * cos + swap_halves(x) * sin`, with `sin`
/// already signed `[-sin, sin]`) and split the fused projections: q to `q_out`
/// [T, heads, D], the rotated k to `k_out` and v to `v_out` [T, kv_heads, D] (what
/// `Tiled::store` takes). `qkv` is [T, (heads + 2 kv_heads) * D]; `cos`/`sin` [T, D].
/// Replaces ~6 torch ops per layer (rope, split, copies).
#[allow(clippy::too_many_arguments)]
pub fn rope<E: Load16>(
    shape: RopeShape,
    qkv: &[E],
    cos: &[E],
    sin: &[E],
    q_out: &mut [E],
    k_out: &mut [E],
    v_out: &mut [E],
) -> Result<(), CoreError> {
    let RopeShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let bad = |msg: String| CoreError::InvalidRequest(format!("rope: {msg}"));
    if d == 0 || !d.is_multiple_of(2) || kv_heads == 0 {
        return Err(bad(format!(
            "head_dim {d} must be even and kv_heads positive"
        )));
    }
    let width = (heads + 2 * kv_heads) * d;
    let t = qkv.len() / width;
    if qkv.len() != t * width || cos.len() != t * d || sin.len() != t * d {
        return Err(bad(
            "qkv must be [T, (heads + 2 kv_heads) * head_dim] and cos, sin [T, head_dim]".into(),
        ));
    }
    let kv_len = t * kv_heads * d;
    if q_out.len() != t * heads * d || k_out.len() != kv_len || v_out.len() != kv_len {
        return Err(bad(
            "q_out must be [T, heads, head_dim], k_out and v_out [T, kv_heads, head_dim]".into(),
        ));
    }
    let half = d / 2;
    #[cfg(target_arch = "x86_64")]
    if E::IS_BF16 && half.is_multiple_of(16) && wide_vectors() {
        let bits = (E::bits(qkv), E::bits(cos), E::bits(sin));
        let outs = (E::bits_mut(q_out), E::bits_mut(k_out), E::bits_mut(v_out));
        let ((Some(qkv), Some(cos), Some(sin)), (Some(q), Some(k), Some(v))) = (bits, outs) else {
            unreachable!("bf16 elements have bf16 bits");
        };
        // SAFETY: the CPU has AVX-512F/BW (`wide_vectors`); the lengths were checked.
        unsafe { rope_bf16_avx512(shape, qkv, cos, sin, q, k, v) };
        return Ok(());
    }
    // Each half of the output in its own loop, so that both vectorise.
    let rotate = |x: &[E], c: &[E], s: &[E], out: &mut [E]| {
        let (x1, x2) = x.split_at(half);
        let (o1, o2) = out.split_at_mut(half);
        let (c1, c2) = c.split_at(half);
        let (s1, s2) = s.split_at(half);
        for i in 0..half {
            o1[i] = E::from_f32(x1[i].to_f32() * c1[i].to_f32() + x2[i].to_f32() * s1[i].to_f32());
            o2[i] = E::from_f32(x2[i].to_f32() * c2[i].to_f32() + x1[i].to_f32() * s2[i].to_f32());
        }
    };
    let rows = qkv
        .chunks_exact(width)
        .zip(q_out.chunks_exact_mut(heads * d));
    let kv_rows = k_out
        .chunks_exact_mut(kv_heads * d)
        .zip(v_out.chunks_exact_mut(kv_heads * d));
    for (tok, ((row, q_row), (k_row, v_row))) in rows.zip(kv_rows).enumerate() {
        let (c, s) = (&cos[tok * d..(tok + 1) * d], &sin[tok * d..(tok + 1) * d]);
        let (qk, v) = row.split_at((heads + kv_heads) * d);
        let outs = q_row.chunks_exact_mut(d).chain(k_row.chunks_exact_mut(d));
        for (x, out) in qk.chunks_exact(d).zip(outs) {
            rotate(x, c, s, out);
        }
        v_row.copy_from_slice(v);
    }
    Ok(())
}

/// `rope` on bf16 with head_dim a multiple of 32, 16 values at a time (the generic loop
/// measured 5x slower: its bf16 conversions did not vectorise well).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rope_bf16_avx512(
    shape: RopeShape,
    qkv: &[u16],
    cos: &[u16],
    sin: &[u16],
    q_out: &mut [u16],
    k_out: &mut [u16],
    v_out: &mut [u16],
) {
    use std::arch::x86_64::*;
    let RopeShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let (half, width) = (d / 2, (heads + 2 * kv_heads) * d);
    let rows = qkv
        .chunks_exact(width)
        .zip(q_out.chunks_exact_mut(heads * d));
    let kv_rows = k_out
        .chunks_exact_mut(kv_heads * d)
        .zip(v_out.chunks_exact_mut(kv_heads * d));
    for (tok, ((row, q_row), (k_row, v_row))) in rows.zip(kv_rows).enumerate() {
        let (c, s) = (cos.as_ptr().add(tok * d), sin.as_ptr().add(tok * d));
        let (qk, v) = row.split_at((heads + kv_heads) * d);
        let outs = q_row.chunks_exact_mut(d).chain(k_row.chunks_exact_mut(d));
        for (x, out) in qk.chunks_exact(d).zip(outs) {
            let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
            for i in (0..half).step_by(16) {
                let (x1, x2) = (widen_bf16(xp.add(i)), widen_bf16(xp.add(half + i)));
                let (c1, c2) = (widen_bf16(c.add(i)), widen_bf16(c.add(half + i)));
                let (s1, s2) = (widen_bf16(s.add(i)), widen_bf16(s.add(half + i)));
                let o1 = _mm512_add_ps(_mm512_mul_ps(x1, c1), _mm512_mul_ps(x2, s1));
                let o2 = _mm512_add_ps(_mm512_mul_ps(x2, c2), _mm512_mul_ps(x1, s2));
                _mm256_storeu_si256(op.add(i).cast(), round_bf16(o1));
                _mm256_storeu_si256(op.add(half + i).cast(), round_bf16(o2));
            }
        }
        v_row.copy_from_slice(v);
    }
}

#[cfg(test)]
mod rope_tests {
    use super::*;

    #[test]
    fn rotates_q_and_k_and_splits_k_and_v_out() {
        let shape = RopeShape {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
        };
        // Two tokens; row = q0 q1 k v, each 4 values.
        let qkv: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let cos = vec![1.0, 0.5, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0];
        let sin = vec![0.0, -2.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0];
        let (mut q, mut k, mut v) = (vec![0f32; 16], vec![0f32; 8], vec![0f32; 8]);
        rope(shape, &qkv, &cos, &sin, &mut q, &mut k, &mut v).expect("valid");
        // token 0, head 0: x = [0 1 2 3], swapped [2 3 0 1]
        assert_eq!(&q[..4], &[0.0, 0.5 - 6.0, 2.0, 1.5 + 2.0]);
        // token 1 (cos 0, sin 1): the swapped halves
        assert_eq!(&q[8..12], &[18.0, 19.0, 16.0, 17.0]);
        assert_eq!(&k[..4], &[8.0, 4.5 - 22.0, 10.0, 5.5 + 18.0]); // token 0's k
        assert_eq!(&v[..4], &[12.0, 13.0, 14.0, 15.0]); // and its v, as it was
        assert_eq!(&k[4..], &[26.0, 27.0, 24.0, 25.0]); // token 1's k
        assert_eq!(&v[4..], &[28.0, 29.0, 30.0, 31.0]);
    }

    #[test]
    fn bf16_equals_the_f32_rope_rounded_once() {
        use crate::cpu_attention::Bf16;
        type Out<E> = (Vec<E>, Vec<E>, Vec<E>);
        let shape = RopeShape {
            heads: 3,
            kv_heads: 1,
            head_dim: 64,
        };
        let t = 3;
        let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin() * 3.0).collect();
        let (qkv, cos, sin): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            wave(t * 5 * 64, 0.37),
            wave(t * 64, 0.11),
            wave(t * 64, 0.23),
        );
        let bf = |v: &[f32]| v.iter().map(|&x| Bf16::from_f32(x)).collect::<Vec<_>>();
        let back = |v: &[Bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        let (qkv_b, cos_b, sin_b) = (bf(&qkv), bf(&cos), bf(&sin));
        let (mut q, mut k, mut v): Out<f32> =
            (vec![0.0; t * 3 * 64], vec![0.0; t * 64], vec![0.0; t * 64]);
        let (qkv_r, cos_r, sin_r) = (back(&qkv_b), back(&cos_b), back(&sin_b));
        rope(shape, &qkv_r, &cos_r, &sin_r, &mut q, &mut k, &mut v).expect("valid");
        let z = Bf16(0);
        let (mut qb, mut kb, mut vb): Out<Bf16> =
            (vec![z; q.len()], vec![z; k.len()], vec![z; v.len()]);
        rope(shape, &qkv_b, &cos_b, &sin_b, &mut qb, &mut kb, &mut vb).expect("valid");
        assert_eq!(qb, bf(&q));
        assert_eq!((kb, vb), (bf(&k), bf(&v)));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let shape = RopeShape {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
        };
        let qkv = vec![0f32; 16];
        let (cos, sin) = (vec![0f32; 4], vec![0f32; 4]);
        let (mut q, mut k, mut v) = (vec![0f32; 8], vec![0f32; 4], vec![0f32; 4]);
        assert!(rope(shape, &qkv, &cos, &sin, &mut q, &mut k, &mut v).is_ok());
        assert!(rope(shape, &qkv[..15], &cos, &sin, &mut q, &mut k, &mut v).is_err());
        assert!(rope(shape, &qkv, &cos[..3], &sin, &mut q, &mut k, &mut v).is_err());
        assert!(rope(shape, &qkv, &cos, &sin, &mut q[..7], &mut k, &mut v).is_err());
        assert!(rope(shape, &qkv, &cos, &sin, &mut q, &mut k[..3], &mut v).is_err());
        let odd = RopeShape {
            head_dim: 3,
            ..shape
        };
        assert!(rope(
            odd,
            &qkv[..12],
            &cos[..3],
            &sin[..3],
            &mut q[..6],
            &mut k[..3],
            &mut v[..3]
        )
        .is_err());
    }
}

/// The index of the largest value of each row of `x` [rows, row_len] (the first one on
/// ties; the first NaN if a row has one, as torch's argmax), into `out` [rows]. Greedy
/// sampling straight from bf16 logits: torch's bf16 argmax is 4x slower than its f32
/// one, and converting the logits to f32 first costs a pass of its own.
pub fn argmax_rows<E: Load16>(x: &[E], row_len: usize, out: &mut [i64]) -> Result<(), CoreError> {
    if row_len == 0 || x.len() != out.len() * row_len {
        return Err(CoreError::InvalidRequest(format!(
            "argmax: {} values are not {} rows of {row_len}",
            x.len(),
            out.len()
        )));
    }
    let one = |row: &[E]| -> i64 {
        #[cfg(target_arch = "x86_64")]
        if E::HAS_LOAD16 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            if let Some(i) = unsafe { argmax_avx512(row) } {
                return i as i64;
            }
        }
        argmax_portable(row) as i64
    };
    let parallel = x.len() >= 1 << 18 && out.len() > 1;
    crate::thread_team::for_each_chunk(out, 1, parallel, |_: &mut (), r, o: &mut [i64]| {
        o[0] = one(&x[r * row_len..(r + 1) * row_len]);
    });
    Ok(())
}

fn argmax_portable<E: Elem>(row: &[E]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, v) in row.iter().enumerate() {
        let v = v.to_f32();
        if v.is_nan() {
            return i;
        }
        if v > best_v || i == 0 {
            best = i;
            best_v = v;
        }
    }
    best
}

/// None when the row holds a NaN (the caller's scalar scan then finds the first one).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn argmax_avx512<E: Load16>(row: &[E]) -> Option<usize> {
    use std::arch::x86_64::*;
    let n = row.len();
    let full = n / 16 * 16;
    let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut best_i = _mm512_set1_epi32(-1);
    let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let step = _mm512_set1_epi32(16);
    let mut nan: u16 = 0;
    for i in (0..full).step_by(16) {
        let v = E::load16(row.as_ptr().add(i));
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        // Strictly greater: each lane keeps its first maximum.
        let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
        best = _mm512_mask_mov_ps(best, gt, v);
        best_i = _mm512_mask_mov_epi32(best_i, gt, idx);
        idx = _mm512_add_epi32(idx, step);
    }
    if nan != 0 {
        return None;
    }
    let mut vals = [0f32; 16];
    let mut ids = [0i32; 16];
    _mm512_storeu_ps(vals.as_mut_ptr(), best);
    _mm512_storeu_epi32(ids.as_mut_ptr(), best_i);
    let (mut bv, mut bi) = (f32::NEG_INFINITY, usize::MAX);
    for (&v, &i) in vals.iter().zip(&ids) {
        if i >= 0 && (v > bv || (v == bv && (i as usize) < bi)) {
            bv = v;
            bi = i as usize;
        }
    }
    if bi == usize::MAX && full > 0 {
        bi = 0; // nothing above -inf so far: the first element is a first maximum
    }
    for (i, v) in row.iter().enumerate().skip(full) {
        let v = v.to_f32();
        if v.is_nan() {
            return None;
        }
        if v > bv || bi == usize::MAX {
            bv = v;
            bi = i;
        }
    }
    Some(if bi == usize::MAX { 0 } else { bi })
}

#[cfg(test)]
mod argmax_tests {
    use super::*;
    use crate::cpu_attention::Bf16;

    #[test]
    fn first_maximum_of_each_row_in_both_types() {
        // Lengths below, at and past the 16-lane width; ties; -inf only.
        for len in [1usize, 5, 16, 17, 49152 / 64, 1000] {
            let mut x: Vec<f32> = (0..3 * len)
                .map(|i| ((i * 7919) % 1013) as f32 - 500.0)
                .collect();
            x[len + len / 2] = 9999.0;
            x[len + len - 1] = 9999.0; // a later tie: the first wins
            x[2 * len..].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
            let want: Vec<i64> = x.chunks(len).map(|r| argmax_portable(r) as i64).collect();
            assert_eq!(want[1], (len / 2) as i64);
            assert_eq!(want[2], 0);
            let mut got = vec![0i64; 3];
            argmax_rows(&x, len, &mut got).expect("valid");
            assert_eq!(got, want, "f32 len {len}");
            // bf16 rounding makes new ties: the reference scans the rounded values.
            let xb: Vec<Bf16> = x.iter().map(|&v| Bf16::from_f32(v)).collect();
            let want: Vec<i64> = xb.chunks(len).map(|r| argmax_portable(r) as i64).collect();
            argmax_rows(&xb, len, &mut got).expect("valid");
            assert_eq!(got, want, "bf16 len {len}");
        }
    }

    #[test]
    fn nan_wins_as_in_torch_and_sizes_are_checked() {
        let mut x = vec![0f32; 40];
        x[3] = 5.0;
        x[21] = f32::NAN;
        let mut got = vec![0i64; 1];
        argmax_rows(&x, 40, &mut got).expect("valid");
        assert_eq!(got, [21]);
        assert!(argmax_rows(&x, 39, &mut got).is_err());
        assert!(argmax_rows(&x, 0, &mut got).is_err());
    }

    #[test]
    fn many_rows_split_over_threads() {
        let (rows, len) = (64, 8192);
        let x: Vec<f32> = (0..rows * len).map(|i| ((i * 31) % 977) as f32).collect();
        let want: Vec<i64> = x.chunks(len).map(|r| argmax_portable(r) as i64).collect();
        let mut got = vec![0i64; rows];
        argmax_rows(&x, len, &mut got).expect("valid");
        assert_eq!(got, want);
    }
}

/// `out[t] = silu(gate[t]) * up[t]` for each row t of `gate_up` [T, 2I] = [gate | up],
/// into `out` [T, I]: the gated MLP's activation in one pass (torch: silu, then a
/// multiply, each a pass and an allocation). Computed in f32, rounded once.
pub fn silu_mul<E: Load16>(gate_up: &[E], out: &mut [E], inter: usize) -> Result<(), CoreError> {
    if inter == 0 || gate_up.len() != 2 * out.len() || !out.len().is_multiple_of(inter) {
        return Err(CoreError::InvalidRequest(format!(
            "silu_mul: gate_up of {} values does not match out of {} in rows of {inter}",
            gate_up.len(),
            out.len()
        )));
    }
    let one = |g: &[E], o: &mut [E]| {
        let (gate, up) = g.split_at(inter);
        #[cfg(target_arch = "x86_64")]
        if E::HAS_LOAD16 && wide_vectors() {
            // SAFETY: the CPU has AVX-512F (`wide_vectors`).
            unsafe { silu_mul_avx512(gate, up, o) };
            return;
        }
        for ((o, a), b) in o.iter_mut().zip(gate).zip(up) {
            let a = a.to_f32();
            *o = E::from_f32(a / (1.0 + (-a).exp()) * b.to_f32());
        }
    };
    let parallel = out.len() >= 1 << 16;
    crate::thread_team::for_each_chunk(out, inter, parallel, |_: &mut (), r, o: &mut [E]| {
        one(&gate_up[2 * r * inter..2 * (r + 1) * inter], o);
    });
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn silu_mul_avx512<E: Load16>(gate: &[E], up: &[E], out: &mut [E]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let full = n / 16 * 16;
    let one = _mm512_set1_ps(1.0);
    for i in (0..full).step_by(16) {
        let g = E::load16(gate.as_ptr().add(i));
        let u = E::load16(up.as_ptr().add(i));
        let e = crate::cpu_attention::simd::exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
        let v = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
        let o = out.as_mut_ptr().add(i);
        if E::IS_BF16 {
            // `IS_BF16`: E is `Bf16`, 16 bits each.
            _mm256_storeu_si256(o.cast(), round_bf16(v));
        } else {
            // Not bf16 with `Load16`: f32.
            _mm512_storeu_ps(o.cast(), v);
        }
    }
    for i in full..n {
        let a = gate[i].to_f32();
        out[i] = E::from_f32(a / (1.0 + (-a).exp()) * up[i].to_f32());
    }
}

#[cfg(test)]
mod silu_tests {
    use super::*;
    use crate::cpu_attention::Bf16;

    #[test]
    fn equals_the_formula_in_both_types() {
        for (rows, inter) in [(1, 1536), (3, 37), (70, 1536)] {
            let g: Vec<f32> = (0..rows * 2 * inter)
                .map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0)
                .collect();
            let mut out = vec![0f32; rows * inter];
            silu_mul(&g, &mut out, inter).expect("valid");
            for r in 0..rows {
                for i in 0..inter {
                    let (a, b) = (
                        g[2 * r * inter + i] as f64,
                        g[2 * r * inter + inter + i] as f64,
                    );
                    let want = a / (1.0 + (-a).exp()) * b;
                    let got = out[r * inter + i] as f64;
                    assert!(
                        (got - want).abs() <= want.abs() * 1e-5 + 1e-6,
                        "{got} vs {want}"
                    );
                }
            }
            let gb: Vec<Bf16> = g.iter().map(|&v| Bf16::from_f32(v)).collect();
            let mut ob = vec![Bf16::default(); rows * inter];
            silu_mul(&gb, &mut ob, inter).expect("valid");
            for (i, o) in ob.iter().enumerate() {
                let (r, c) = (i / inter, i % inter);
                let (a, b) = (
                    gb[2 * r * inter + c].to_f32(),
                    gb[2 * r * inter + inter + c].to_f32(),
                );
                let want = a / (1.0 + (-a).exp()) * b;
                assert!((o.to_f32() - want).abs() <= want.abs() / 128.0 + 1e-6);
            }
        }
    }

    #[test]
    fn extremes_and_bad_shapes() {
        let g = [-200.0f32, 200.0, 0.0, 2.0, 3.0, 4.0];
        let mut out = [0f32; 3];
        silu_mul(&g, &mut out, 3).expect("valid");
        assert_eq!(out[0], -0.0 * 2.0);
        assert!((out[1] - 600.0).abs() < 1e-3);
        assert_eq!(out[2], 0.0);
        assert!(silu_mul(&g, &mut [0f32; 2], 2).is_err());
        assert!(silu_mul(&g, &mut [0f32; 3], 0).is_err());
    }
}
