//! The paged KV cache's block pool: reference counts, an O(1) free queue (least
//! recently freed first) and the prefix cache, plus the per-request operations on top
//! of it (find a cached prefix, allocate the slots of a step, free a block table).
//!
//! A full block is named by a key chained over its parent's key and its token ids (the
//! chain starts from a root that folds in the request's cache salt). A freed block keeps
//! its key, parent key and token ids until it is handed out again, so a later request
//! with the same prefix takes it back; a lookup compares the parent key and the token
//! ids, so a 64-bit hash collision can never hand out the wrong block.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type BlockId = u32;

/// Block 0 is never handed to a request: block tables are padded with it.
pub const NULL_BLOCK: BlockId = 0;

/// "No block" in the intrusive free-queue links.
const NIL: u32 = u32::MAX;

const MUL_A: u64 = 0x9E37_79B9_7F4A_7C15;
const MUL_B: u64 = 0xD6E8_FEB8_6659_FD93;

/// The 128-bit product folded to 64 bits: one multiply mixes every input bit.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The root of a request's key chain: the same for every request without a salt, so
/// salted requests share blocks only with requests of the same salt.
pub fn root_key(cache_salt: Option<&str>) -> u64 {
    let Some(salt) = cache_salt else {
        return 0x243F_6A88_85A3_08D3;
    };
    let mut h = 0x1319_8A2E_0370_7344 ^ salt.len() as u64;
    for chunk in salt.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = fold_mul(h ^ u64::from_le_bytes(word), MUL_A);
    }
    fold_mul(h, MUL_B)
}

/// The key of a full block: chained over the parent's key and the block's token ids.
pub fn block_key(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = parent ^ MUL_B;
    let mut pairs = tokens.chunks_exact(2);
    for pair in &mut pairs {
        let word = u64::from(pair[0]) | (u64::from(pair[1]) << 32);
        h = fold_mul(h ^ word, MUL_A);
    }
    if let [last] = pairs.remainder() {
        h = fold_mul(h ^ u64::from(*last), MUL_A);
    }
    fold_mul(h ^ tokens.len() as u64, MUL_B)
}

/// Keys are already well-mixed hashes: the cache map uses them as they are.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type KeyMap = HashMap<u64, BlockId, BuildHasherDefault<KeyHasher>>;

/// A request's view of the pool: its block table and its chain of full-block keys.
#[derive(Debug, Default, Clone)]
pub struct RequestBlocks {
    /// Block ids in token order: block `i` holds tokens `i*block_size..(i+1)*block_size`.
    pub table: Vec<BlockId>,
    /// Keys of the request's full blocks, computed on demand; they depend on tokens
    /// only, so they survive preemption.
    pub keys: Vec<u64>,
    /// `table[..num_done]` are full blocks already offered to the prefix cache (cached
    /// by this request, taken as hits, or duplicates of a block cached elsewhere).
    pub num_done: usize,
}

pub struct BlockPool {
    block_size: usize,
    enable_caching: bool,
    ref_cnt: Vec<u32>,
    // Intrusive doubly linked free queue; `head` is the least recently freed block.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    num_free: usize,
    // Prefix cache: a block is cached while `cached[b]`; key, parent key and token ids
    // stay with it until it is evicted (handed out again).
    cached: Vec<bool>,
    key: Vec<u64>,
    parent: Vec<u64>,
    tokens: Vec<u32>,
    map: KeyMap,
}

