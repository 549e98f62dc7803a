//! AVX-512F kernels on tiled caches (`kv_layout`), f32 arithmetic for any element
//! type that widens to f32 (`Load16`): the f32 caches, and bf16 ones on CPUs without
//! AVX512-BF16. Also the softmax and exp that the bf16 kernels share, and the walk over
//! an item's tiles.
//!
//! In f32 one vector holds 8 positions' dim pairs (keys) or 8 dims of a position pair
//! (values): lane 2i + j is the j-th of pair i. The accumulators keep that order, and
//! the pairs are added once at the end (`interleaved_sum` for scores; the caller for the
//! output).

use super::simd::Load16;
use crate::cpu_attention::{head_passes, Geom};
use crate::kv_layout::prefetch;
use std::arch::x86_64::*;

/// Blocks ahead that `for_each_tile` prefetches where the stream jumps.
const AHEAD: usize = 2;

/// Call `f(b, kv, tile offset)` for each of the item's blocks b and KV heads kv, asking
/// for the same tile `AHEAD` blocks on where that block does not directly follow the
/// one before it: a sequence on consecutive blocks is one stream that the hardware
/// prefetcher follows, and software prefetches there only got in its way (measured: the
/// kernel ran 25% slower with them). A tile at a time, not a block: a burst of prefetches
/// for a whole block held up the loads behind it.
///
/// # Safety
/// AVX-512F; every `blocks[b] + geo.n_kv * geo.tile()` elements of type `E` are inside
/// the cache that `base` points at.
#[inline(always)]
pub unsafe fn for_each_tile<E>(
    base: *const E,
    geo: &Geom,
    blocks: &[usize],
    mut f: impl FnMut(usize, usize, usize),
) {
    let span = geo.n_kv * geo.tile();
    let jumps = |j: usize| j == 0 || blocks[j - 1] + span != blocks[j];
    let ask = |at: usize| prefetch(base.add(at), geo.tile());
    for (j, &at) in blocks.iter().enumerate().take(AHEAD) {
        if jumps(j) {
            for kv in 0..geo.n_kv {
                ask(at + kv * geo.tile());
            }
        }
    }
    for (b, &at) in blocks.iter().enumerate() {
        let ahead = b + AHEAD;
        let prefetch = ahead < blocks.len() && jumps(ahead);
        for kv in 0..geo.n_kv {
            if prefetch {
                ask(blocks[ahead] + kv * geo.tile());
            }
            f(b, kv, at + kv * geo.tile());
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pair_f32(p: *const f32) -> __m512 {
    _mm512_castpd_ps(_mm512_set1_pd(p.cast::<f64>().read_unaligned()))
}

/// Lane t of the result: lanes 2t and 2t + 1 of `(a, b)` (a's 16 lanes first) added.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn interleaved_sum(a: __m512, b: __m512) -> __m512 {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    _mm512_add_ps(
        _mm512_permutex2var_ps(a, even, b),
        _mm512_permutex2var_ps(a, odd, b),
    )
}

/// Heads per pass of the score kernels (two accumulators each; larger groups take
/// several passes over a tile, which is in L1 by then).
pub const SCORE_HEADS: usize = 4;

/// out[h, t] = q[h] . K_t for the item's heads; q [heads, D] f32, already scaled.
///
/// # Safety
/// As `for_each_tile`, with AVX-512F; head_dim 64 or 128, block_size a multiple of 16;
/// out is [heads, geo.stride()].
#[target_feature(enable = "avx512f")]
pub unsafe fn scores<E: Load16>(geo: &Geom, q: &[f32], k: &[E], blocks: &[usize], out: &mut [f32]) {
    let (d, bs) = (geo.layout.head_dim, geo.layout.block_size);
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    for_each_tile(k.as_ptr(), geo, blocks, |b, kv, tile| {
        for u in (0..geo.in_block(b)).step_by(16) {
            let n = (geo.in_block(b) - u).min(16);
            let kt = k.as_ptr().add(tile + 2 * u);
            for (h0, nh) in head_passes(geo.group, SCORE_HEADS) {
                let h = kv * geo.group + h0;
                let at = TileAt {
                    q: qp.add(h * d),
                    out: op.add(h * geo.stride() + b * bs + u),
                    stride: geo.stride(),
                    bs,
                    n,
                };
                match (d, nh) {
                    (64, 1) => score_tile::<E, 32, 1>(kt, &at),
                    (64, 2) => score_tile::<E, 32, 2>(kt, &at),
                    (64, 3) => score_tile::<E, 32, 3>(kt, &at),
                    (64, _) => score_tile::<E, 32, 4>(kt, &at),
                    (_, 1) => score_tile::<E, 64, 1>(kt, &at),
                    (_, 2) => score_tile::<E, 64, 2>(kt, &at),
                    (_, 3) => score_tile::<E, 64, 3>(kt, &at),
                    _ => score_tile::<E, 64, 4>(kt, &at),
                }
            }
        }
    });
}

/// Where one pass over 16 positions of a tile reads its query heads and writes.
pub struct TileAt<Q> {
    pub q: *const Q,
    pub out: *mut f32,
    /// Row stride of `out` (and of the probabilities, for the sums).
    pub stride: usize,
    pub bs: usize,
    /// Positions of the 16 that exist.
    pub n: usize,
}

impl<Q> TileAt<Q> {
    /// Head h's scores of the 16 positions, those that exist.
    ///
    /// # Safety
    /// AVX-512F; `out` has room for `n` scores at row h.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store(&self, h: usize, scores: __m512) {
        let p = self.out.add(h * self.stride);
        // Masked only when it must be: AMD's masked memory ops are slow.
        if self.n >= 16 {
            _mm512_storeu_ps(p, scores);
        } else {
            _mm512_mask_storeu_ps(p, (1u16 << self.n) - 1, scores);
        }
    }
}

