//! The prefix index: which machines served prompts that start the same way, block by block.
//!
//! An engine that has prefilled a prompt keeps its KV cache for a while (vLLM's and SGLang's
//! prefix caches, llama-server's slots), so a request whose prompt shares a long start with one
//! a machine served answers sooner there. A prompt is cut into fixed-size blocks and each block
//! gets a hash chained over all the blocks before it, seeded by the app: two prompts share a
//! block's key exactly when they agree up to the end of that block. The index remembers, per
//! key, the machines that served it, learned from routing decisions (it sees no engine's cache,
//! so it approximates, as llm-d's approximate prefix scorer does).
//!
//! Memory is fixed at construction: a set-associative cache of (key, machine, time) slots; a
//! lookup or a record touches one set per block and never allocates beyond its answer; an entry
//! older than the time-to-live reads as absent; a full set gives up its oldest entry. Time is an
//! argument, so the simulator replays it exactly.

/// A block's key: a hash of a prompt's first bytes or tokens, up to the end of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixKey(pub u64);

/// Per block key, the machines that served it lately; `M` is whatever handle the caller keeps
/// for a machine (an index, an interned id).
#[derive(Clone, Debug)]
pub struct PrefixIndex<M> {
    slots: Vec<Option<Slot<M>>>,
    sets_mask: u64,
    ttl_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot<M> {
    key: u64,
    machine: M,
    at_ms: u64,
}

/// Slots per set: room for a hot block served by several machines.
const WAYS: usize = 8;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

// === impl PrefixKey ===

impl PrefixKey {
    /// FNV-1a over the first `n` bytes of `prompt` (all of it when shorter).
    pub fn of_bytes(prompt: &[u8], n: usize) -> PrefixKey {
        PrefixKey(fnv(FNV_OFFSET, &prompt[..n.min(prompt.len())]))
    }

    /// The block keys of `prompt`: one per whole or final partial block of `block_bytes`, at
    /// most `max_blocks`, each chained over the ones before it and seeded by `seed` (the app,
    /// so that two apps never share a key).
    pub fn chain(seed: &[u8], prompt: &[u8], block_bytes: usize, max_blocks: usize) -> Vec<PrefixKey> {
        let mut hash = fnv(FNV_OFFSET, seed);
        prompt
            .chunks(block_bytes.max(1))
            .take(max_blocks)
            .map(|block| {
                hash = fnv(hash ^ 0xff, block);
                PrefixKey(hash)
            })
            .collect()
    }
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }
    hash
}

// === impl PrefixIndex ===

