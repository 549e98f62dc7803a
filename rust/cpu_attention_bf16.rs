//! AVX512-BF16 kernels on bf16 caches (Zen 4, Sapphire Rapids and later).
//!
//! Scores: `vdpbf16ps` multiplies the query and a key as bf16 pairs with f32
//! accumulation (no widening of K), and the 16 partial-sum vectors of a tile of 16
//! positions are reduced together by a shuffle tree (3 ops per position instead of a
//! horizontal sum each). Weighted sum: two V rows are interleaved into (v_t, v_t+1)
//! pairs and multiplied by the pair (p_t, p_t+1), so each instruction covers two
//! positions; the probabilities are rounded to bf16 for it, as the torch bf16 path
//! rounds its softmax output.

use std::arch::x86_64::*;

/// Positions ahead that the loops prefetch (see `x86::PREFETCH_AHEAD`).
const AHEAD: usize = 32;

#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn load_bh(p: *const u16) -> __m512bh {
    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast()))
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn prefetch(base: *const u16, rows: &[usize], t: usize, bytes: usize) {
    if let Some(&row) = rows.get(t) {
        let p = base.add(row).cast::<i8>();
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.add(line));
        }
    }
}

/// Sums of each of 16 vectors, as the lanes of one vector (lane j = sum of v[j]).
///
/// # Safety
/// AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn hsum16(v: &[__m512; 16]) -> __m512 {
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

/// out[h, t] = scale * q[h] . K[rows[t]]; q is [heads, 16 * chunks] bf16 bits.
///
/// # Safety
/// AVX-512F and AVX512-BF16; chunks is 4 or 8; `rows[t] + 16 * chunks <= k.len()` for
/// every t; out is [heads, rows.len()].
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn scores(
    chunks: usize,
    q: &[u16],
    k: &[u16],
    rows: &[usize],
    scale: f32,
    out: &mut [f32],
) {
    match chunks {
        4 => scores_impl::<2>(q, k, rows, scale, out),
        _ => scores_impl::<4>(q, k, rows, scale, out),
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn scores_impl<const C2: usize>(
    q: &[u16],
    k: &[u16],
    rows: &[usize],
    scale: f32,
    out: &mut [f32],
) {
    let d = 32 * C2;
    let heads = q.len() / d;
    let len = rows.len();
    let kp = k.as_ptr();
    let sc = _mm512_set1_ps(scale);
    // Heads outer, positions inner: a head's pass reads each key once (the first pass
    // from memory, the others from L2), and nothing is loop-invariant across heads for
    // the compiler to hoist into more registers than there are.
    for h in 0..heads {
        let mut qv = [load_bh(q.as_ptr()); C2];
        for (c, x) in qv.iter_mut().enumerate() {
            *x = load_bh(q.as_ptr().add(h * d + 32 * c));
        }
        let mut t0 = 0;
        while t0 < len {
            let n = (len - t0).min(16);
            // A short last tile repeats its first row; those lanes are not stored.
            let mut tile = [rows[t0]; 16];
            tile[..n].copy_from_slice(&rows[t0..t0 + n]);
            if h == 0 {
                for t in t0 + AHEAD..t0 + AHEAD + 16 {
                    prefetch(kp, rows, t, 2 * d);
                }
            }
            let mut parts = [_mm512_setzero_ps(); 16];
            for (part, &row) in parts.iter_mut().zip(tile.iter()) {
                let mut acc = _mm512_setzero_ps();
                for (c, x) in qv.iter().enumerate() {
                    acc = _mm512_dpbf16_ps(acc, *x, load_bh(kp.add(row + 32 * c)));
                }
                *part = acc;
            }
            let sums = _mm512_mul_ps(hsum16(&parts), sc);
            let mask = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(h * len + t0), mask, sums);
            t0 += 16;
        }
    }
}

/// bits[i] = bf16(x[i]), rounded to nearest even.
///
/// # Safety
/// AVX-512F and AVX512-BF16; `bits.len() >= x.len()`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn round(x: &[f32], bits: &mut [u16]) {
    let n = x.len();
    let mut i = 0;
    while i < n {
        let m = (n - i).min(16);
        let mask = if m == 16 { u16::MAX } else { (1u16 << m) - 1 };
        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
        let b = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
        _mm256_mask_storeu_epi16(bits.as_mut_ptr().add(i).cast(), mask, b);
        i += 16;
    }
}

