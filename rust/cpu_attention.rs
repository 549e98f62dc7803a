//! Paged decode attention on the CPU: one query token per sequence, keys and values read
//! straight from the paged cache.
//!
//! The torch reference gathers every sequence's blocks into a dense copy before its
//! matmuls, so each decode step moves the K/V cache through memory three times; here
//! each work item reads its keys and values once, for all the query heads of each KV
//! head (GQA), with its scores in a small scratch buffer that stays in cache. An item
//! is a whole sequence when there are enough of them to share out (its keys, then its
//! values, are one stream through its blocks), else one KV head of a sequence. Items
//! run on torch's OpenMP threads (`thread_team`).
//!
//! Layouts (contiguous): query and out `[S, Hq, D]`, caches tiled (`kv_layout`), block
//! tables `[S, max_blocks]`, seq_lens `[S]`. Scores, softmax and the weighted sum are
//! computed in f32 whatever the storage type.

use crate::error::CoreError;
use crate::kv_layout::Tiled;
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
) -> Result<Tiled, CoreError> {
    let s = shape;
    if s.num_kv_heads == 0 || !s.num_heads.is_multiple_of(s.num_kv_heads) {
        return Err(invalid(format!(
            "{} query heads are not a multiple of {} KV heads",
            s.num_heads, s.num_kv_heads
        )));
    }
    let layout =
        Tiled::new(s.block_size, s.num_kv_heads, s.head_dim).map_err(|e| invalid(e.to_string()))?;
    let q_len = s.num_seqs * s.num_heads * s.head_dim;
    let cache_len = s.num_blocks * layout.block_len();
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
    Ok(layout)
}

/// KV heads per work item: all of a sequence's when there are at least this many
/// sequences per CPU to share out, else one (so that a few long sequences still use
/// every thread).
const WHOLE_SEQUENCES_PER_CPU: usize = 4;

