//! The prefix cache: block hashes with least-recently-used eviction, and the rule for how much of
//! a prompt it saves.

use std::collections::{BTreeMap, HashMap};

/// Cached block hashes, evicted least recently used first.
#[derive(Debug, Default)]
pub struct PrefixCache {
    capacity: usize,
    /// A counter standing in for time: larger is more recent.
    clock: u64,
    stamp_of: HashMap<u64, u64>,
    by_stamp: BTreeMap<u64, u64>,
}

// === impl PrefixCache ===

impl PrefixCache {
    pub fn new(capacity: usize) -> Self {
        PrefixCache {
            capacity,
            ..PrefixCache::default()
        }
    }

    pub fn len(&self) -> usize {
        self.stamp_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stamp_of.is_empty()
    }

    /// How many of `blocks`, from the first, are cached; those are marked used.
    pub fn longest_prefix(&mut self, blocks: &[u64]) -> usize {
        let hit = blocks.iter().take_while(|b| self.stamp_of.contains_key(b)).count();
        self.touch(&blocks[..hit]);
        hit
    }

    /// Caches `blocks` (a prompt's chain, after its prefill), evicting the least recently used.
    pub fn insert(&mut self, blocks: &[u64]) {
        if self.capacity == 0 {
            return;
        }
        self.touch(blocks);
        while self.stamp_of.len() > self.capacity {
            let Some((_, oldest)) = self.by_stamp.pop_first() else { break };
            self.stamp_of.remove(&oldest);
        }
    }

    /// Drops everything, as an engine does when it sleeps or resets its prefix cache.
    pub fn clear(&mut self) {
        self.stamp_of.clear();
        self.by_stamp.clear();
    }

    /// Marks blocks used, last block first, so that a chain's head is its most recent block: when
    /// space runs out the tail goes first, and no block outlives the prefix it hangs from (a block
    /// whose parent is gone can never be matched, so keeping it would waste capacity).
    fn touch(&mut self, blocks: &[u64]) {
        for &block in blocks.iter().rev() {
            self.clock += 1;
            if let Some(old) = self.stamp_of.insert(block, self.clock) {
                self.by_stamp.remove(&old);
            }
            self.by_stamp.insert(self.clock, block);
        }
    }
}

/// How many of a prompt's tokens the cache saves, given how many of its leading blocks it holds.
///
/// As vLLM does, the last prompt token is always computed (its logits give the first output
/// token), so only the full blocks before the last token can hit: a prompt of exactly k blocks can
/// reuse at most k - 1 of them.
pub fn usable_blocks(prompt_tokens: usize, block_tokens: usize) -> usize {
    prompt_tokens.saturating_sub(1) / block_tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_stops_at_the_first_miss() {
        let mut cache = PrefixCache::new(10);
        cache.insert(&[1, 2, 3]);
        assert_eq!(cache.longest_prefix(&[1, 2, 3, 4]), 3);
        assert_eq!(cache.longest_prefix(&[1, 9, 3]), 1);
        assert_eq!(cache.longest_prefix(&[9, 1]), 0);
    }

    #[test]
    fn least_recently_used_goes_first_tail_before_head() {
        let mut cache = PrefixCache::new(4);
        cache.insert(&[1, 2, 3]);
        cache.insert(&[7, 8]);
        // Five blocks for four places: chain 1-2-3 is older, and its tail (3) goes.
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.longest_prefix(&[7, 8]), 2);
        assert_eq!(cache.longest_prefix(&[1, 2, 3]), 2);
        // Using 1-2 last made them the most recent; the next insert evicts 8, then 7.
        cache.insert(&[5, 6]);
        assert_eq!(cache.longest_prefix(&[1, 2]), 2);
        assert_eq!(cache.longest_prefix(&[7]), 0);
    }

    #[test]
    fn a_chain_longer_than_the_cache_keeps_its_head() {
        let mut cache = PrefixCache::new(2);
        cache.insert(&[1, 2, 3, 4]);
        assert_eq!(cache.longest_prefix(&[1, 2, 3, 4]), 2);
    }

    #[test]
    fn capacity_zero_caches_nothing_and_clear_empties() {
        let mut cache = PrefixCache::new(0);
        cache.insert(&[1]);
        assert!(cache.is_empty());
        let mut cache = PrefixCache::new(3);
        cache.insert(&[1, 2]);
        cache.clear();
        assert_eq!(cache.longest_prefix(&[1, 2]), 0);
    }

    #[test]
    fn the_last_token_is_always_computed() {
        assert_eq!(usable_blocks(32, 16), 1);
        assert_eq!(usable_blocks(33, 16), 2);
        assert_eq!(usable_blocks(1, 16), 0);
        assert_eq!(usable_blocks(0, 16), 0);
    }
}