impl BlockPool {
    /// `num_blocks` includes the null block; `num_blocks >= 2`, `block_size >= 1`.
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Self {
        assert!(num_blocks >= 2 && num_blocks < NIL as usize && block_size >= 1);
        let mut pool = BlockPool {
            block_size,
            enable_caching,
            ref_cnt: vec![0; num_blocks],
            prev: vec![NIL; num_blocks],
            next: vec![NIL; num_blocks],
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: vec![false; num_blocks],
            key: vec![0; num_blocks],
            parent: vec![0; num_blocks],
            tokens: if enable_caching {
                vec![0; num_blocks * block_size]
            } else {
                Vec::new()
            },
            map: KeyMap::default(),
        };
        // The null block is permanently "in use" so it is never handed out.
        pool.ref_cnt[NULL_BLOCK as usize] = 1;
        for b in 1..num_blocks as u32 {
            pool.push_tail(b);
        }
        pool
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// All blocks, the null block included.
    pub fn num_blocks(&self) -> usize {
        self.ref_cnt.len()
    }

    /// Blocks a request may ever hold (all but the null block).
    pub fn num_usable(&self) -> usize {
        self.ref_cnt.len() - 1
    }

    pub fn num_free(&self) -> usize {
        self.num_free
    }

    pub fn num_cached(&self) -> usize {
        self.map.len()
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_cnt[block as usize]
    }

    pub fn is_cached(&self, block: BlockId) -> bool {
        self.cached[block as usize]
    }

    fn push_tail(&mut self, b: u32) {
        let i = b as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.num_free += 1;
    }

    fn unlink(&mut self, b: u32) {
        let i = b as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.num_free -= 1;
    }

    /// Take the least recently freed block, evicting its cache entry.
    fn pop_free(&mut self) -> Option<BlockId> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        self.uncache(b);
        self.ref_cnt[b as usize] = 1;
        Some(b)
    }

    /// Take one more reference to a block (a prefix-cache hit).
    fn touch(&mut self, b: BlockId) {
        if self.ref_cnt[b as usize] == 0 {
            self.unlink(b);
        }
        self.ref_cnt[b as usize] += 1;
    }

    fn release(&mut self, b: BlockId) {
        let rc = &mut self.ref_cnt[b as usize];
        debug_assert!(*rc > 0 && b != NULL_BLOCK);
        *rc -= 1;
        if *rc == 0 {
            self.push_tail(b);
        }
    }

    /// Forget a block's cache entry (eviction, or contents that will never be written).
    pub fn uncache(&mut self, b: BlockId) {
        let i = b as usize;
        if self.cached[i] {
            self.cached[i] = false;
            if self.map.get(&self.key[i]) == Some(&b) {
                self.map.remove(&self.key[i]);
            }
        }
    }

    /// The cached block with this key, parent key and token ids, if any.
    fn lookup(&self, parent: u64, key: u64, tokens: &[u32]) -> Option<BlockId> {
        let &b = self.map.get(&key)?;
        let i = b as usize;
        let bs = self.block_size;
        (self.parent[i] == parent && self.tokens[i * bs..(i + 1) * bs] == *tokens).then_some(b)
    }

    /// Cache a full block unless an equal block is already cached.
    fn cache(&mut self, b: BlockId, parent: u64, key: u64, tokens: &[u32]) {
        if self.map.contains_key(&key) {
            return;
        }
        let i = b as usize;
        let bs = self.block_size;
        self.cached[i] = true;
        self.key[i] = key;
        self.parent[i] = parent;
        self.tokens[i * bs..(i + 1) * bs].copy_from_slice(tokens);
        self.map.insert(key, b);
    }

    /// Extend `rb.keys` to cover the first `n` full blocks of `tokens`.
    fn ensure_keys(&self, rb: &mut RequestBlocks, tokens: &[u32], root: u64, n: usize) {
        let bs = self.block_size;
        while rb.keys.len() < n {
            let i = rb.keys.len();
            let parent = if i == 0 { root } else { rb.keys[i - 1] };
            rb.keys
                .push(block_key(parent, &tokens[i * bs..(i + 1) * bs]));
        }
    }

    /// The longest run of cached blocks that starts the request, never covering all of
    /// `tokens` (the last token is always computed so that there are logits to sample).
    /// Pushes the hits into `hits` (cleared first) without taking references yet.
    pub fn find_cached_prefix(
        &self,
        rb: &mut RequestBlocks,
        tokens: &[u32],
        root: u64,
        hits: &mut Vec<BlockId>,
    ) {
        hits.clear();
        if !self.enable_caching || tokens.is_empty() {
            return;
        }
        let bs = self.block_size;
        let max_blocks = (tokens.len() - 1) / bs;
        for i in 0..max_blocks {
            self.ensure_keys(rb, tokens, root, i + 1);
            let parent = if i == 0 { root } else { rb.keys[i - 1] };
            match self.lookup(parent, rb.keys[i], &tokens[i * bs..(i + 1) * bs]) {
                Some(b) => hits.push(b),
                None => break,
            }
        }
    }