fn kv_heads_per_item(s: &DecodeShape) -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if s.num_seqs >= WHOLE_SEQUENCES_PER_CPU * cpus {
        s.num_kv_heads
    } else {
        1
    }
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
    let layout = validate(
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
    let n_kv = kv_heads_per_item(&s);
    let items_per_seq = s.num_kv_heads / n_kv;
    let item_len = n_kv * group * s.head_dim;
    let kernel = Kernel::select::<E>(s.head_dim, s.block_size);
    let work: usize = seq_lens.iter().map(|&l| l as usize).sum::<usize>() * s.num_kv_heads;
    // One output chunk per item: the query heads of its KV heads, which are contiguous
    // in `query` and `out` as in the cache.
    let run = |scratch: &mut Scratch, item: usize, out_item: &mut [E]| {
        let (seq, first_kv) = (item / items_per_seq, item % items_per_seq * n_kv);
        let len = seq_lens[seq] as usize;
        let table = &block_tables[seq * s.max_blocks..(seq + 1) * s.max_blocks];
        scratch.blocks.clear();
        scratch.blocks.extend(
            table[..len.div_ceil(s.block_size)]
                .iter()
                .map(|&b| layout.tile(b as usize, first_kv)),
        );
        let geo = Geom {
            layout,
            n_kv,
            group,
            len,
        };
        let q = &query[item * item_len..(item + 1) * item_len];
        attend_item(
            kernel,
            &geo,
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

/// The geometry of one work item; its tiles are in `Scratch::blocks`.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub layout: Tiled,
    /// KV heads in the item (their tiles follow one another in each block).
    pub n_kv: usize,
    /// Query heads per KV head.
    pub group: usize,
    /// Positions attended to.
    pub len: usize,
}

impl Geom {
    /// Row length of the per-head scores: `len` rounded up to even, zero-padded, so that
    /// positions can be taken in pairs.
    pub fn stride(&self) -> usize {
        self.len.div_ceil(2) * 2
    }

    /// Values per (block, KV head) tile.
    pub fn tile(&self) -> usize {
        self.layout.tile_len()
    }

    pub fn heads(&self) -> usize {
        self.n_kv * self.group
    }

    /// Positions of the item in its `b`-th block.
    pub fn in_block(&self, b: usize) -> usize {
        let bs = self.layout.block_size;
        bs.min(self.len - b * bs)
    }
}

#[derive(Default)]
struct Scratch {
    blocks: Vec<usize>, // offset of the item's first tile in each of its blocks
    q: Vec<f32>,        // [heads, D] scaled query in f32
    scores: Vec<f32>,   // [heads, stride]
    acc: Vec<f32>,      // [heads, D], or [heads, 2 D] position-pair partial sums (AVX-512)
    probs: Vec<u16>,    // [heads, stride] bf16 exp(score - max)
    sums: Vec<f32>,     // [heads] the sums of those exps (bf16 kernel)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// bf16 caches on CPUs with AVX512-BF16: dot products straight on bf16 pairs.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

impl Kernel {
    fn select<E: simd::Load16>(head_dim: usize, block_size: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if E::HAS_LOAD16
                && matches!(head_dim, 64 | 128)
                && block_size.is_multiple_of(16)
                && std::arch::is_x86_feature_detected!("avx512f")
            {
                if E::IS_BF16 && std::arch::is_x86_feature_detected!("avx512bf16") {
                    return Kernel::Avx512Bf16;
                }
                return Kernel::Avx512;
            }
        }
        let _ = (head_dim, block_size);
        Kernel::Portable
    }
}

#[allow(clippy::too_many_arguments)]
fn attend_item<E: Elem + simd::Load16>(
    kernel: Kernel,
    geo: &Geom,
    q: &[E],
    key_cache: &[E],
    value_cache: &[E],
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [E],
) {
    let (d, len, stride, heads) = (geo.layout.head_dim, geo.len, geo.stride(), geo.heads());
    let blocks = &scratch.blocks;
    // The f32 kernels take the query scaled and widened; the bf16 one reads it as is.
    let scaled_q = |buf: &mut Vec<f32>| {
        buf.clear();
        buf.extend(q.iter().map(|x| x.to_f32() * scale));
    };
    scratch.scores.clear();
    scratch.scores.resize(heads * stride, 0.0);
    scratch.acc.clear();
    match kernel {
        Kernel::Portable => {
            scratch.acc.resize(heads * d, 0.0);
            scaled_q(&mut scratch.q);
            portable::scores(geo, &scratch.q, key_cache, blocks, &mut scratch.scores);
            for row in scratch.scores.chunks_mut(stride) {
                portable::softmax(&mut row[..len]);
            }
            portable::weighted_sum(geo, &scratch.scores, value_cache, blocks, &mut scratch.acc);
            for (o, &a) in out.iter_mut().zip(&scratch.acc) {
                *o = E::from_f32(a);
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            scratch.acc.resize(heads * 2 * d, 0.0);
            scaled_q(&mut scratch.q);
            // SAFETY: `Kernel::select` checked the CPU's AVX-512F, head_dim 64 or 128 and
            // block_size a multiple of 16; `validate` checked every block id and the
            // cache lengths, so every tile of `blocks` is inside the caches.
            unsafe {
                simd::scores(geo, &scratch.q, key_cache, blocks, &mut scratch.scores);
                for row in scratch.scores.chunks_mut(stride) {
                    simd::softmax(&mut row[..len]);
                }
                simd::weighted_sum(geo, &scratch.scores, value_cache, blocks, &mut scratch.acc);
            }
            // Lanes 2i and 2i + 1 of the accumulators are dim i of even and odd positions.
            for (o, pair) in out.iter_mut().zip(scratch.acc.chunks_exact(2)) {
                *o = E::from_f32(pair[0] + pair[1]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => {
            let (Some(qb), Some(kb), Some(vb)) =
                (E::bits(q), E::bits(key_cache), E::bits(value_cache))
            else {
                unreachable!("Avx512Bf16 is only selected for bf16 elements");
            };
            scratch.acc.resize(heads * d, 0.0);
            scratch.probs.clear();
            scratch.probs.resize(heads * stride, 0);
            scratch.sums.clear();
            // SAFETY: as for `Avx512`, plus the CPU has AVX512-BF16 (`Kernel::select`).
            unsafe {
                simd::bf16::scores(geo, qb, kb, blocks, scale, &mut scratch.scores);
                for (row, bits) in scratch
                    .scores
                    .chunks(stride)
                    .zip(scratch.probs.chunks_mut(stride))
                {
                    scratch.sums.push(simd::bf16::exp_round(&row[..len], bits));
                }
                simd::bf16::weighted_sum(geo, &scratch.probs, vb, blocks, &mut scratch.acc);
            }
            for ((o, a), &z) in out
                .chunks_mut(d)
                .zip(scratch.acc.chunks(d))
                .zip(&scratch.sums)
            {
                let inv = 1.0 / z;
                for (o, &a) in o.iter_mut().zip(a) {
                    *o = E::from_f32(a * inv);
                }
            }
        }
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
    use super::{Elem, Geom};

    pub fn scores<E: Elem>(geo: &Geom, q: &[f32], k: &[E], blocks: &[usize], out: &mut [f32]) {
        let d = geo.layout.head_dim;
        for (b, &first) in blocks.iter().enumerate() {
            for kv in 0..geo.n_kv {
                let tile = &k[first + kv * geo.tile()..][..geo.tile()];
                for h in kv * geo.group..(kv + 1) * geo.group {
                    let qh = &q[h * d..(h + 1) * d];
                    for o in 0..geo.in_block(b) {
                        let dot = (0..d)
                            .map(|i| qh[i] * tile[geo.layout.key(o, i)].to_f32())
                            .sum();
                        out[h * geo.stride() + b * geo.layout.block_size + o] = dot;
                    }
                }
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

    pub fn weighted_sum<E: Elem>(
        geo: &Geom,
        p: &[f32],
        v: &[E],
        blocks: &[usize],
        acc: &mut [f32],
    ) {
        let d = geo.layout.head_dim;
        for (b, &first) in blocks.iter().enumerate() {
            for kv in 0..geo.n_kv {
                let tile = &v[first + kv * geo.tile()..][..geo.tile()];
                for h in kv * geo.group..(kv + 1) * geo.group {
                    let acc_h = &mut acc[h * d..(h + 1) * d];
                    for o in 0..geo.in_block(b) {
                        let w = p[h * geo.stride() + b * geo.layout.block_size + o];
                        for (i, a) in acc_h.iter_mut().enumerate() {
                            *a += w * tile[geo.layout.value(o, i)].to_f32();
                        }
                    }
                }
            }
        }
    }
}

/// AVX-512 kernels for head_dim 64 and 128 and block sizes that are multiples of 16.
pub mod simd {
    use super::{Bf16, Elem};

    /// Loading 16 elements as 16 f32 lanes (x86_64 only; `HAS_LOAD16` says whether the
    /// SIMD kernels exist for this element type).
    pub trait Load16: Elem {
        const HAS_LOAD16: bool;
        const IS_BF16: bool;
        /// The raw bf16 bits of a bf16 slice (None for other types).
        fn bits(x: &[Self]) -> Option<&[u16]>;
        /// Mutable twin of `bits`.
        fn bits_mut(x: &mut [Self]) -> Option<&mut [u16]>;
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
        fn bits_mut(_: &mut [Self]) -> Option<&mut [u16]> {
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
        fn bits_mut(x: &mut [Self]) -> Option<&mut [u16]> {
            // SAFETY: as in `bits`; the borrow of `x` moves into the result.
            Some(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<u16>(), x.len()) })
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
    pub use x86::{exp, for_each_tile, scores, softmax, weighted_sum, TileAt, SCORE_HEADS};

    #[cfg(target_arch = "x86_64")]
    pub use super::simd_bf16 as bf16;

    #[cfg(target_arch = "x86_64")]
    use super::simd_x86 as x86;
}

#[cfg(target_arch = "x86_64")]
#[path = "cpu_attention_x86.rs"]
mod simd_x86;

#[cfg(target_arch = "x86_64")]
#[path = "cpu_attention_bf16.rs"]
pub mod simd_bf16;

#[cfg(test)]
#[path = "cpu_attention_tests.rs"]
mod tests;