/// Scores of 16 positions (P dim pairs) for H heads.
#[target_feature(enable = "avx512f")]
unsafe fn score_tile<E: Load16, const P: usize, const H: usize>(k: *const E, at: &TileAt<f32>) {
    let mut acc = [[_mm512_setzero_ps(); 2]; H];
    for i in 0..P {
        let k0 = E::load16(k.add(2 * at.bs * i));
        let k1 = E::load16(k.add(2 * at.bs * i + 16));
        for (h, a) in acc.iter_mut().enumerate() {
            let qp = pair_f32(at.q.add(h * 2 * P + 2 * i));
            a[0] = _mm512_fmadd_ps(k0, qp, a[0]);
            a[1] = _mm512_fmadd_ps(k1, qp, a[1]);
        }
    }
    for (h, a) in acc.iter().enumerate() {
        at.store(h, interleaved_sum(a[0], a[1]));
    }
}

/// In-place softmax of one row, with a vectorised exp.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    let full = n / 16 * 16;
    let tail = (1u32 << (n - full)) as u16 - 1;
    let p = x.as_mut_ptr();
    let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..full).step_by(16) {
        mv = _mm512_max_ps(mv, _mm512_loadu_ps(p.add(i)));
    }
    if tail != 0 {
        let v = _mm512_mask_loadu_ps(mv, tail, p.add(full));
        mv = _mm512_max_ps(mv, v);
    }
    let m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    let mut sv = _mm512_setzero_ps();
    for i in (0..full).step_by(16) {
        let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), m));
        _mm512_storeu_ps(p.add(i), e);
        sv = _mm512_add_ps(sv, e);
    }
    if tail != 0 {
        let v = _mm512_maskz_loadu_ps(tail, p.add(full));
        let e = _mm512_maskz_mov_ps(tail, exp(_mm512_sub_ps(v, m)));
        _mm512_mask_storeu_ps(p.add(full), tail, e);
        sv = _mm512_add_ps(sv, e);
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sv));
    for i in (0..full).step_by(16) {
        _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
    }
    if tail != 0 {
        let v = _mm512_maskz_loadu_ps(tail, p.add(full));
        _mm512_mask_storeu_ps(p.add(full), tail, _mm512_mul_ps(v, inv));
    }
}