    /// Give a request the blocks for `num_new` more tokens after `num_computed` (which
    /// counts `hits`, the cached blocks found by `find_cached_prefix` for a request
    /// with an empty table). All or nothing: returns false, changing nothing, when the
    /// free blocks do not suffice. Full blocks are cached as soon as they are
    /// allocated, so a request scheduled later in the same step can hit them.
    pub fn allocate_slots(
        &mut self,
        rb: &mut RequestBlocks,
        tokens: &[u32],
        root: u64,
        num_computed: usize,
        num_new: usize,
        hits: &[BlockId],
    ) -> bool {
        let bs = self.block_size;
        let total = num_computed + num_new;
        // Past `tokens` lie placeholders (async scheduling): sampled, not yet known.
        debug_assert!(hits.is_empty() || rb.table.is_empty());
        let have = rb.table.len() + hits.len();
        let need = total.div_ceil(bs).saturating_sub(have);
        // Hits sitting in the free queue leave it when taken: they are not free to give.
        let free_hits = hits
            .iter()
            .filter(|&&b| self.ref_cnt[b as usize] == 0)
            .count();
        if need > self.num_free - free_hits {
            return false;
        }
        for &b in hits {
            self.touch(b);
            rb.table.push(b);
        }
        if !hits.is_empty() {
            rb.num_done = hits.len();
        }
        for _ in 0..need {
            match self.pop_free() {
                Some(b) => rb.table.push(b),
                None => unreachable!("free count checked above"),
            }
        }
        if self.enable_caching {
            // A block holding a placeholder is cached by a later call, once it is known.
            let full = total.min(tokens.len()) / bs;
            if full > rb.num_done {
                self.ensure_keys(rb, tokens, root, full);
                for i in rb.num_done..full {
                    let parent = if i == 0 { root } else { rb.keys[i - 1] };
                    self.cache(
                        rb.table[i],
                        parent,
                        rb.keys[i],
                        &tokens[i * bs..(i + 1) * bs],
                    );
                }
                rb.num_done = full;
            }
        }
        true
    }

    /// Undo the caching of `rb`'s blocks from index `from` on: their contents will not
    /// be written after all (a request preempted in the step that allocated them).
    pub fn uncache_from(&mut self, rb: &mut RequestBlocks, from: usize) {
        for i in from..rb.num_done.min(rb.table.len()) {
            let b = rb.table[i];
            // A block shared with another request was computed before this step.
            if self.ref_cnt[b as usize] == 1 {
                self.uncache(b);
            }
        }
        rb.num_done = rb.num_done.min(from);
    }

    /// Release a request's blocks, last block first, so that a request's tail is
    /// evicted before the prefix it may share with others.
    pub fn free(&mut self, rb: &mut RequestBlocks) {
        for &b in rb.table.iter().rev() {
            self.release(b);
        }
        rb.table.clear();
        rb.num_done = 0;
    }

