//! One step's batch as flat arrays (the table in DESIGN.md). The buffers are reused
//! from step to step so that a step allocates nothing once they have grown.

/// What the scheduler decided for one request this step.
#[derive(Debug, Clone, Copy)]
pub struct ScheduledRequest {
    /// The request's slot in the scheduler.
    pub slot: u32,
    pub num_new_tokens: usize,
    /// `RequestBlocks::num_done` before this step (to undo caching on preemption).
    pub num_done_before: usize,
}

#[derive(Debug, Default)]
pub struct Batch {
    /// [T] tokens to compute, request after request.
    pub input_ids: Vec<i32>,
    /// [T] each token's position in its sequence.
    pub positions: Vec<i32>,
    /// [T] block_id * block_size + offset of each token's KV.
    pub slot_mapping: Vec<i64>,
    /// [R+1] request r's rows are `query_start_loc[r]..query_start_loc[r+1]`.
    pub query_start_loc: Vec<i32>,
    /// [R] context length after this step.
    pub seq_lens: Vec<i32>,
    /// B, the longest block table of the step. The [R, B] block tables themselves are
    /// written once, straight into the caller's array (`Scheduler::write_block_tables`).
    pub max_num_blocks: usize,
    /// [S] rows whose logits are sampled.
    pub logits_indices: Vec<i32>,
    /// [R] whether request r samples this step.
    pub sampling_mask: Vec<bool>,
    /// [R] tokens with KV in the cache before this step.
    pub num_computed_tokens: Vec<i32>,
    /// [R] tokens computed this step.
    pub num_scheduled_tokens: Vec<i32>,
    /// [R] tokens the prefix cache supplied when the request was first admitted.
    pub num_cached_tokens: Vec<i32>,
    /// [R] scheduler slots, in batch order.
    pub req_slots: Vec<u32>,
    pub max_query_len: usize,
    pub max_seq_len: usize,
    /// Requests preempted in this step.
    pub preempted_req_ids: Vec<String>,
    /// Requests aborted since the previous step.
    pub finished_req_ids: Vec<String>,
}

/// One request's part of the batch.
pub struct BatchRow<'a> {
    pub slot: u32,
    pub tokens: &'a [u32],
    /// Sampled tokens not yet known (async scheduling): positions past `tokens` get
    /// input id -1, which the runner fills from the previous step's samples.
    pub num_placeholders: usize,
    pub block_table: &'a [u32],
    pub num_computed: usize,
    pub num_new: usize,
    pub num_cached: usize,
}

impl Batch {
    /// Empty the buffers for a step whose longest block table has `max_num_blocks`.
    pub fn start(&mut self, max_num_blocks: usize) {
        self.input_ids.clear();
        self.positions.clear();
        self.slot_mapping.clear();
        self.query_start_loc.clear();
        self.query_start_loc.push(0);
        self.seq_lens.clear();
        self.max_num_blocks = max_num_blocks;
        self.logits_indices.clear();
        self.sampling_mask.clear();
        self.num_computed_tokens.clear();
        self.num_scheduled_tokens.clear();
        self.num_cached_tokens.clear();
        self.req_slots.clear();
        self.max_query_len = 0;
        self.max_seq_len = 0;
        self.preempted_req_ids.clear();
        self.finished_req_ids.clear();
    }

    pub fn num_reqs(&self) -> usize {
        self.req_slots.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Append one request; it samples when this step reaches its last token.
    pub fn push(&mut self, row: BatchRow<'_>, block_size: usize) {
        let start = row.num_computed;
        let end = start + row.num_new;
        let first_row = self.input_ids.len();
        let known = end.min(row.tokens.len());
        self.input_ids.extend(
            row.tokens[start.min(known)..known]
                .iter()
                .map(|&t| t as i32),
        );
        self.input_ids.extend((known.max(start)..end).map(|_| -1));
        self.positions.extend((start..end).map(|p| p as i32));
        let bs = block_size as i64;
        // Walk block by block: one table lookup per block, not per token.
        let mut pos = start;
        while pos < end {
            let block = pos / block_size;
            let stop = end.min((block + 1) * block_size);
            let base = i64::from(row.block_table[block]) * bs - (block * block_size) as i64;
            self.slot_mapping
                .extend((pos..stop).map(|p| base + p as i64));
            pos = stop;
        }
        self.query_start_loc.push(self.input_ids.len() as i32);
        self.seq_lens.push(end as i32);
        debug_assert!(row.block_table.len() <= self.max_num_blocks);
        let samples = end == row.tokens.len() + row.num_placeholders;
        if samples {
            self.logits_indices.push((self.input_ids.len() - 1) as i32);
        }
        debug_assert!(first_row < self.input_ids.len());
        self.sampling_mask.push(samples);
        self.num_computed_tokens.push(start as i32);
        self.num_scheduled_tokens.push(row.num_new as i32);
        self.num_cached_tokens.push(row.num_cached as i32);
        self.req_slots.push(row.slot);
        self.max_query_len = self.max_query_len.max(row.num_new);
        self.max_seq_len = self.max_seq_len.max(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_slots_and_padding() {
        let mut batch = Batch::default();
        batch.start(3);
        let tokens: Vec<u32> = (10..20).collect();
        // 10 tokens, block size 4, 6 computed, 4 new: positions 6..10, blocks 1 and 2.
        batch.push(
            BatchRow {
                slot: 7,
                tokens: &tokens,
                num_placeholders: 0,
                block_table: &[5, 8, 9],
                num_computed: 6,
                num_new: 4,
                num_cached: 4,
            },
            4,
        );
        batch.push(
            BatchRow {
                slot: 2,
                tokens: &tokens[..3],
                num_placeholders: 0,
                block_table: &[3],
                num_computed: 0,
                num_new: 2,
                num_cached: 0,
            },
            4,
        );
        assert_eq!(batch.input_ids, vec![16, 17, 18, 19, 10, 11]);
        assert_eq!(batch.positions, vec![6, 7, 8, 9, 0, 1]);
        assert_eq!(batch.slot_mapping, vec![34, 35, 36, 37, 12, 13]);
        assert_eq!(batch.query_start_loc, vec![0, 4, 6]);
        assert_eq!(batch.seq_lens, vec![10, 2]);
        assert_eq!(batch.logits_indices, vec![3]);
        assert_eq!(batch.sampling_mask, vec![true, false]);
        assert_eq!(batch.req_slots, vec![7, 2]);
        assert_eq!((batch.max_query_len, batch.max_seq_len), (4, 10));
    }
}
