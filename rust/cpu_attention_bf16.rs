//! AVX512-BF16 kernels on tiled bf16 caches (Zen 4, Sapphire Rapids and later).
//!
//! Scores: one vector of a key tile is a dim pair of 16 positions, and `vdpbf16ps` with
//! the query's pair broadcast adds that pair's products to 16 scores at once (f32
//! accumulation, no widening of K, no reduction across lanes). Weighted sum: one vector
//! of a value tile is 16 dims of a position pair, multiplied by the broadcast pair of
//! their weights exp(score - max), rounded to bf16 for it as the torch bf16 path rounds
//! its softmax output; the sum divides the result once at the end.

use super::simd::{exp, for_each_tile, TileAt, SCORE_HEADS};
use crate::cpu_attention::{head_passes, Geom};
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bh(x: __m512i) -> __m512bh {
    std::mem::transmute::<__m512i, __m512bh>(x)
}

/// A pair of bf16 values broadcast to every 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pair(p: *const u16) -> __m512i {
    _mm512_set1_epi32(p.cast::<i32>().read_unaligned())
}

/// out[h, t] = scale * q[h] . K_t for the item's heads; q is [heads, D] bf16 bits.
///
/// # Safety
/// AVX-512F and AVX512-BF16; as `simd::scores` otherwise.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn scores(
    geo: &Geom,
    q: &[u16],
    k: &[u16],
    blocks: &[usize],
    scale: f32,
    out: &mut [f32],
) {
    let (d, bs) = (geo.layout.head_dim, geo.layout.block_size);
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    let sc = _mm512_set1_ps(scale);
    for_each_tile(k.as_ptr(), geo, blocks, |b, kv, tile| {
        for u in (0..geo.in_block(b)).step_by(16) {
            let kt = k.as_ptr().add(tile + 2 * u);
            for (h0, nh) in head_passes(geo.group, SCORE_HEADS) {
                let h = kv * geo.group + h0;
                let at = TileAt {
                    q: qp.add(h * d),
                    out: op.add(h * geo.stride() + b * bs + u),
                    stride: geo.stride(),
                    bs,
                    n: geo.in_block(b) - u,
                };
                match (d, nh) {
                    (64, 1) => score_tile::<32, 1>(kt, &at, sc),
                    (64, 2) => score_tile::<32, 2>(kt, &at, sc),
                    (64, 3) => score_tile::<32, 3>(kt, &at, sc),
                    (64, _) => score_tile::<32, 4>(kt, &at, sc),
                    (_, 1) => score_tile::<64, 1>(kt, &at, sc),
                    (_, 2) => score_tile::<64, 2>(kt, &at, sc),
                    (_, 3) => score_tile::<64, 3>(kt, &at, sc),
                    _ => score_tile::<64, 4>(kt, &at, sc),
                }
            }
        }
    });
}

/// Scores of 16 positions (P dim pairs) for H heads. Two accumulators per head, so that
/// each chain of dependent `vdpbf16ps` is half as long.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn score_tile<const P: usize, const H: usize>(k: *const u16, at: &TileAt<u16>, sc: __m512) {
    let mut acc = [[_mm512_setzero_ps(); 2]; H];
    for i in 0..P {
        let kz = bh(_mm512_loadu_si512(k.add(2 * at.bs * i).cast()));
        for (h, a) in acc.iter_mut().enumerate() {
            let qz = bh(pair(at.q.add(h * 2 * P + 2 * i)));
            a[i & 1] = _mm512_dpbf16_ps(a[i & 1], kz, qz);
        }
    }
    for (h, a) in acc.iter().enumerate() {
        let s = _mm512_mul_ps(_mm512_add_ps(a[0], a[1]), sc);
        at.store(h, s);
    }
}