    /// Check the pool against the owners' block tables: every reference is an owner,
    /// the free queue holds exactly the unreferenced blocks, the cache map agrees
    /// with the blocks, and a block shared by several requests is a cached full block.
    pub fn check<'a>(&self, tables: impl Iterator<Item = &'a [BlockId]>) -> Result<(), String> {
        let n = self.num_blocks();
        let mut owners = vec![0u32; n];
        owners[NULL_BLOCK as usize] = 1;
        for table in tables {
            for &b in table {
                if b == NULL_BLOCK || b as usize >= n {
                    return Err(format!("block table holds invalid block {b}"));
                }
                owners[b as usize] += 1;
            }
        }
        let mut in_queue = vec![false; n];
        let mut count = 0;
        let mut b = self.head;
        let mut last = NIL;
        while b != NIL {
            if in_queue[b as usize] {
                return Err(format!("block {b} is twice in the free queue"));
            }
            in_queue[b as usize] = true;
            if self.prev[b as usize] != last {
                return Err(format!("broken free-queue link at block {b}"));
            }
            count += 1;
            last = b;
            b = self.next[b as usize];
        }
        if last != self.tail || count != self.num_free {
            return Err("free queue tail or length is wrong".into());
        }
        for b in 0..n {
            if self.ref_cnt[b] != owners[b] {
                return Err(format!(
                    "block {b} has ref count {} but {} owners",
                    self.ref_cnt[b], owners[b]
                ));
            }
            if in_queue[b] != (owners[b] == 0) {
                return Err(format!("block {b}: free queue and ref count disagree"));
            }
            if owners[b] > 1 && b != NULL_BLOCK as usize && !self.cached[b] {
                return Err(format!("block {b} is shared but not a cached full block"));
            }
        }
        let num_cached = self.cached.iter().filter(|&&c| c).count();
        if num_cached != self.map.len() {
            return Err("cache map and cached flags disagree".into());
        }
        for (&key, &b) in &self.map {
            if !self.cached[b as usize] || self.key[b as usize] != key {
                return Err(format!("cache map entry for block {b} is stale"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32)
            .map(|i| i.wrapping_mul(7919).wrapping_add(seed))
            .collect()
    }

    fn alloc(pool: &mut BlockPool, rb: &mut RequestBlocks, t: &[u32], root: u64) -> usize {
        let mut hits = Vec::new();
        pool.find_cached_prefix(rb, t, root, &mut hits);
        let done = hits.len() * pool.block_size();
        assert!(pool.allocate_slots(rb, t, root, done, t.len() - done, &hits));
        done
    }

    #[test]
    fn keys_chain_over_parent_and_salt() {
        let t = toks(4, 1);
        assert_eq!(block_key(1, &t), block_key(1, &t));
        assert_ne!(block_key(1, &t), block_key(2, &t));
        assert_ne!(block_key(1, &t), block_key(1, &toks(4, 2)));
        assert_ne!(root_key(None), root_key(Some("a")));
        assert_ne!(root_key(Some("a")), root_key(Some("b")));
        assert_eq!(root_key(Some("salt")), root_key(Some("salt")));
    }

    #[test]
    fn free_queue_hands_out_least_recently_freed_first() {
        let mut pool = BlockPool::new(5, 2, false);
        assert_eq!(pool.num_free(), 4);
        let mut a = RequestBlocks::default();
        let mut b = RequestBlocks::default();
        assert!(pool.allocate_slots(&mut a, &toks(4, 0), 0, 0, 4, &[]));
        assert!(pool.allocate_slots(&mut b, &toks(4, 0), 0, 0, 4, &[]));
        assert_eq!(a.table, vec![1, 2]);
        assert_eq!(b.table, vec![3, 4]);
        assert!(!pool.allocate_slots(&mut RequestBlocks::default(), &[1], 0, 0, 1, &[]));
        pool.free(&mut b);
        pool.free(&mut a);
        // b was freed first (tail block first): 4, 3, then a's 2, 1.
        let mut c = RequestBlocks::default();
        assert!(pool.allocate_slots(&mut c, &toks(8, 0), 0, 0, 8, &[]));
        assert_eq!(c.table, vec![4, 3, 2, 1]);
        pool.check([c.table.as_slice()].into_iter()).unwrap();
    }

    #[test]
    fn shared_prefix_reuses_exactly_the_shared_full_blocks() {
        let bs = 4;
        let mut pool = BlockPool::new(32, bs, true);
        let root = root_key(None);
        // 10 shared tokens = 2 full blocks + 2 tokens; then different suffixes.
        let shared = toks(10, 3);
        let mut ta = shared.clone();
        ta.extend([100, 101, 102, 103, 104, 105]);
        let mut tb = shared.clone();
        tb.extend([200, 201, 202, 203, 204]);
        let mut a = RequestBlocks::default();
        assert_eq!(alloc(&mut pool, &mut a, &ta, root), 0);
        assert_eq!(pool.num_cached(), 4);
        let mut b = RequestBlocks::default();
        assert_eq!(alloc(&mut pool, &mut b, &tb, root), 8);
        assert_eq!(b.table[..2], a.table[..2]);
        assert!(b.table[2..].iter().all(|x| !a.table.contains(x)));
        assert_eq!(pool.ref_count(a.table[0]), 2);
        assert_eq!(pool.ref_count(a.table[2]), 1);
        pool.check([a.table.as_slice(), b.table.as_slice()].into_iter())
            .unwrap();
        // A different salt shares nothing.
        let mut c = RequestBlocks::default();
        assert_eq!(alloc(&mut pool, &mut c, &ta, root_key(Some("x"))), 0);
        pool.free(&mut a);
        pool.free(&mut b);
        pool.free(&mut c);
        assert_eq!(pool.num_free(), 31);
        pool.check(std::iter::empty()).unwrap();
    }

    #[test]
    fn hit_never_covers_the_whole_prompt() {
        let mut pool = BlockPool::new(16, 4, true);
        let root = root_key(None);
        let t = toks(8, 9);
        let mut a = RequestBlocks::default();
        alloc(&mut pool, &mut a, &t, root);
        let mut b = RequestBlocks::default();
        // Both blocks are cached, but only the first may be taken.
        assert_eq!(alloc(&mut pool, &mut b, &t, root), 4);
        assert_eq!(b.table[0], a.table[0]);
        assert_ne!(b.table[1], a.table[1]);
    }

    #[test]
    fn freed_blocks_stay_cached_until_evicted_least_recently_freed_first() {
        let mut pool = BlockPool::new(5, 2, true);
        let root = root_key(None);
        let (t1, t2) = (toks(5, 1), toks(5, 2));
        let mut a = RequestBlocks::default();
        let mut b = RequestBlocks::default();
        alloc(&mut pool, &mut a, &t1, root); // blocks 1, 2 (full), 3 (partial)
        pool.free(&mut a); // queue: 4, 3, 2, 1
        alloc(&mut pool, &mut b, &t2, root); // takes 4, 3, 2: evicts block 2's entry
        assert_eq!(b.table, vec![4, 3, 2]);
        pool.free(&mut b);
        // t1's first block (1) survived; its second (2) was evicted and re-cached as t2's.
        let mut c = RequestBlocks::default();
        assert_eq!(alloc(&mut pool, &mut c, &t1, root), 2);
        assert_eq!(c.table[0], 1);
        pool.free(&mut c);
        pool.check(std::iter::empty()).unwrap();
    }

    #[test]
    fn collision_is_caught_by_comparing_tokens() {
        let mut pool = BlockPool::new(8, 2, true);
        let root = root_key(None);
        let mut a = RequestBlocks::default();
        alloc(&mut pool, &mut a, &[1, 2, 3], root);
        // Forge a request whose first key equals block 1's but whose tokens differ.
        let mut forged = RequestBlocks {
            keys: vec![a.keys[0]],
            ..Default::default()
        };
        let mut hits = Vec::new();
        pool.find_cached_prefix(&mut forged, &[9, 9, 9], root, &mut hits);
        assert!(hits.is_empty());
    }

    #[test]
    fn uncache_from_forgets_blocks_never_written() {
        let mut pool = BlockPool::new(8, 2, true);
        let root = root_key(None);
        let t = toks(5, 4);
        let mut a = RequestBlocks::default();
        assert!(pool.allocate_slots(&mut a, &t, root, 0, 2, &[]));
        assert!(pool.allocate_slots(&mut a, &t, root, 2, 2, &[]));
        assert_eq!(pool.num_cached(), 2);
        pool.uncache_from(&mut a, 1);
        assert_eq!(pool.num_cached(), 1);
        assert!(pool.is_cached(a.table[0]) && !pool.is_cached(a.table[1]));
        pool.check([a.table.as_slice()].into_iter()).unwrap();
    }
}
