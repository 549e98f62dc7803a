//! Paged decode attention on the CPU: one query token per sequence, keys and values read
//! straight from the paged cache.
//!
//! The torch reference gathers every sequence's blocks into a dense copy before its
//! matmuls, so each decode step moves the K/V cache through memory three times; here
//! each (sequence, KV head) pair reads its keys and values once, for all the query
//! heads of its group (GQA), with the scores of the pair in a small scratch buffer that
//! stays in cache. Work is split over (sequence, KV head) pairs on torch's OpenMP
//! threads (`thread_team`).
//!
//! Layouts (row-major, contiguous): query and out `[S, Hq, D]`, caches
//! `[num_blocks, block_size, Hkv, D]`, block tables `[S, max_blocks]`, seq_lens `[S]`.
//! Scores, softmax and the weighted sum are computed in f32 whatever the storage type.

use crate::error::CoreError;
use crate::thread_team;

/// A cache/query element: f32, or bf16 kept as its bit pattern.
pub trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

/// bfloat16 as its bits (numpy has no bf16; Python hands the tensor over as uint16).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Elem for Bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        // Round to nearest, ties to even, as torch's `.to(torch.bfloat16)`; NaN stays a
        // quiet NaN. Branch-free, so that loops over it vectorise.
        let bits = x.to_bits();
        let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
        Bf16(if x.is_nan() { 0x7fc0 } else { rounded })
    }
}

/// View a `u16` buffer that holds bfloat16 values as `Bf16`s.
pub fn as_bf16(x: &[u16]) -> &[Bf16] {
    // SAFETY: `Bf16` is `repr(transparent)` over `u16`: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<Bf16>(), x.len()) }
}

/// Mutable twin of [`as_bf16`].
pub fn as_bf16_mut(x: &mut [u16]) -> &mut [Bf16] {
    // SAFETY: as in `as_bf16`; the borrow of `x` is moved into the result.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<Bf16>(), x.len()) }
}

/// The shapes of one call.
#[derive(Clone, Copy, Debug)]
pub struct DecodeShape {
    pub num_seqs: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_blocks: usize,
}

/// Below this many (token, KV head) pairs in the whole call, waking a second thread costs
/// more than it saves (a single stream at a short context).
const PARALLEL_MIN_WORK: usize = 8192;

fn invalid(msg: String) -> CoreError {
    CoreError::InvalidRequest(format!("paged decode attention: {msg}"))
}

/// Check every size and every block id that the call will touch, so that the compute
/// (which indexes with offsets derived from them) cannot go out of bounds.
fn validate<E>(
    shape: &DecodeShape,
    query: &[E],
    key_cache: &[E],
    value_cache: &[E],
    block_tables: &[i32],
    seq_lens: &[i32],
    out: &[E],
) -> Result<(), CoreError> {
    let s = shape;
    if s.num_kv_heads == 0 || !s.num_heads.is_multiple_of(s.num_kv_heads) {
        return Err(invalid(format!(
            "{} query heads are not a multiple of {} KV heads",
            s.num_heads, s.num_kv_heads
        )));
    }
    if s.head_dim == 0 || s.block_size == 0 {
        return Err(invalid("head_dim and block_size must be positive".into()));
    }
    let q_len = s.num_seqs * s.num_heads * s.head_dim;
    let cache_len = s.num_blocks * s.block_size * s.num_kv_heads * s.head_dim;
    if query.len() != q_len || out.len() != q_len {
        return Err(invalid(format!(
            "query/out hold {}/{} values, expected {q_len}",
            query.len(),
            out.len()
        )));
    }
    if key_cache.len() != cache_len || value_cache.len() != cache_len {
        return Err(invalid("key/value caches do not match their shape".into()));
    }
    if seq_lens.len() != s.num_seqs || block_tables.len() != s.num_seqs * s.max_blocks {
        return Err(invalid(
            "block_tables / seq_lens do not match num_seqs".into(),
        ));
    }
    for (i, &len) in seq_lens.iter().enumerate() {
        let len = usize::try_from(len).unwrap_or(0);
        if len == 0 || len > s.max_blocks * s.block_size {
            return Err(invalid(format!(
                "seq_lens[{i}] = {} is not in [1, {}]",
                seq_lens[i],
                s.max_blocks * s.block_size
            )));
        }
        let used = len.div_ceil(s.block_size);
        let row = &block_tables[i * s.max_blocks..i * s.max_blocks + used];
        if let Some(&b) = row.iter().find(|&&b| b < 0 || b as usize >= s.num_blocks) {
            return Err(invalid(format!(
                "block id {b} of sequence {i} is outside the cache of {} blocks",
                s.num_blocks
            )));
        }
    }
    Ok(())
}

