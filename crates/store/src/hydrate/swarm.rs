//! Which chunks a pull reads next, and from where, when the hosts of a region pull one model at
//! the same time: the pull's schedule. Pure: the peers' chunk maps, the reads that ended and
//! the time are arguments, so the rules are tested with tables.
//!
//! The rules:
//! - A chunk that a live peer holds verified is read from a peer that holds it (the fastest
//!   of those with a read slot free, by the bytes per second its reads have brought), never
//!   from the origin.
//! - A chunk that no live peer holds or is reading is read from the origin, with one exception:
//!   the hosts pulling at once split the model into shares, one per host (by their URLs, sorted;
//!   `Share`), each host reads its own share from the origin first, and a chunk of another
//!   host's share is left to that host while it is pulling and making progress (and for
//!   `START_GRACE` while it may still be starting), to be read from it once it holds it. So each
//!   chunk crosses the origin's link about once per region.
//! - A chunk that a peer is reading is left to that peer while the peer makes progress: once it
//!   holds it, it is read from there. A peer whose held chunks have not grown for `PATIENCE`
//!   is stalled: the chunks it was reading, and its share, become the origin's.
//! - Each file's first chunk (its header) comes before everything else; after that, chunks in
//!   the order the pull planned (files in turn), so a loader waiting on a file gets its front
//!   early.
//! - A peer that failed a read or sent a chunk that did not match is dropped for the pull; the
//!   chunks of a read that did not verify are read again.

use std::time::Duration;

/// How long a peer may go without a new verified chunk before the chunks it says it is reading
/// are read from the origin instead.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);
/// How long, from the start of the pull, a peer that has not yet said it is pulling keeps its
/// share (hosts woken together start a few milliseconds apart).
pub(crate) const START_GRACE: Duration = Duration::from_millis(500);

/// This host's place among the hosts that may pull at once: `owners[q]` is the peer that reads
/// share `q` of the model from the origin (`None` for this host's own share, `rank`, and for
/// shares whose owner is not known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) rank: usize,
    pub(crate) owners: Vec<Option<usize>>,
}

/// What a peer answered when asked for its chunk map.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Answer {
    /// Its chunks, per file: held verified, and being read. A peer with the whole revision
    /// answers with every chunk held.
    Map { held: Vec<Vec<bool>>, pending: Vec<Vec<bool>> },
    /// It has none of the revision and is not pulling it.
    Nothing,
    /// It did not answer (down, or too slow).
    Silent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Origin,
    Peer(usize),
}

/// One ranged read: chunks `first .. first + n` of file `file`, from `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Read {
    pub(crate) source: Source,
    pub(crate) file: usize,
    pub(crate) first: u64,
    pub(crate) n: u64,
}

/// How many reads may be in flight, and how long they may be.
///
/// Reads from peers are bounded in all (`peers`), not per peer: every read is a TCP flow into
/// this host's link, which flows share about equally, and a crowd of peer flows would starve
/// the few from the origin, whose link then idles while every host waits on it. Each peer gets
/// an equal part of them (at least `MIN_PER_PEER`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slots {
    pub(crate) origin: usize,
    pub(crate) peers: usize,
    pub(crate) range_chunks: u64,
}

/// Reads in flight that any one peer may have, however many peers share `Slots::peers`.
const MIN_PER_PEER: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Missing,
    Reading,
    Done,
}

/// What one peer said it has, and how its reads went.
#[derive(Debug, Default)]
struct PeerView {
    down: bool,
    /// Its last answer was a map.
    mapped: bool,
    reads: usize,
    /// Per file, the chunks it holds verified and those it is reading (empty until it says).
    held: Vec<Vec<bool>>,
    pending: Vec<Vec<bool>>,
    held_count: u64,
    /// When its held chunks last grew (or it first answered).
    grew_at: Option<Duration>,
    bytes: u64,
    seconds: f64,
}

impl PeerView {
    fn holds(&self, file: usize, idx: u64) -> bool {
        !self.down && self.held.get(file).and_then(|f| f.get(idx as usize)).copied().unwrap_or(false)
    }

    /// Whether it is pulling and making progress.
    fn progressing(&self, now: Duration) -> bool {
        !self.down && self.mapped && self.grew_at.is_some_and(|at| now.saturating_sub(at) < PATIENCE)
    }

    /// Whether it keeps its share of the origin reads: it is progressing, or it has not said it
    /// is pulling and the pull is young.
    fn keeps_share(&self, now: Duration) -> bool {
        self.progressing(now) || (!self.down && !self.mapped && now < START_GRACE)
    }