/// exp(x): Cody-Waite range reduction to r in [-ln2/2, ln2/2], a degree-6
/// polynomial (Cephes expf, about 1 ulp), and the power of two applied by
/// `scalef` (underflow goes to 0, overflow to +inf).
///
/// # Safety
/// AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn exp(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n =
        _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let y = _mm512_fmadd_ps(y, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    _mm512_scalef_ps(y, n)
}

/// Heads per pass of `weighted_sum`: their accumulators (D / 8 vectors each) in 24
/// of the 32 registers.
const fn sum_heads(d: usize) -> usize {
    if d == 64 {
        3
    } else {
        1
    }
}

/// acc[h] += sum_t p[h, t] V_t for the item's heads, with acc [heads, 2 D] in the lane
/// order of the value tiles (lane 2i + j: dim i of the even (j = 0) or odd position).
///
/// # Safety
/// As `scores`; p is [heads, geo.stride()], zero-padded.
#[target_feature(enable = "avx512f")]
pub unsafe fn weighted_sum<E: Load16>(
    geo: &Geom,
    p: &[f32],
    v: &[E],
    blocks: &[usize],
    acc: &mut [f32],
) {
    let (d, bs) = (geo.layout.head_dim, geo.layout.block_size);
    let (pp, ap) = (p.as_ptr(), acc.as_mut_ptr());
    for_each_tile(v.as_ptr(), geo, blocks, |b, kv, tile| {
        let vt = v.as_ptr().add(tile);
        for (h0, nh) in head_passes(geo.group, sum_heads(d)) {
            let h = kv * geo.group + h0;
            let at = TileAt {
                q: pp.add(h * geo.stride() + b * bs),
                out: ap.add(h * 2 * d),
                stride: geo.stride(),
                bs,
                n: geo.in_block(b),
            };
            match (d, nh) {
                (64, 1) => sum_tile::<E, 8, 1>(vt, &at),
                (64, 2) => sum_tile::<E, 8, 2>(vt, &at),
                (64, _) => sum_tile::<E, 8, 3>(vt, &at),
                _ => sum_tile::<E, 16, 1>(vt, &at),
            }
        }
    });
}

/// One block's positions for H heads: C vectors (8 dims of two positions each) per
/// position pair, accumulated into `at.out` ([H, 16 C]).
#[target_feature(enable = "avx512f")]
unsafe fn sum_tile<E: Load16, const C: usize, const H: usize>(v: *const E, at: &TileAt<f32>) {
    let row = 16 * C; // values per position pair: 2 D
    let mut av = [[_mm512_setzero_ps(); C]; H];
    for (h, a) in av.iter_mut().enumerate() {
        for (c, x) in a.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(at.out.add(h * row + 16 * c));
        }
    }
    for j in 0..at.n.div_ceil(2) {
        let mut w = [_mm512_setzero_ps(); H];
        for (h, x) in w.iter_mut().enumerate() {
            *x = pair_f32(at.q.add(h * at.stride + 2 * j));
        }
        // An odd last position: its partner slot is not written yet (and may hold
        // anything, NaN included), so its lanes are zeroed, not just weighted by 0.
        let keep = if 2 * j + 1 == at.n { 0x5555 } else { 0xffff };
        for c in 0..C {
            let x = _mm512_maskz_mov_ps(keep, E::load16(v.add(j * row + 16 * c)));
            for (a, wh) in av.iter_mut().zip(w.iter()) {
                a[c] = _mm512_fmadd_ps(x, *wh, a[c]);
            }
        }
    }
    for (h, a) in av.iter().enumerate() {
        for (c, x) in a.iter().enumerate() {
            _mm512_storeu_ps(at.out.add(h * row + 16 * c), *x);
        }
    }
}
