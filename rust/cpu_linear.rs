//! `y = x W^T (+ b)` for one row of x in bf16: the single-stream decode step.
//!
//! At one token a step every weight is read once per token, so the step is bounded by
//! memory bandwidth; oneDNN's bf16 kernel reaches about 37 GB/s on this project's
//! 2-core machine, while plain streaming reaches 50-60. Here each thread streams whole
//! rows of W (contiguous, what the hardware prefetcher follows best), multiplies them
//! with x as bf16 pairs (`vdpbf16ps`, f32 accumulation) for 16 rows at a time, and
//! reduces the 16 rows' partial sums with one shuffle tree.

use crate::cpu_attention::{Bf16, Elem};
use crate::error::CoreError;
use crate::thread_team;

/// Rows of W per work item: enough to amortise handing items out, small enough that
/// even a 576-row matrix spreads over the threads.
const ROWS_PER_ITEM: usize = 64;

/// y[n] = sum_k x[k] W[n, k] (+ bias[n]) for W [n, k] row-major; x [k]; y [n]. Computed
/// in f32 and rounded once, as oneDNN does.
pub fn linear_row(
    x: &[Bf16],
    weight: &[Bf16],
    bias: Option<&[Bf16]>,
    out: &mut [Bf16],
) -> Result<(), CoreError> {
    let k = x.len();
    let n = out.len();
    let bad = |m: String| CoreError::InvalidRequest(format!("linear: {m}"));
    if k == 0 || weight.len() != n * k {
        return Err(bad(format!(
            "weight holds {} values, expected {n} x {k}",
            weight.len()
        )));
    }
    if bias.is_some_and(|b| b.len() != n) {
        return Err(bad(format!("bias must hold {n} values")));
    }
    let fast = simd_ok(k);
    let run = |_: &mut (), item: usize, y: &mut [Bf16]| {
        let lo = item * ROWS_PER_ITEM;
        let hi = lo + y.len();
        let w = &weight[lo * k..hi * k];
        let b = bias.map(|b| &b[lo..hi]);
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: `simd_ok` checked the CPU features and that k is a multiple of 32;
            // w holds y.len() rows of k.
            unsafe { simd::rows(x, w, b, y) };
            return;
        }
        let _ = fast;
        portable_rows(x, w, b, y);
    };
    thread_team::for_each_chunk(out, ROWS_PER_ITEM, n * k >= 1 << 16, run);
    Ok(())
}

fn simd_ok(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        k.is_multiple_of(32)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        false
    }
}

/// Plain loops: any k, any CPU; the reference of the SIMD path.
fn portable_rows(x: &[Bf16], w: &[Bf16], bias: Option<&[Bf16]>, y: &mut [Bf16]) {
    let k = x.len();
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    for (i, (row, out)) in w.chunks_exact(k).zip(y.iter_mut()).enumerate() {
        let mut acc: f32 = row.iter().zip(&xf).map(|(a, b)| a.to_f32() * b).sum();
        if let Some(b) = bias {
            acc += b[i].to_f32();
        }
        *out = Bf16::from_f32(acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::Bf16;
    use crate::cpu_attention::Elem;
    use std::arch::x86_64::*;

    /// Sums of each of 16 vectors, as the lanes of one vector (lane j = sum of v[j]).
    ///
    /// # Safety
    /// AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn hsum16(v: &[__m512; 16]) -> __m512 {
        // Each level adds halves of two inputs into one output, halving the vectors and
        // doubling the inputs covered per output.
        let mut w = [_mm512_setzero_ps(); 8];
        for (i, x) in w.iter_mut().enumerate() {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            *x = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            );
        }
        let mut x = [_mm512_setzero_ps(); 4];
        for (i, y) in x.iter_mut().enumerate() {
            let (a, b) = (w[2 * i], w[2 * i + 1]);
            *y = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            );
        }
        let mut y = [_mm512_setzero_ps(); 2];
        for (i, z) in y.iter_mut().enumerate() {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            *z = _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
            );
        }
        let z = _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(y[0], y[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(y[0], y[1]),
        );
        // Lane 4k + m of z holds vector 4m + k: transpose the 4x4 back.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(order, z)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn load_bh(p: *const Bf16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast()))
    }

    /// # Safety
    /// AVX-512F and AVX512-BF16; x.len() a multiple of 32; w holds y.len() rows of it.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn rows(x: &[Bf16], w: &[Bf16], bias: Option<&[Bf16]>, y: &mut [Bf16]) {
        let k = x.len();
        let n = y.len();
        let mut r0 = 0;
        while r0 < n {
            let m = (n - r0).min(16);
            // A short last tile repeats its first row; those outputs are not stored.
            let mut base = [w.as_ptr().add(r0 * k); 16];
            for (j, b) in base.iter_mut().enumerate().take(m) {
                *b = w.as_ptr().add((r0 + j) * k);
            }
            let mut parts = [_mm512_setzero_ps(); 16];
            for c in (0..k).step_by(32) {
                let xv = load_bh(x.as_ptr().add(c));
                for (part, b) in parts.iter_mut().zip(base.iter()) {
                    *part = _mm512_dpbf16_ps(*part, xv, load_bh(b.add(c)));
                }
            }
            let mut sums = [0f32; 16];
            _mm512_storeu_ps(sums.as_mut_ptr(), hsum16(&parts));
            for j in 0..m {
                let extra = bias.map_or(0.0, |b| b[r0 + j].to_f32());
                y[r0 + j] = Bf16::from_f32(sums[j] + extra);
            }
            r0 += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf(n: usize, seed: u32) -> Vec<Bf16> {
        (0..n)
            .map(|i| {
                let v = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001;
                Bf16::from_f32(v as f32 / 1000.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn equals_f64_reference_with_and_without_bias() {
        for (n, k) in [(1, 32), (17, 64), (70, 576), (200, 96), (33, 40)] {
            let (x, w, b) = (bf(k, 1), bf(n * k, 2), bf(n, 3));
            for bias in [None, Some(b.as_slice())] {
                let mut y = vec![Bf16::default(); n];
                linear_row(&x, &w, bias, &mut y).expect("valid");
                for (i, got) in y.iter().enumerate() {
                    let want: f64 = (0..k)
                        .map(|j| x[j].to_f32() as f64 * w[i * k + j].to_f32() as f64)
                        .sum::<f64>()
                        + bias.map_or(0.0, |b| b[i].to_f32() as f64);
                    let tol = want.abs() / 128.0 + 1e-3;
                    assert!(
                        (got.to_f32() as f64 - want).abs() <= tol,
                        "n {n} k {k} row {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_equals_portable_bit_for_bit_or_within_one_ulp() {
        let (n, k) = (300, 1536);
        let (x, w) = (bf(k, 4), bf(n * k, 5));
        let mut fast = vec![Bf16::default(); n];
        linear_row(&x, &w, None, &mut fast).expect("valid");
        let mut slow = vec![Bf16::default(); n];
        portable_rows(&x, &w, None, &mut slow);
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a.0 as i32 - b.0 as i32).abs() <= 1, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut y = vec![Bf16::default(); 4];
        assert!(linear_row(&bf(8, 1), &bf(31, 1), None, &mut y).is_err());
        assert!(linear_row(&bf(8, 1), &bf(32, 1), Some(&bf(3, 1)), &mut y).is_err());
        assert!(linear_row(&[], &[], None, &mut y).is_err());
    }
}