/// `out[s, h] = softmax(scale * q[s, h] . K[s]^T) V[s]` over the first `seq_lens[s]`
/// positions of sequence `s`'s blocks, for every sequence and query head.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_attention<E: Elem + simd::Load16>(
    shape: DecodeShape,
    query: &[E],
    key_cache: &[E],
    value_cache: &[E],
    block_tables: &[i32],
    seq_lens: &[i32],
    scale: f32,
    out: &mut [E],
) -> Result<(), CoreError> {
    validate(
        &shape,
        query,
        key_cache,
        value_cache,
        block_tables,
        seq_lens,
        out,
    )?;
    let s = shape;
    let group = s.num_heads / s.num_kv_heads;
    let item_len = group * s.head_dim;
    let kernel = Kernel::select::<E>(s.head_dim);
    let work: usize = seq_lens.iter().map(|&l| l as usize).sum::<usize>() * s.num_kv_heads;
    // One output chunk per (sequence, KV head): the group's query heads.
    let run = |scratch: &mut Scratch, item: usize, out_item: &mut [E]| {
        let (seq, kvh) = (item / s.num_kv_heads, item % s.num_kv_heads);
        let q = &query[item * item_len..(item + 1) * item_len];
        let len = seq_lens[seq] as usize;
        let table = &block_tables[seq * s.max_blocks..(seq + 1) * s.max_blocks];
        scratch.rows.clear();
        // Block by block: no division per position.
        for (b, &block) in table[..len.div_ceil(s.block_size)].iter().enumerate() {
            let first = block as usize * s.block_size;
            let in_block = s.block_size.min(len - b * s.block_size);
            scratch.rows.extend(
                (first..first + in_block).map(|slot| (slot * s.num_kv_heads + kvh) * s.head_dim),
            );
        }
        attend_item(
            kernel,
            &s,
            group,
            q,
            key_cache,
            value_cache,
            scale,
            scratch,
            out_item,
        );
    };
    thread_team::for_each_chunk(out, item_len, work >= PARALLEL_MIN_WORK, run);
    Ok(())
}

#[derive(Default)]
struct Scratch {
    rows: Vec<usize>, // element offset of each position's K/V row (this KV head)
    q: Vec<f32>,      // [group, D] scaled query in f32
    scores: Vec<f32>, // [group, len]
    acc: Vec<f32>,    // [group, D]
    probs: Vec<u16>,  // [group, len rounded up to even] bf16 probabilities
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512 {
        chunks: usize,
    },
    /// bf16 caches on CPUs with AVX512-BF16: dot products straight on bf16 pairs.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16 {
        chunks: usize,
    },
}

impl Kernel {
    fn select<E: simd::Load16>(head_dim: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if E::HAS_LOAD16
                && matches!(head_dim, 64 | 128)
                && std::arch::is_x86_feature_detected!("avx512f")
            {
                let chunks = head_dim / 16;
                if E::IS_BF16 && std::arch::is_x86_feature_detected!("avx512bf16") {
                    return Kernel::Avx512Bf16 { chunks };
                }
                return Kernel::Avx512 { chunks };
            }
        }
        let _ = head_dim;
        Kernel::Portable
    }
}

