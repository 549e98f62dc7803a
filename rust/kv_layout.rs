//! The CPU backend's KV cache layout: tiles that the decode kernel reads with no
//! reduction across vector lanes.
//!
//! A layer's cache holds `num_blocks` blocks; a block holds one tile per KV head, side by
//! side; a tile holds the `block_size` positions of the block for that head:
//!
//! - keys `[head_dim / 2, block_size, 2]`: for each pair of dims, that pair of every
//!   position. One bf16 vector is the pair of 16 positions, so `vdpbf16ps` with the
//!   query's pair broadcast adds to 16 scores at once.
//! - values `[block_size / 2, head_dim, 2]`: for each pair of positions, every dim's
//!   pair of values. One vector is 16 dims of two positions, so the broadcast pair of
//!   their probabilities adds them into 16 output dims at once.
//!
//! In torch terms the caches are `[num_blocks, kv_heads, head_dim / 2, block_size, 2]`
//! and `[num_blocks, kv_heads, block_size / 2, head_dim, 2]`. A sequence's keys (and
//! values) are one contiguous run per block, and one run in all on consecutive blocks,
//! which the hardware prefetcher streams (the decode attention measured a quarter faster
//! on it than on rows of `[num_blocks, block_size, kv_heads, head_dim]`, when it
//! replaced them).

use crate::error::CoreError;