impl<M: Copy + Eq> PrefixIndex<M> {
    /// An index of at least `capacity` entries (rounded up to a power of two, at least one set)
    /// whose entries expire `ttl_ms` after they were recorded.
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        PrefixIndex {
            slots: vec![None; sets * WAYS],
            sets_mask: sets as u64 - 1,
            ttl_ms,
        }
    }

    /// How many entries the index can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Remembers that `machine` served a prompt with these block keys at `now_ms`.
    pub fn record(&mut self, chain: &[PrefixKey], machine: M, now_ms: u64) {
        for &key in chain {
            self.record_one(key, machine, now_ms);
        }
    }

    fn record_one(&mut self, key: PrefixKey, machine: M, now_ms: u64) {
        let ttl_ms = self.ttl_ms;
        let set = self.set_mut(key);
        // The same entry first, then an empty or expired slot, then the oldest.
        let victim = set
            .iter()
            .position(|s| s.is_some_and(|s| s.key == key.0 && s.machine == machine))
            .unwrap_or_else(|| {
                let mut victim = 0;
                let mut oldest = u64::MAX;
                for (i, slot) in set.iter().enumerate() {
                    let age_rank = match slot {
                        None => 0,
                        Some(s) if now_ms.saturating_sub(s.at_ms) >= ttl_ms => 0,
                        Some(s) => s.at_ms.saturating_add(1),
                    };
                    if age_rank < oldest {
                        oldest = age_rank;
                        victim = i;
                    }
                }
                victim
            });
        set[victim] = Some(Slot {
            key: key.0,
            machine,
            at_ms: now_ms,
        });
    }

    /// For each machine that served this chain's first block, how many blocks in a row it
    /// served, into `out` (cleared first).
    pub fn matches(&self, chain: &[PrefixKey], now_ms: u64, out: &mut Vec<(M, u32)>) {
        out.clear();
        for (depth, &key) in chain.iter().enumerate() {
            let depth = depth as u32;
            let mut extended = false;
            for slot in self.set(key).iter().flatten() {
                if slot.key != key.0 || !self.live(slot, now_ms) {
                    continue;
                }
                if depth == 0 {
                    if !out.iter().any(|(m, _)| *m == slot.machine) {
                        out.push((slot.machine, 1));
                        extended = true;
                    }
                } else if let Some(entry) = out.iter_mut().find(|(m, n)| *m == slot.machine && *n == depth) {
                    entry.1 += 1;
                    extended = true;
                }
            }
            if !extended {
                break;
            }
        }
    }

    /// Drops every entry that points at `machine` (it stopped or left the route table).
    pub fn forget(&mut self, machine: M) {
        for slot in &mut self.slots {
            if slot.is_some_and(|s| s.machine == machine) {
                *slot = None;
            }
        }
    }

    /// Entries still alive at `now_ms`.
    pub fn live_entries(&self, now_ms: u64) -> usize {
        self.slots.iter().flatten().filter(|slot| self.live(slot, now_ms)).count()
    }

    fn live(&self, slot: &Slot<M>, now_ms: u64) -> bool {
        now_ms.saturating_sub(slot.at_ms) < self.ttl_ms
    }

    fn set_index(&self, key: PrefixKey) -> usize {
        // Fold the high bits in: FNV's low bits alone spread short inputs poorly.
        (((key.0 >> 32) ^ key.0) & self.sets_mask) as usize * WAYS
    }

    fn set(&self, key: PrefixKey) -> &[Option<Slot<M>>] {
        let start = self.set_index(key);
        &self.slots[start..start + WAYS]
    }

    fn set_mut(&mut self, key: PrefixKey) -> &mut [Option<Slot<M>>] {
        let start = self.set_index(key);
        &mut self.slots[start..start + WAYS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(prompt: &str) -> Vec<PrefixKey> {
        PrefixKey::chain(b"app", prompt.as_bytes(), 4, 64)
    }

    fn matches(index: &PrefixIndex<u32>, prompt: &str, now: u64) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        index.matches(&chain(prompt), now, &mut out);
        out.sort();
        out
    }

    #[test]
    fn chains_share_keys_exactly_as_far_as_prompts_agree() {
        let a = chain("aaaabbbbcccc");
        let b = chain("aaaabbbbdddd");
        assert_eq!(a.len(), 3);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        // The same block after a different start is a different key.
        assert_ne!(chain("xxxxbbbb")[1], a[1]);
        assert_ne!(PrefixKey::chain(b"other", b"aaaa", 4, 64), chain("aaaa"), "seeded by the app");
        assert_eq!(chain("aaaab").len(), 2, "a partial last block counts");
        assert_eq!(PrefixKey::chain(b"app", &[b'a'; 100], 4, 3).len(), 3, "at most max_blocks");
    }

    #[test]
    fn matches_by_table() {
        /// (what, records as (prompt, machine, at), lookup prompt, now, expected matches)
        type Case = (&'static str, Vec<(&'static str, u32, u64)>, &'static str, u64, Vec<(u32, u32)>);
        let cases: Vec<Case> = vec![
            ("empty index", vec![], "aaaabbbb", 0, vec![]),
            ("whole prompt", vec![("aaaabbbbcccc", 7, 100)], "aaaabbbbcccc", 150, vec![(7, 3)]),
            ("shared start", vec![("aaaabbbbcccc", 7, 100)], "aaaabbbbzzzz", 150, vec![(7, 2)]),
            ("no shared first block", vec![("aaaabbbb", 7, 100)], "zaaabbbb", 150, vec![]),
            (
                "two machines, different depths",
                vec![("aaaabbbbcccc", 7, 100), ("aaaabbbb", 9, 110)],
                "aaaabbbbcccc",
                150,
                vec![(7, 3), (9, 2)],
            ),
            ("expired at ttl", vec![("aaaa", 7, 100)], "aaaa", 1_100, vec![]),
            (
                "re-recorded refreshes",
                vec![("aaaa", 7, 100), ("aaaa", 7, 900)],
                "aaaa",
                1_500,
                vec![(7, 1)],
            ),
        ];
        for (what, records, prompt, now, expected) in cases {
            let mut index = PrefixIndex::new(256, 1_000);
            for (p, m, at) in records {
                index.record(&chain(p), m, at);
            }
            assert_eq!(matches(&index, prompt, now), expected, "{what}");
        }
    }

    #[test]
    fn bounded_and_evicts_oldest() {
        let mut index = PrefixIndex::new(16, 10_000);
        assert_eq!(index.capacity(), 16);
        for i in 0..1_000u64 {
            index.record(&[PrefixKey(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))], i as u32, i);
        }
        assert!(index.live_entries(1_000) <= 16);
        let mut out = Vec::new();
        index.matches(&[PrefixKey(999u64.wrapping_mul(0x9e37_79b9_7f4a_7c15))], 1_000, &mut out);
        assert_eq!(out, vec![(999, 1)], "the most recent record survives its set's evictions");
    }

    #[test]
    fn forget_drops_a_machine() {
        let mut index = PrefixIndex::new(64, 1_000);
        index.record(&chain("aaaa"), 3u32, 0);
        index.record(&chain("aaaa"), 4u32, 0);
        index.forget(3);
        assert_eq!(matches(&index, "aaaa", 10), vec![(4, 1)]);
    }
}