/// The softmax of one row of scores without its division: bits[i] = bf16(exp(x[i] -
/// max x)), rounded to nearest even, and the sum of the exps (before rounding) returned,
/// for the weighted sum to be divided by once per output instead of once per position.
/// One pass after the max, no masked memory ops but for a short tail (they are slow on
/// AMD).
///
/// # Safety
/// AVX-512F and AVX512-BF16; `bits.len() >= x.len() > 0`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn exp_round(x: &[f32], bits: &mut [u16]) -> f32 {
    let n = x.len();
    let full = n / 16 * 16;
    let tail = ((1u32 << (n - full)) - 1) as u16;
    let (p, b) = (x.as_ptr(), bits.as_mut_ptr());
    let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..full).step_by(16) {
        mv = _mm512_max_ps(mv, _mm512_loadu_ps(p.add(i)));
    }
    if tail != 0 {
        mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(mv, tail, p.add(full)));
    }
    let m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    let rounded = |e: __m512| std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(e));
    let mut sv = _mm512_setzero_ps();
    for i in (0..full).step_by(16) {
        let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), m));
        sv = _mm512_add_ps(sv, e);
        _mm256_storeu_si256(b.add(i).cast(), rounded(e));
    }
    if tail != 0 {
        let v = _mm512_maskz_loadu_ps(tail, p.add(full));
        let e = _mm512_maskz_mov_ps(tail, exp(_mm512_sub_ps(v, m)));
        sv = _mm512_add_ps(sv, e);
        _mm256_mask_storeu_epi16(b.add(full).cast(), tail, rounded(e));
    }
    _mm512_reduce_add_ps(sv)
}

/// acc[h] += sum_t p[h, t] V_t for the item's heads; p is bf16 bits [heads, stride],
/// zero-padded; acc is [heads, D].
///
/// # Safety
/// As `scores`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn weighted_sum(geo: &Geom, p: &[u16], v: &[u16], blocks: &[usize], acc: &mut [f32]) {
    let (d, bs) = (geo.layout.head_dim, geo.layout.block_size);
    let (pp, ap) = (p.as_ptr(), acc.as_mut_ptr());
    // Heads per pass: their accumulators (D / 16 vectors each) in 16 registers.
    let per = if d == 64 { 4 } else { 2 };
    for_each_tile(v.as_ptr(), geo, blocks, |b, kv, tile| {
        let vt = v.as_ptr().add(tile);
        for (h0, nh) in head_passes(geo.group, per) {
            let h = kv * geo.group + h0;
            let at = TileAt {
                q: pp.add(h * geo.stride() + b * bs),
                out: ap.add(h * d),
                stride: geo.stride(),
                bs,
                n: geo.in_block(b),
            };
            match (d, nh) {
                (64, 1) => sum_tile::<4, 1>(vt, &at),
                (64, 2) => sum_tile::<4, 2>(vt, &at),
                (64, 3) => sum_tile::<4, 3>(vt, &at),
                (64, _) => sum_tile::<4, 4>(vt, &at),
                (_, 1) => sum_tile::<8, 1>(vt, &at),
                _ => sum_tile::<8, 2>(vt, &at),
            }
        }
    });
}

/// One block's positions for H heads: C vectors (16 dims of a position pair each) per
/// pair, accumulated into `at.out` ([H, 16 C]).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn sum_tile<const C: usize, const H: usize>(v: *const u16, at: &TileAt<u16>) {
    let d = 16 * C;
    let mut av = [[_mm512_setzero_ps(); C]; H];
    for (h, a) in av.iter_mut().enumerate() {
        for (c, x) in a.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(at.out.add(h * d + 16 * c));
        }
    }
    for j in 0..at.n.div_ceil(2) {
        let mut w = [_mm512_setzero_si512(); H];
        for (h, x) in w.iter_mut().enumerate() {
            *x = pair(at.q.add(h * at.stride + 2 * j));
        }
        // An odd last position: its partner slot is not written yet (and may hold
        // anything, NaN included), so it is zeroed, not just weighted by 0. (Only
        // there: masked loads everywhere cost a quarter of the kernel's time.)
        let odd_tail = 2 * j + 1 == at.n;
        for c in 0..C {
            let src = v.add(j * 2 * d + 32 * c);
            let x = if odd_tail {
                bh(_mm512_maskz_loadu_epi16(0x5555_5555, src.cast()))
            } else {
                bh(_mm512_loadu_si512(src.cast()))
            };
            for (a, wh) in av.iter_mut().zip(w.iter()) {
                a[c] = _mm512_dpbf16_ps(a[c], x, bh(*wh));
            }
        }
    }
    for (h, a) in av.iter().enumerate() {
        for (c, x) in a.iter().enumerate() {
            _mm512_storeu_ps(at.out.add(h * d + 16 * c), *x);
        }
    }
}