/// The sizes that place a value in a tiled cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiled {
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Tiled {
    /// Both the block size and the head size must be even (values come in pairs).
    pub fn new(block_size: usize, kv_heads: usize, head_dim: usize) -> Result<Self, CoreError> {
        let even = |n: usize| n > 0 && n.is_multiple_of(2);
        if !even(block_size) || !even(head_dim) || kv_heads == 0 {
            return Err(CoreError::InvalidRequest(format!(
                "tiled KV cache: block_size {block_size} and head_dim {head_dim} must be \
                 even and positive, kv_heads {kv_heads} positive"
            )));
        }
        Ok(Tiled {
            block_size,
            kv_heads,
            head_dim,
        })
    }

    /// Values in one (block, KV head) tile.
    pub fn tile_len(&self) -> usize {
        self.block_size * self.head_dim
    }

    /// Values in one block (all its KV heads).
    pub fn block_len(&self) -> usize {
        self.kv_heads * self.tile_len()
    }

    /// Offset of the tile of (block, KV head) in a cache.
    pub fn tile(&self, block: usize, kv_head: usize) -> usize {
        block * self.block_len() + kv_head * self.tile_len()
    }

    /// Offset of dim `d` of the key at position `t` of a tile, within the tile.
    pub fn key(&self, t: usize, d: usize) -> usize {
        ((d / 2) * self.block_size + t) * 2 + d % 2
    }

    /// Offset of dim `d` of the value at position `t` of a tile, within the tile.
    pub fn value(&self, t: usize, d: usize) -> usize {
        ((t / 2) * self.head_dim + d) * 2 + t % 2
    }
    /// Write each token's key and value (`keys`, `values` [T, kv_heads, head_dim]) into
    /// its slot (block * block_size + position) of the caches.
    pub fn store<E: Copy>(
        &self,
        keys: &[E],
        values: &[E],
        slots: &[i64],
        key_cache: &mut [E],
        value_cache: &mut [E],
    ) -> Result<(), CoreError> {
        let bad = |msg: String| CoreError::InvalidRequest(format!("KV store: {msg}"));
        let (d, row) = (self.head_dim, self.kv_heads * self.head_dim);
        if keys.len() != slots.len() * row || values.len() != keys.len() {
            return Err(bad(format!(
                "{} keys and {} values are not [{} tokens, {}, {d}] each",
                keys.len(),
                values.len(),
                slots.len(),
                self.kv_heads
            )));
        }
        if key_cache.len() != value_cache.len() || !key_cache.len().is_multiple_of(self.block_len())
        {
            return Err(bad(
                "key and value caches must be whole blocks of the tiled layout".into(),
            ));
        }
        let num_slots = key_cache.len() / self.block_len() * self.block_size;
        if let Some(&s) = slots.iter().find(|&&s| s < 0 || s as usize >= num_slots) {
            return Err(bad(format!(
                "slot {s} is outside the cache of {num_slots} slots"
            )));
        }
        let place = |slot: i64| {
            (
                slot as usize / self.block_size,
                slot as usize % self.block_size,
            )
        };
        let (kp, vp) = (key_cache.as_ptr(), value_cache.as_ptr());
        // A token's key spreads over its whole tile (one dim pair per line) and its value
        // over a few lines, which are rarely in cache: ask for the lines of the token a
        // couple ahead, or the stores miss one after another.
        #[cfg(target_arch = "x86_64")]
        let ask = |tok: usize| {
            if let Some(&slot) = slots.get(tok) {
                let (block, pos) = place(slot);
                for kv in 0..self.kv_heads {
                    let tile = self.tile(block, kv);
                    prefetch(kp.wrapping_add(tile), self.tile_len());
                    prefetch(vp.wrapping_add(tile + self.value(pos & !1, 0)), 2 * d);
                }
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let ask = |_: usize| {};
        for tok in 0..PREFETCH_AHEAD {
            ask(tok);
        }
        let tokens = keys.chunks_exact(row).zip(values.chunks_exact(row));
        for (tok, (&slot, (k_row, v_row))) in slots.iter().zip(tokens).enumerate() {
            ask(tok + PREFETCH_AHEAD);
            let (block, pos) = place(slot);
            for (kv, (k, v)) in k_row.chunks_exact(d).zip(v_row.chunks_exact(d)).enumerate() {
                let tile = self.tile(block, kv);
                for (i, &x) in k.iter().enumerate() {
                    key_cache[tile + self.key(pos, i)] = x;
                }
                for (i, &x) in v.iter().enumerate() {
                    value_cache[tile + self.value(pos, i)] = x;
                }
            }
        }
        Ok(())
    }
}

/// Tokens ahead whose cache lines `Tiled::store` asks for (more asked for too much at
/// once and measured slower).
const PREFETCH_AHEAD: usize = 2;

/// Ask for the lines of `len` elements from `p` (into L1).
#[cfg(target_arch = "x86_64")]
pub(crate) fn prefetch<E>(p: *const E, len: usize) {
    for line in (0..len * std::mem::size_of::<E>()).step_by(64) {
        // SAFETY: a prefetch is a hint and cannot fault, wherever it points.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_fill_each_tile_once() {
        let l = Tiled::new(16, 3, 8).expect("valid");
        for place in [Tiled::key, Tiled::value] {
            let mut seen = vec![0; l.tile_len()];
            for t in 0..16 {
                for d in 0..8 {
                    seen[place(&l, t, d)] += 1;
                }
            }
            assert!(seen.iter().all(|&n| n == 1));
        }
    }

    #[test]
    fn pairs_sit_side_by_side() {
        let l = Tiled::new(16, 2, 64).expect("valid");
        // Keys: dims 2i, 2i+1 of a position adjacent; the next position 2 values on.
        assert_eq!((l.key(0, 0), l.key(0, 1), l.key(1, 0)), (0, 1, 2));
        assert_eq!(l.key(0, 2), 32); // the next dim pair after 16 positions' pairs
                                     // Values: positions 2j, 2j+1 of a dim adjacent; the next dim 2 values on.
        assert_eq!((l.value(0, 0), l.value(1, 0), l.value(0, 1)), (0, 1, 2));
        assert_eq!(l.value(2, 0), 128); // the next position pair after 64 dims' pairs
        assert_eq!(l.tile(1, 1), 3 * 1024);
    }

    #[test]
    fn store_puts_each_token_in_its_slot() {
        let l = Tiled::new(2, 1, 4).expect("valid");
        // Two tokens [2, 1, 4]: keys 0..4 and 8..12, values 4..8 and 12..16.
        let keys = [0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0];
        let values = [4.0, 5.0, 6.0, 7.0, 12.0, 13.0, 14.0, 15.0];
        // Two blocks of two slots; a tile is 8 values.
        let (mut kc, mut vc) = (vec![-1f32; 16], vec![-1f32; 16]);
        l.store(&keys, &values, &[2, 1], &mut kc, &mut vc)
            .expect("valid");
        // Position 0 of block 1 (token 0): key dims (0, 1) at 8, 9 and (2, 3) at 12, 13
        // (after position 1's first pair); value dims at 8, 10, 12, 14.
        assert_eq!([kc[8], kc[9], kc[12], kc[13]], [0.0, 1.0, 2.0, 3.0]);
        assert_eq!([vc[8], vc[10], vc[12], vc[14]], [4.0, 5.0, 6.0, 7.0]);
        // Position 1 of block 0 (token 1): key dims at 2, 3, 6, 7; values at 1, 3, 5, 7.
        assert_eq!([kc[2], kc[3], kc[6], kc[7]], [8.0, 9.0, 10.0, 11.0]);
        assert_eq!([vc[1], vc[3], vc[5], vc[7]], [12.0, 13.0, 14.0, 15.0]);
        let written = [2, 3, 6, 7, 8, 9, 12, 13];
        for (i, &x) in kc.iter().enumerate() {
            assert_eq!(x == -1.0, !written.contains(&i), "key {i}");
        }
        assert_eq!(vc.iter().filter(|&&x| x == -1.0).count(), 8);
    }

    #[test]
    fn store_checks_before_writing() {
        let l = Tiled::new(2, 1, 4).expect("valid");
        let (k, v) = (vec![1f32; 4], vec![1f32; 4]);
        let (mut kc, mut vc) = (vec![0f32; 16], vec![0f32; 16]);
        for slot in [4i64, -1] {
            let err = l.store(&k, &v, &[slot], &mut kc, &mut vc);
            assert!(matches!(err, Err(CoreError::InvalidRequest(m)) if m.contains("outside")));
        }
        assert!(l.store(&k[..3], &v, &[0], &mut kc, &mut vc).is_err());
        assert!(l.store(&k, &v, &[0], &mut kc[..12], &mut vc[..12]).is_err());
        assert!(kc.iter().chain(&vc).all(|&x| x == 0.0));
    }

    #[test]
    fn odd_sizes_are_errors() {
        assert!(Tiled::new(15, 1, 64).is_err());
        assert!(Tiled::new(16, 1, 63).is_err());
        assert!(Tiled::new(16, 0, 64).is_err());
        assert!(Tiled::new(0, 1, 64).is_err());
    }
}