    /// Whether it is reading the chunk and still making progress.
    fn will_hold(&self, file: usize, idx: u64, now: Duration) -> bool {
        self.progressing(now) && self.pending.get(file).and_then(|f| f.get(idx as usize)).copied().unwrap_or(false)
    }

    /// Bytes per second its reads have brought; unmeasured peers come first, to be measured.
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds
        } else {
            f64::INFINITY
        }
    }
}

#[derive(Debug)]
pub(crate) struct Schedule {
    state: Vec<Vec<State>>,
    /// Every chunk to fetch, in the order the pull wants them: heads first, then files in turn.
    order: Vec<(usize, u64)>,
    /// `order[..heads]` are the files' first missing chunks.
    heads: usize,
    /// Each chunk's place in `order`, by file and index (`usize::MAX` for chunks not fetched).
    pos: Vec<Vec<usize>>,
    /// Where each share begins in `order` (after the heads), and where the last ends.
    bounds: Vec<usize>,
    share: Share,
    /// `order[..front]` are all done.
    front: usize,
    peers: Vec<PeerView>,
    left: u64,
    origin_reads: usize,
}

// === impl Schedule ===

impl Schedule {
    /// A schedule for the `missing` chunk indices of each file (ascending), with `peers` peers,
    /// for the host whose place is `share`; `run` chunks of a file come together in the order
    /// before the next file's.
    pub(crate) fn new(missing: &[Vec<u64>], peers: usize, share: Share, run: u64) -> Self {
        let mut state: Vec<Vec<State>> = Vec::with_capacity(missing.len());
        for chunks in missing {
            let n = chunks.iter().max().map_or(0, |m| m + 1) as usize;
            let mut states = vec![State::Done; n];
            for &i in chunks {
                states[i as usize] = State::Missing;
            }
            state.push(states);
        }
        let mut order: Vec<(usize, u64)> = missing
            .iter()
            .enumerate()
            .filter_map(|(f, chunks)| chunks.first().map(|&i| (f, i)))
            .collect();
        let heads = order.len();
        let mut rest: Vec<&[u64]> = missing.iter().map(|c| c.get(1..).unwrap_or(&[])).collect();
        let run = run.max(1) as usize;
        while rest.iter().any(|r| !r.is_empty()) {
            for (f, chunks) in rest.iter_mut().enumerate() {
                let take = run.min(chunks.len());
                order.extend(chunks[..take].iter().map(|&i| (f, i)));
                *chunks = &chunks[take..];
            }
        }
        let mut pos: Vec<Vec<usize>> = state.iter().map(|s| vec![usize::MAX; s.len()]).collect();
        for (k, &(file, idx)) in order.iter().enumerate() {
            pos[file][idx as usize] = k;
        }
        let mut owners = share.owners;
        if owners.is_empty() {
            owners.push(None);
        }
        let hosts = owners.len();
        let bounds = (0..=hosts).map(|q| heads + (order.len() - heads) * q / hosts).collect();
        let share = Share {
            rank: share.rank.min(hosts - 1),
            owners,
        };
        let left = order.len() as u64;
        Self {
            state,
            order,
            heads,
            pos,
            bounds,
            share,
            front: 0,
            peers: (0..peers).map(|_| PeerView::default()).collect(),
            left,
            origin_reads: 0,
        }
    }

    /// Chunks not yet verified.
    pub(crate) fn left(&self) -> u64 {
        self.left
    }

    /// Records a peer's answer to the question of which chunks it has.
    pub(crate) fn see(&mut self, peer: usize, answer: Answer, now: Duration) {
        let Some(view) = self.peers.get_mut(peer) else { return };
        let (held, pending) = match answer {
            Answer::Map { held, pending } => (held, pending),
            Answer::Nothing | Answer::Silent => (Vec::new(), Vec::new()),
        };
        let count = held.iter().flatten().filter(|h| **h).count() as u64;
        view.mapped = !held.is_empty();
        if view.mapped && (view.grew_at.is_none() || count > view.held_count) {
            view.grew_at = Some(now);
        }
        view.held_count = count;
        view.held = held;
        view.pending = pending;
    }

    /// Drops a peer for the rest of the pull.
    pub(crate) fn drop_peer(&mut self, peer: usize) {
        if let Some(view) = self.peers.get_mut(peer) {
            view.down = true;
        }
    }