#[allow(clippy::too_many_arguments)]
fn attend_item<E: Elem + simd::Load16>(
    kernel: Kernel,
    s: &DecodeShape,
    group: usize,
    q: &[E],
    key_cache: &[E],
    value_cache: &[E],
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [E],
) {
    let d = s.head_dim;
    let len = scratch.rows.len();
    // The f32 kernels take the query scaled and widened; the bf16 one reads it as is.
    let scaled_q = |buf: &mut Vec<f32>| {
        buf.clear();
        buf.extend(q.iter().map(|x| x.to_f32() * scale));
    };
    scratch.scores.clear();
    scratch.scores.resize(group * len, 0.0);
    scratch.acc.clear();
    scratch.acc.resize(group * d, 0.0);
    match kernel {
        Kernel::Portable => {
            scaled_q(&mut scratch.q);
            portable::scores(&scratch.q, key_cache, &scratch.rows, d, &mut scratch.scores);
            for row in scratch.scores.chunks_mut(len) {
                portable::softmax(row);
            }
            portable::weighted_sum(
                &scratch.scores,
                value_cache,
                &scratch.rows,
                d,
                &mut scratch.acc,
            );
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 { chunks } => {
            scaled_q(&mut scratch.q);
            // SAFETY: `Kernel::select` checked that the CPU has AVX-512F and that
            // head_dim is 16 * chunks; `validate` checked every offset in `rows` plus
            // head_dim against the cache lengths.
            unsafe {
                simd::scores(
                    chunks,
                    &scratch.q,
                    key_cache,
                    &scratch.rows,
                    &mut scratch.scores,
                );
                for row in scratch.scores.chunks_mut(len) {
                    simd::softmax(row);
                }
                simd::weighted_sum(
                    chunks,
                    &scratch.scores,
                    value_cache,
                    &scratch.rows,
                    &mut scratch.acc,
                );
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 { chunks } => {
            let (Some(qb), Some(kb), Some(vb)) =
                (E::bits(q), E::bits(key_cache), E::bits(value_cache))
            else {
                unreachable!("Avx512Bf16 is only selected for bf16 elements");
            };
            let even = len.div_ceil(2) * 2;
            scratch.probs.clear();
            scratch.probs.resize(group * even, 0);
            // SAFETY: as for `Avx512`, plus the CPU has AVX512-BF16 (`Kernel::select`).
            unsafe {
                simd::bf16::scores(chunks, qb, kb, &scratch.rows, scale, &mut scratch.scores);
                for (row, bits) in scratch
                    .scores
                    .chunks_mut(len)
                    .zip(scratch.probs.chunks_mut(even))
                {
                    simd::softmax(row);
                    simd::bf16::round(row, bits);
                }
                simd::bf16::weighted_sum(
                    chunks,
                    &scratch.probs,
                    vb,
                    &scratch.rows,
                    &mut scratch.acc,
                );
            }
        }
    }
    for (o, &a) in out.iter_mut().zip(scratch.acc.iter()) {
        *o = E::from_f32(a);
    }
}

/// The SIMD kernels' passes over a group's heads: (first head, heads in the pass), at
/// most `per` heads each, so that a pass's accumulators stay in registers.
pub(crate) fn head_passes(heads: usize, per: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..heads)
        .step_by(per.max(1))
        .map(move |h| (h, per.min(heads - h)))
}

/// Plain loops: any head size, any CPU; also the reference the SIMD path is tested against.
mod portable {
    use super::Elem;

    pub fn scores<E: Elem>(q: &[f32], k: &[E], rows: &[usize], d: usize, out: &mut [f32]) {
        let len = rows.len();
        for (h, qh) in q.chunks(d).enumerate() {
            for (t, &row) in rows.iter().enumerate() {
                let kr = &k[row..row + d];
                out[h * len + t] = qh.iter().zip(kr).map(|(a, b)| a * b.to_f32()).sum();
            }
        }
    }

    pub fn softmax(x: &mut [f32]) {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in x.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }

    pub fn weighted_sum<E: Elem>(p: &[f32], v: &[E], rows: &[usize], d: usize, acc: &mut [f32]) {
        let len = rows.len();
        for (h, acc_h) in acc.chunks_mut(d).enumerate() {
            for (t, &row) in rows.iter().enumerate() {
                let w = p[h * len + t];
                for (a, x) in acc_h.iter_mut().zip(&v[row..row + d]) {
                    *a += w * x.to_f32();
                }
            }
        }
    }
}

/// AVX-512F kernels for head_dim 64 and 128 (4 or 8 vectors of 16 lanes per row).
pub mod simd {
    use super::{Bf16, Elem};

    /// Loading 16 elements as 16 f32 lanes (x86_64 only; `HAS_LOAD16` says whether the
    /// SIMD kernels exist for this element type).
    pub trait Load16: Elem {
        const HAS_LOAD16: bool;
        const IS_BF16: bool;
        /// The raw bf16 bits of a bf16 slice (None for other types).
        fn bits(x: &[Self]) -> Option<&[u16]>;
        /// # Safety
        /// `p` must point at 16 readable elements, and the CPU must have AVX-512F.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    }

    impl Load16 for f32 {
        const HAS_LOAD16: bool = true;
        const IS_BF16: bool = false;
        fn bits(_: &[Self]) -> Option<&[u16]> {
            None
        }
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
            std::arch::x86_64::_mm512_loadu_ps(p)
        }
    }

    impl Load16 for Bf16 {
        const HAS_LOAD16: bool = true;
        const IS_BF16: bool = true;
        fn bits(x: &[Self]) -> Option<&[u16]> {
            // SAFETY: `Bf16` is `repr(transparent)` over `u16`.
            Some(unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u16>(), x.len()) })
        }
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
            use std::arch::x86_64::*;
            // bf16 is the top half of an f32: widen the 16-bit lanes and shift them up.
            let raw = _mm256_loadu_si256(p.cast::<__m256i>());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub use x86::{exp, scores, softmax, weighted_sum};

    #[cfg(target_arch = "x86_64")]
    pub use super::simd_bf16 as bf16;

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use super::Load16;
        use std::arch::x86_64::*;

        /// Heads handled per pass over the positions, so that the accumulators of a pass
        /// (heads x chunks vectors) stay in the 32 vector registers.
        const fn heads_per_pass(chunks: usize) -> usize {
            if chunks <= 4 {
                4
            } else {
                2
            }
        }

        /// scores[h, t] = q[h] . K[rows[t]] for every head of the group.
        ///
        /// # Safety
        /// AVX-512F; `rows[t] + 16 * chunks <= k.len()` for every t; q is [heads, 16 * chunks].
        #[target_feature(enable = "avx512f")]
        pub unsafe fn scores<E: Load16>(
            chunks: usize,
            q: &[f32],
            k: &[E],
            rows: &[usize],
            out: &mut [f32],
        ) {
            let d = 16 * chunks;
            let heads = q.len() / d;
            let per = heads_per_pass(chunks);
            for (h, n) in crate::cpu_attention::head_passes(heads, per) {
                let qh = &q[h * d..(h + n) * d];
                let oh = &mut out[h * rows.len()..(h + n) * rows.len()];
                match (chunks, n) {
                    (4, 1) => scores_pass::<E, 4, 1>(qh, k, rows, oh),
                    (4, 2) => scores_pass::<E, 4, 2>(qh, k, rows, oh),
                    (4, 3) => scores_pass::<E, 4, 3>(qh, k, rows, oh),
                    (4, _) => scores_pass::<E, 4, 4>(qh, k, rows, oh),
                    (_, 1) => scores_pass::<E, 8, 1>(qh, k, rows, oh),
                    _ => scores_pass::<E, 8, 2>(qh, k, rows, oh),
                }
            }
        }

        #[target_feature(enable = "avx512f")]
        unsafe fn scores_pass<E: Load16, const C: usize, const H: usize>(
            q: &[f32],
            k: &[E],
            rows: &[usize],
            out: &mut [f32],
        ) {
            let len = rows.len();
            let mut qv = [[_mm512_setzero_ps(); C]; H];
            for (h, qh) in qv.iter_mut().enumerate() {
                for (c, v) in qh.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(q.as_ptr().add(h * 16 * C + 16 * c));
                }
            }
            let kp = k.as_ptr();
            for (t, &row) in rows.iter().enumerate() {
                prefetch_row::<E, C>(kp, rows, t);
                let mut kv = [_mm512_setzero_ps(); C];
                for (c, v) in kv.iter_mut().enumerate() {
                    *v = E::load16(kp.add(row + 16 * c));
                }
                for (h, qh) in qv.iter().enumerate() {
                    let mut acc = _mm512_mul_ps(qh[0], kv[0]);
                    for c in 1..C {
                        acc = _mm512_fmadd_ps(qh[c], kv[c], acc);
                    }
                    *out.get_unchecked_mut(h * len + t) = _mm512_reduce_add_ps(acc);
                }
            }
        }

        /// Positions ahead that `prefetch_row` asks for: rows of one KV head are 2-4 cache
        /// lines spread over blocks in any order, which the hardware prefetcher does not
        /// follow; without this the loops wait on memory at a third of its bandwidth.
        const PREFETCH_AHEAD: usize = 12;

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn prefetch_row<E, const C: usize>(base: *const E, rows: &[usize], t: usize) {
            if let Some(&row) = rows.get(t + PREFETCH_AHEAD) {
                let p = base.add(row).cast::<i8>();
                let bytes = 16 * C * std::mem::size_of::<E>();
                for line in (0..bytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(p.add(line));
                }
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
            let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(
                x,
                _mm512_set1_ps(std::f32::consts::LOG2_E),
            ));
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

        /// acc[h] += sum_t p[h, t] V[rows[t]].
        ///
        /// # Safety
        /// As `scores`, with `v` for `k`; acc is [heads, 16 * chunks].
        #[target_feature(enable = "avx512f")]
        pub unsafe fn weighted_sum<E: Load16>(
            chunks: usize,
            p: &[f32],
            v: &[E],
            rows: &[usize],
            acc: &mut [f32],
        ) {
            let d = 16 * chunks;
            let heads = acc.len() / d;
            let per = heads_per_pass(chunks);
            for (h, n) in crate::cpu_attention::head_passes(heads, per) {
                let ph = &p[h * rows.len()..(h + n) * rows.len()];
                let ah = &mut acc[h * d..(h + n) * d];
                match (chunks, n) {
                    (4, 1) => sum_pass::<E, 4, 1>(ph, v, rows, ah),
                    (4, 2) => sum_pass::<E, 4, 2>(ph, v, rows, ah),
                    (4, 3) => sum_pass::<E, 4, 3>(ph, v, rows, ah),
                    (4, _) => sum_pass::<E, 4, 4>(ph, v, rows, ah),
                    (_, 1) => sum_pass::<E, 8, 1>(ph, v, rows, ah),
                    _ => sum_pass::<E, 8, 2>(ph, v, rows, ah),
                }
            }
        }

        #[target_feature(enable = "avx512f")]
        unsafe fn sum_pass<E: Load16, const C: usize, const H: usize>(
            p: &[f32],
            v: &[E],
            rows: &[usize],
            acc: &mut [f32],
        ) {
            let len = rows.len();
            let mut av = [[_mm512_setzero_ps(); C]; H];
            let vp = v.as_ptr();
            let pp = p.as_ptr();
            for (t, &row) in rows.iter().enumerate() {
                prefetch_row::<E, C>(vp, rows, t);
                let mut vv = [_mm512_setzero_ps(); C];
                for (c, x) in vv.iter_mut().enumerate() {
                    *x = E::load16(vp.add(row + 16 * c));
                }
                for (h, ah) in av.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(*pp.add(h * len + t));
                    for c in 0..C {
                        ah[c] = _mm512_fmadd_ps(w, vv[c], ah[c]);
                    }
                }
            }
            for (h, ah) in av.iter().enumerate() {
                for (c, x) in ah.iter().enumerate() {
                    _mm512_storeu_ps(acc.as_mut_ptr().add(h * 16 * C + 16 * c), *x);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "cpu_attention_bf16.rs"]
pub mod simd_bf16;

#[cfg(test)]
#[path = "cpu_attention_tests.rs"]
mod tests;