/// acc[h] = sum_t p[h, t] V[rows[t]], with p as bf16 bits [heads, rows.len() rounded
/// up to even] (the padding 0).
///
/// # Safety
/// As `scores`, with `v` for `k`; acc is [heads, 16 * chunks].
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn weighted_sum(chunks: usize, p: &[u16], v: &[u16], rows: &[usize], acc: &mut [f32]) {
    let d = 16 * chunks;
    let heads = acc.len() / d;
    let even = rows.len().div_ceil(2) * 2;
    // Heads per pass over the positions: their accumulators stay in registers.
    let per = if chunks <= 4 { 3 } else { 2 };
    for (h, n) in crate::cpu_attention::head_passes(heads, per) {
        let ph = &p[h * even..(h + n) * even];
        let ah = &mut acc[h * d..(h + n) * d];
        match (chunks, n) {
            (4, 1) => sum_pass::<2, 1>(ph, v, rows, ah),
            (4, 2) => sum_pass::<2, 2>(ph, v, rows, ah),
            (4, _) => sum_pass::<2, 3>(ph, v, rows, ah),
            (_, 1) => sum_pass::<4, 1>(ph, v, rows, ah),
            _ => sum_pass::<4, 2>(ph, v, rows, ah),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn sum_pass<const C2: usize, const H: usize>(
    p: &[u16],
    v: &[u16],
    rows: &[usize],
    acc: &mut [f32],
) {
    let d = 32 * C2;
    let len = rows.len();
    let even = len.div_ceil(2) * 2;
    let vp = v.as_ptr();
    // Per 32 dims two accumulators [lo, hi]: lane 4j + m of lo is dim 8j + m, of hi dim
    // 8j + 4 + m (the lane order of unpacklo/hi_epi16).
    let mut av = [[[_mm512_setzero_ps(); 2]; C2]; H];
    let zero = _mm512_setzero_si512();
    let mut t = 0;
    while t < len {
        prefetch(vp, rows, t + AHEAD, 2 * d);
        prefetch(vp, rows, t + AHEAD + 1, 2 * d);
        let mut w = [_mm512_setzero_ps(); H];
        for (h, x) in w.iter_mut().enumerate() {
            let pair = p.as_ptr().add(h * even + t).cast::<i32>().read_unaligned();
            *x = _mm512_castsi512_ps(_mm512_set1_epi32(pair));
        }
        let (r0, r1) = (rows[t], rows.get(t + 1).copied());
        for c in 0..C2 {
            let a = _mm512_loadu_si512(vp.add(r0 + 32 * c).cast());
            let b = match r1 {
                Some(r1) => _mm512_loadu_si512(vp.add(r1 + 32 * c).cast()),
                None => zero,
            };
            let lo = std::mem::transmute::<__m512i, __m512bh>(_mm512_unpacklo_epi16(a, b));
            let hi = std::mem::transmute::<__m512i, __m512bh>(_mm512_unpackhi_epi16(a, b));
            for (ah, wh) in av.iter_mut().zip(w.iter()) {
                let wh = std::mem::transmute::<__m512, __m512bh>(*wh);
                ah[c][0] = _mm512_dpbf16_ps(ah[c][0], lo, wh);
                ah[c][1] = _mm512_dpbf16_ps(ah[c][1], hi, wh);
            }
        }
        t += 2;
    }
    let mut tmp = [0f32; 16];
    for (h, ah) in av.iter().enumerate() {
        for (c, pair) in ah.iter().enumerate() {
            for (half, x) in pair.iter().enumerate() {
                _mm512_storeu_ps(tmp.as_mut_ptr(), *x);
                for (lane, &val) in tmp.iter().enumerate() {
                    acc[h * d + 32 * c + 8 * (lane / 4) + 4 * half + lane % 4] = val;
                }
            }
        }
    }
}
