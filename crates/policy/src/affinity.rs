//! Prefix affinity: which machine last served a prompt that starts the same way.
//!
//! An engine that has just prefilled a prompt may still hold its KV cache, so a request whose
//! prompt shares the prefix answers sooner there. The table remembers, per prefix hash, the
//! machine that served it and when. It is a fixed-size, 4-way set-associative cache: memory is
//! fixed at construction, a lookup or a record touches one set of four slots and never
//! allocates, and an entry older than the time-to-live reads as absent. When a set is full the
//! oldest entry gives way. Time is an argument, so the simulator replays it exactly.

/// A hash of a prompt's first bytes or tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixKey(pub u64);

/// Per prefix, the machine that served it last; `M` is whatever handle the caller keeps for a
/// machine (an index, a slot number, an interned id).
#[derive(Clone, Debug)]
pub struct AffinityTable<M> {
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

const WAYS: usize = 4;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

// === impl PrefixKey ===

impl PrefixKey {
    /// FNV-1a over the first `n` bytes of `prompt` (all of it when shorter). The caller chooses
    /// `n` so that it covers the shared part (a system prompt, a few-shot preamble).
    pub fn of_bytes(prompt: &[u8], n: usize) -> PrefixKey {
        let mut hash = FNV_OFFSET;
        for &byte in &prompt[..n.min(prompt.len())] {
            hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
        PrefixKey(hash)
    }

    /// The same over the first `n` token ids, for callers that tokenize before routing.
    pub fn of_tokens(tokens: &[u32], n: usize) -> PrefixKey {
        let mut hash = FNV_OFFSET;
        for &token in &tokens[..n.min(tokens.len())] {
            for byte in token.to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
            }
        }
        PrefixKey(hash)
    }
}

// === impl AffinityTable ===

impl<M: Copy + Eq> AffinityTable<M> {
    /// A table of at least `capacity` entries (rounded up to a power of two, at least one set)
    /// whose entries expire `ttl_ms` after they were recorded.
    pub fn new(capacity: usize, ttl_ms: u64) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        AffinityTable {
            slots: vec![None; sets * WAYS],
            sets_mask: sets as u64 - 1,
            ttl_ms,
        }
    }

    /// How many entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The machine that served `key` within the time-to-live before `now_ms`.
    pub fn get(&self, key: PrefixKey, now_ms: u64) -> Option<M> {
        self.set(key)
            .iter()
            .flatten()
            .find(|slot| slot.key == key.0 && self.live(slot, now_ms))
            .map(|slot| slot.machine)
    }

    /// Remembers that `machine` served `key` at `now_ms`.
    pub fn record(&mut self, key: PrefixKey, machine: M, now_ms: u64) {
        let ttl_ms = self.ttl_ms;
        let set = self.set_mut(key);
        // The same key first, then an empty or expired slot, then the oldest.
        let victim = set.iter().position(|s| s.is_some_and(|s| s.key == key.0)).unwrap_or_else(|| {
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

    #[test]
    fn lookups_by_table() {
        let a = PrefixKey::of_bytes(b"You are a helpful assistant. Say hi", 28);
        let a2 = PrefixKey::of_bytes(b"You are a helpful assistant. Say bye", 28);
        let b = PrefixKey::of_bytes(b"Translate to French: cat", 28);
        assert_eq!(a, a2, "same first 28 bytes, same key");
        /// (what, records as (key, machine, at), lookup key, now, expected)
        type Case = (&'static str, Vec<(PrefixKey, u32, u64)>, PrefixKey, u64, Option<u32>);
        let cases: Vec<Case> = vec![
            ("empty table", vec![], a, 0, None),
            ("recorded", vec![(a, 7, 100)], a, 150, Some(7)),
            ("other key", vec![(a, 7, 100)], b, 150, None),
            ("latest record wins", vec![(a, 7, 100), (a, 9, 120)], a, 150, Some(9)),
            ("just before expiry", vec![(a, 7, 100)], a, 1_099, Some(7)),
            ("expired at ttl", vec![(a, 7, 100)], a, 1_100, None),
            ("re-recorded refreshes", vec![(a, 7, 100), (a, 7, 900)], a, 1_500, Some(7)),
        ];
        for (what, records, key, now, expected) in cases {
            let mut table = AffinityTable::new(64, 1_000);
            for (k, m, at) in records {
                table.record(k, m, at);
            }
            assert_eq!(table.get(key, now), expected, "{what}");
        }
    }

    #[test]
    fn bounded_and_evicts_oldest() {
        let mut table = AffinityTable::new(8, 10_000);
        assert_eq!(table.capacity(), 8);
        for i in 0..1_000u64 {
            table.record(PrefixKey(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), i as u32, i);
        }
        assert!(table.live_entries(1_000) <= 8);
        // The most recent record survives its set's evictions.
        assert_eq!(table.get(PrefixKey(999u64.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 1_000), Some(999));
    }

    #[test]
    fn forget_drops_a_machine() {
        let mut table = AffinityTable::new(16, 1_000);
        table.record(PrefixKey(1), 3u32, 0);
        table.record(PrefixKey(2), 4u32, 0);
        table.forget(3);
        assert_eq!(table.get(PrefixKey(1), 10), None);
        assert_eq!(table.get(PrefixKey(2), 10), Some(4));
    }

    #[test]
    fn token_and_byte_keys_cover_only_the_prefix() {
        assert_eq!(PrefixKey::of_tokens(&[1, 2, 3, 4], 3), PrefixKey::of_tokens(&[1, 2, 3, 9], 3));
        assert_ne!(PrefixKey::of_tokens(&[1, 2, 3], 3), PrefixKey::of_tokens(&[1, 2, 4], 3));
        assert_eq!(PrefixKey::of_bytes(b"ab", 10), PrefixKey::of_bytes(b"ab", 2));
    }
}