    pub(crate) fn peer_down(&self, peer: usize) -> bool {
        self.peers.get(peer).is_none_or(|p| p.down)
    }

    /// The next read to start, if a slot is free and a chunk can be read now; its chunks are
    /// marked as being read.
    pub(crate) fn next(&mut self, slots: Slots, now: Duration) -> Option<Read> {
        while self.front < self.order.len() && self.is(self.order[self.front], State::Done) {
            self.front += 1;
        }
        let read = self.next_from_peer(slots).or_else(|| self.next_from_origin(slots, now))?;
        for i in read.first..read.first + read.n {
            self.state[read.file][i as usize] = State::Reading;
        }
        match read.source {
            Source::Origin => self.origin_reads += 1,
            Source::Peer(p) => self.peers[p].reads += 1,
        }
        Some(read)
    }

    /// A read ended: `verified` of its chunks are done, the rest are to be read again.
    /// `bytes` and `seconds` measure its source.
    pub(crate) fn finished(&mut self, read: Read, verified: &[u64], bytes: u64, seconds: f64) {
        for i in read.first..read.first + read.n {
            let state = &mut self.state[read.file][i as usize];
            if verified.contains(&i) {
                if *state != State::Done {
                    self.left -= 1;
                }
                *state = State::Done;
            } else if *state == State::Reading {
                *state = State::Missing;
            }
        }
        match read.source {
            Source::Origin => self.origin_reads -= 1,
            Source::Peer(p) => {
                let view = &mut self.peers[p];
                view.reads -= 1;
                view.bytes += bytes;
                view.seconds += seconds;
            }
        }
    }

    fn is(&self, (file, idx): (usize, u64), state: State) -> bool {
        self.state[file][idx as usize] == state
    }

    /// The earliest missing chunk that a peer with a free slot holds, from the fastest such
    /// peer, with the chunks after it that the same peer holds.
    fn next_from_peer(&self, slots: Slots) -> Option<Read> {
        let serving = self.peers.iter().filter(|p| !p.down && p.held_count > 0).count();
        let in_flight: usize = self.peers.iter().map(|p| p.reads).sum();
        if serving == 0 || in_flight >= slots.peers.max(MIN_PER_PEER) {
            return None;
        }
        let per_peer = (slots.peers / serving).max(MIN_PER_PEER);
        for &(file, idx) in &self.order[self.front..] {
            if !self.is((file, idx), State::Missing) {
                continue;
            }
            let best = (0..self.peers.len())
                .filter(|&p| self.peers[p].reads < per_peer && self.peers[p].holds(file, idx))
                .max_by(|&a, &b| {
                    let (pa, pb) = (&self.peers[a], &self.peers[b]);
                    pa.rate().total_cmp(&pb.rate()).then(pb.reads.cmp(&pa.reads)).then(b.cmp(&a))
                });
            if let Some(peer) = best {
                let n = self.run_from(file, idx, slots.range_chunks, |i| self.peers[peer].holds(file, i));
                return Some(Read {
                    source: Source::Peer(peer),
                    file,
                    first: idx,
                    n,
                });
            }
        }
        None
    }

    /// The first chunk in this host's origin order (the heads, then its own share, then the
    /// shares after it, wrapping) that no live peer holds or is reading and whose share's owner
    /// does not keep it, with the chunks after it of which the same is true.
    fn next_from_origin(&self, slots: Slots, now: Duration) -> Option<Read> {
        if self.origin_reads >= slots.origin {
            return None;
        }
        let hosts = self.share.owners.len();
        let kept = |q: usize| self.share.owners[q].is_some_and(|p| self.peers[p].keeps_share(now));
        // Whether the origin may be asked for a chunk: missing, no live peer holds it or is
        // reading it, and it is a head or in a share no progressing peer keeps.
        let origin_may = |file: usize, idx: u64| {
            let k = self.pos[file][idx as usize];
            self.is((file, idx), State::Missing)
                && (k < self.heads || !kept(self.bounds.partition_point(|&b| b <= k) - 1))
                && !self.peers.iter().any(|p| p.holds(file, idx) || p.will_hold(file, idx, now))
        };
        // A share is spread over every origin read rather than a few long ones.
        let own = (self.bounds[self.share.rank + 1] - self.bounds[self.share.rank]) as u64;
        let longest = slots.range_chunks.min(own.div_ceil(slots.origin.max(1) as u64)).max(1);
        let heads = (self.front..self.heads).map(|k| (k, 1));
        let shares = (0..hosts)
            .map(|i| (self.share.rank + i) % hosts)
            .filter(|&q| !kept(q))
            .flat_map(|q| (self.bounds[q].max(self.front)..self.bounds[q + 1]).map(move |k| (k, longest)));
        for (k, longest) in heads.chain(shares) {
            let (file, idx) = self.order[k];
            if !origin_may(file, idx) {
                continue;
            }
            let n = self.run_from(file, idx, longest, |i| origin_may(file, i));
            return Some(Read {
                source: Source::Origin,
                file,
                first: idx,
                n,
            });
        }
        None
    }

    /// How many chunks from `idx` on (at most `longest`) are missing and pass `ok`.
    fn run_from(&self, file: usize, idx: u64, longest: u64, ok: impl Fn(u64) -> bool) -> u64 {
        let states = &self.state[file];
        let mut n = 1;
        while n < longest.max(1) {
            let i = idx + n;
            if states.get(i as usize) != Some(&State::Missing) || !ok(i) {
                break;
            }
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOTS: Slots = Slots {
        origin: 1,
        peers: 1,
        range_chunks: 4,
    };
    const T0: Duration = Duration::ZERO;

    fn all(n: u64) -> Vec<u64> {
        (0..n).collect()
    }

    fn alone() -> Share {
        Share {
            rank: 0,
            owners: vec![None],
        }
    }

    /// A one-file map of `n` chunks.
    fn map(n: usize, held: impl Fn(usize) -> bool, pending: impl Fn(usize) -> bool) -> Answer {
        Answer::Map {
            held: vec![(0..n).map(held).collect()],
            pending: vec![(0..n).map(pending).collect()],
        }
    }

    fn read(source: Source, file: usize, first: u64, n: u64) -> Read {
        Read { source, file, first, n }
    }

    fn done(s: &mut Schedule, r: Read) {
        s.finished(r, &(r.first..r.first + r.n).collect::<Vec<_>>(), 0, 0.0);
    }

    #[test]
    fn heads_come_first_then_files_in_turn() {
        let mut s = Schedule::new(&[all(6), all(6)], 0, alone(), 2);
        let mut reads = Vec::new();
        while let Some(r) = s.next(SLOTS, T0) {
            reads.push((r.file, r.first, r.n));
            done(&mut s, r);
        }
        assert_eq!(reads[..2], [(0, 0, 1), (1, 0, 1)]);
        assert_eq!(reads[2], (0, 1, 4), "a file's run is as long as the range allows");
        assert_eq!(s.left(), 0);
    }

    #[test]
    fn hosts_starting_together_begin_at_their_own_shares() {
        let firsts: Vec<u64> = (0..4)
            .map(|rank| {
                let share = Share {
                    rank,
                    owners: vec![None; 4],
                };
                let mut s = Schedule::new(&[all(41)], 0, share, 1);
                let head = s.next(SLOTS, T0).unwrap();
                done(&mut s, head);
                s.next(SLOTS, T0).unwrap().first
            })
            .collect();
        assert_eq!(firsts, vec![1, 11, 21, 31]);
    }

    #[test]
    fn a_share_is_left_to_its_owner_while_it_pulls() {
        // Chunk 0 is the head; shares are chunks 1..5 (this host's) and 5..9 (peer 0's).
        let share = Share {
            rank: 0,
            owners: vec![None, Some(0)],
        };
        let slots = Slots { origin: 1, ..SLOTS };
        let mut s = Schedule::new(&[all(9)], 1, share.clone(), 4);
        let head = s.next(slots, T0).unwrap();
        assert_eq!(head, read(Source::Origin, 0, 0, 1));
        done(&mut s, head);
        assert_eq!(s.next(slots, T0), Some(read(Source::Origin, 0, 1, 4)));
        let slots = Slots { origin: 4, ..SLOTS };
        // The peer has not answered yet, but the pull is young: its share waits.
        assert_eq!(s.next(slots, T0), None);
        // It says it is reading its share, and makes progress: still its own.
        s.see(0, map(9, |i| i == 5, |i| i > 5), START_GRACE);
        assert_eq!(s.next(slots, START_GRACE), Some(read(Source::Peer(0), 0, 5, 1)));
        assert_eq!(s.next(slots, START_GRACE), None);
        // Stalled past the patience: the origin takes the rest of its share.
        let late = START_GRACE + PATIENCE;
        // (A share is spread over the origin's read slots: 4 chunks over 4 slots.)
        assert_eq!(s.next(slots, late), Some(read(Source::Origin, 0, 6, 1)));

        // A peer that never says it is pulling keeps its share only for the grace.
        let slots = Slots { origin: 1, ..SLOTS };
        let mut s = Schedule::new(&[all(9)], 1, share, 4);
        s.see(0, Answer::Nothing, T0);
        for _ in 0..2 {
            let r = s.next(slots, T0).unwrap();
            done(&mut s, r);
        }
        assert_eq!(s.next(slots, T0), None);
        assert_eq!(s.next(slots, START_GRACE), Some(read(Source::Origin, 0, 5, 4)));
    }

    #[test]
    fn chunks_a_peer_holds_come_from_it_and_never_from_the_origin() {
        let mut s = Schedule::new(&[all(8)], 1, alone(), 4);
        s.see(0, map(8, |i| i < 4, |i| i >= 4), T0);
        let slots = Slots { origin: 4, ..SLOTS };
        assert_eq!(s.next(slots, T0), Some(read(Source::Peer(0), 0, 0, 4)));
        // Everything else is being read by the peer, which is making progress: wait for it.
        assert_eq!(s.next(slots, T0), None);
        // Once it has been quiet for the patience, its pending chunks go to the origin (spread
        // over its read slots: 7 chunks over 4).
        assert_eq!(s.next(slots, PATIENCE), Some(read(Source::Origin, 0, 4, 2)));
    }

    #[test]
    fn a_dropped_peer_leaves_its_chunks_to_the_origin_and_a_failed_read_is_read_again() {
        let mut s = Schedule::new(&[all(4)], 1, alone(), 4);
        s.see(0, map(4, |_| true, |_| false), T0);
        let r = s.next(SLOTS, T0).unwrap();
        assert_eq!(r, read(Source::Peer(0), 0, 0, 4));
        // Two chunks verified, then the peer failed.
        s.finished(r, &[0, 1], 100, 1.0);
        s.drop_peer(0);
        assert_eq!(s.left(), 2);
        assert_eq!(s.next(SLOTS, T0), Some(read(Source::Origin, 0, 2, 2)));
    }

    #[test]
    fn the_faster_peer_gets_the_next_read() {
        let mut s = Schedule::new(&[all(6)], 2, alone(), 1);
        for p in 0..2 {
            s.see(p, map(6, |_| true, |_| false), T0);
        }
        let slots = Slots { peers: 4, ..SLOTS };
        // Both unmeasured: one read each, the lower index first among equals.
        let (a, b) = (s.next(slots, T0).unwrap(), s.next(slots, T0).unwrap());
        assert_eq!((a.source, b.source), (Source::Peer(0), Source::Peer(1)));
        s.finished(a, &[a.first], 1_000, 1.0);
        s.finished(b, &[b.first], 1_000, 0.1);
        assert_eq!(s.next(slots, T0).unwrap().source, Source::Peer(1));
    }

    #[test]
    fn reads_from_peers_share_one_budget() {
        let slots = Slots {
            origin: 0,
            peers: 8,
            range_chunks: 1,
        };
        let mut s = Schedule::new(&[all(40)], 3, alone(), 1);
        for p in 0..3 {
            s.see(p, map(40, |_| true, |_| false), T0);
        }
        let mut per = [0; 3];
        while let Some(r) = s.next(slots, T0) {
            if let Source::Peer(p) = r.source {
                per[p] += 1;
            }
        }
        assert_eq!(
            per,
            [2, 2, 2],
            "three peers share the budget of 8, each at most 8 / 3 (and at least 2)"
        );
        // A peer alone may take the whole budget.
        let mut s = Schedule::new(&[all(40)], 1, alone(), 1);
        s.see(0, map(40, |_| true, |_| false), T0);
        assert_eq!(std::iter::from_fn(|| s.next(slots, T0)).count(), 8);
    }

    #[test]
    fn a_peer_that_joins_later_is_read_from_once_it_holds_chunks() {
        let mut s = Schedule::new(&[all(8)], 1, alone(), 2);
        s.see(0, Answer::Silent, T0);
        let first = s.next(SLOTS, T0).unwrap();
        assert_eq!(first.source, Source::Origin);
        // The peer starts and soon holds the back half.
        s.see(0, map(8, |i| i >= 4, |_| false), T0);
        assert_eq!(s.next(SLOTS, T0), Some(read(Source::Peer(0), 0, 4, 4)));
        assert!(s.peers[0].reads == 1 && s.origin_reads == 1);
    }
}
