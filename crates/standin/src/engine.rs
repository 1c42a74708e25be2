//! The simulated engine: its life phase (loading, ready, asleep, dead), the admission queue bounded
//! by running sequences and a KV budget, the prefix cache, and each sequence's timed prefill and
//! decode. Time is tokio's, so tests on a paused clock run it instantly and exactly.

use crate::config::{Config, Flavor};
use crate::error::ApiError;
use crate::prefix::{usable_blocks, PrefixCache};
use crate::text::{block_hashes, digest, output_word};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

pub use crate::metrics::{Histogram, Snapshot, Stats};

/// Where the engine is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Loading weights at start.
    Loading,
    Ready,
    /// Asleep (vLLM sleep, SGLang released memory, llama-server idle-unloaded).
    Asleep(Sleep),
    /// Waking from sleep, or llama-server reloading after its idle sleep.
    Waking,
    /// The engine died; the process will exit.
    Dead,
}

/// What a sleeping engine has let go of: vLLM's level, and which parts (`true`: still asleep),
/// which its tagged `wake_up` brings back one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sleep {
    pub level: u8,
    pub weights: bool,
    pub kv_cache: bool,
}

/// What a sequence sends to the response that waits for it.
#[derive(Debug)]
pub enum Event {
    Token(&'static str),
    Done,
    Failed(String),
}

/// A sequence to run: its prompt tokens, how many to generate, and its answer's seed.
pub struct Sequence {
    pub tokens: Vec<u64>,
    pub max_tokens: usize,
    pub seed: u64,
}

/// A notice to every sequence in flight that it is over: the engine slept or died.
#[derive(Clone, Debug, Default)]
struct Abort {
    count: u64,
    reason: String,
}

struct Waiter {
    id: u64,
    need: usize,
    admitted: oneshot::Sender<()>,
}

/// Everything sequences share, behind one lock held only for bookkeeping.
struct Core {
    running: usize,
    kv_used: usize,
    queue: VecDeque<Waiter>,
    /// Requests waiting for the engine to wake or reload before they can queue.
    held: usize,
    next_id: u64,
    cache: PrefixCache,
    last_active: Instant,
    stats: Stats,
}

pub struct Engine {
    pub config: Config,
    core: Mutex<Core>,
    phase: watch::Sender<Phase>,
    aborts: watch::Sender<Abort>,
    /// Signalled whenever a sequence or held request leaves, for those waiting for the engine to drain.
    left: Notify,
    /// Generation requests taken so far, for `--die-after` and injected failures.
    arrivals: AtomicU64,
}

// === impl Engine ===

impl Engine {
    pub fn new(config: Config) -> Arc<Engine> {
        let stats = Stats::new(config.flavor);
        let core = Core {
            running: 0,
            kv_used: 0,
            queue: VecDeque::new(),
            held: 0,
            next_id: 0,
            cache: PrefixCache::new(config.cache_blocks),
            last_active: Instant::now(),
            stats,
        };
        Arc::new(Engine {
            config,
            core: Mutex::new(core),
            phase: watch::Sender::new(Phase::Loading),
            aborts: watch::Sender::new(Abort::default()),
            left: Notify::new(),
            arrivals: AtomicU64::new(0),
        })
    }

    /// The lock is only held for bookkeeping that cannot panic, so a poisoned lock still holds
    /// consistent state and is taken as it is.
    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Moves to phase `to` if the phase now is one `from` accepts; returns whether it did.
    pub fn replace_if(&self, from: impl FnOnce(&Phase) -> bool, to: Phase) -> bool {
        self.phase.send_if_modified(|phase| {
            if from(phase) {
                *phase = to;
                true
            } else {
                false
            }
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        let core = self.core();
        Snapshot {
            running: core.running,
            waiting: core.queue.len() + core.held,
            kv_used: core.kv_used,
            cached_blocks: core.cache.len(),
            stats: core.stats.clone(),
        }
    }

    /// Requests running, queued or held.
    pub fn busy(&self) -> bool {
        let core = self.core();
        core.running + core.queue.len() + core.held > 0
    }

    /// Waits until nothing runs, queues or is held. Bounded by the requests in flight, which all
    /// end: each runs a fixed number of timed steps.
    pub async fn drained(&self) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if !self.busy() {
                return;
            }
            left.await;
        }
    }

    pub fn drop_prefix_cache(&self) {
        self.core().cache.clear();
    }

    /// Ends every sequence in flight with `reason`.
    pub fn abort_all(&self, reason: &str) {
        self.aborts.send_modify(|abort| {
            abort.count += 1;
            abort.reason = reason.to_string();
        });
    }

    /// The engine dies: health turns 503, requests fail, and the server exits.
    pub fn die(&self) {
        self.set_phase(Phase::Dead);
        self.abort_all("EngineDeadError: the engine died (--die-after)");
    }

    /// Counts a generation request in, returning its number (from 1).
    pub fn arrive(&self) -> u64 {
        self.core().last_active = Instant::now();
        self.arrivals.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Waits until the engine can take a generation request, or says why it cannot. llama-server
    /// reloads a model it unloaded when idle and holds the request meanwhile; vLLM and SGLang
    /// refuse them while asleep, as the real vLLM fails them.
    pub async fn gate(self: &Arc<Self>) -> Result<(), ApiError> {
        match self.phase() {
            Phase::Ready => return Ok(()),
            Phase::Loading => return Err(ApiError::Unavailable("Loading model".to_string())),
            Phase::Dead => return Err(dead()),
            Phase::Asleep(_) | Phase::Waking if self.config.flavor != Flavor::Llama => {
                return Err(ApiError::Unavailable(
                    "the engine is asleep; wake it first (vLLM: POST /wake_up, SGLang: POST /resume_memory_occupation)".to_string(),
                ))
            }
            Phase::Asleep(_) | Phase::Waking => {}
        }
        self.core().held += 1;
        let _held = Held(self);
        // The first request to find the model unloaded starts the reload; the others wait for it.
        if self.replace_if(|p| matches!(p, Phase::Asleep(_)), Phase::Waking) {
            let engine = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(engine.config.load).await;
                engine.replace_if(|p| *p == Phase::Waking, Phase::Ready);
            });
        }
        let mut phase = self.watch_phase();
        let now = phase
            .wait_for(|p| !matches!(p, Phase::Asleep(_) | Phase::Waking))
            .await
            .map(|p| *p)
            .unwrap_or(Phase::Dead);
        match now {
            Phase::Ready => Ok(()),
            Phase::Dead => Err(dead()),
            _ => Err(ApiError::Unavailable("Loading model".to_string())),
        }
    }

    /// Starts a sequence; its tokens, then `Done` or `Failed`, arrive on the returned channel.
    /// Dropping the receiver ends the sequence and frees its place.
    pub fn start(self: &Arc<Self>, sequence: Sequence, arrival: Instant) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut aborts = self.aborts.subscribe();
        // Sleep and death change the phase before they abort, so a sequence that subscribed above
        // either sees the new phase here or is aborted later: none slips past a sleep (a request
        // that passed the gate on another thread just before it).
        let refused = match self.phase() {
            Phase::Dead => Some(dead().message()),
            Phase::Asleep(_) | Phase::Waking if self.config.flavor != Flavor::Llama => {
                Some("aborted: the engine was put to sleep".to_string())
            }
            _ => None,
        };
        if let Some(reason) = refused {
            let _ = tx.send(Event::Failed(reason));
            return rx;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = engine.run(&sequence, arrival, &tx) => {}
                _ = aborts.changed() => {
                    let reason = aborts.borrow().reason.clone();
                    let _ = tx.send(Event::Failed(reason));
                }
                () = tx.closed() => {}
            }
        });
        rx
    }

    /// One sequence: queue for a place, prefill what the prefix cache does not hold, then one token
    /// per inter-token interval.
    async fn run(&self, sequence: &Sequence, arrival: Instant, tx: &mpsc::UnboundedSender<Event>) {
        let config = &self.config;
        let prompt = sequence.tokens.len();
        let ticket = self.admit(prompt + sequence.max_tokens).await;
        let blocks = block_hashes(&config.served_name, &sequence.tokens, config.block_tokens);
        let hit = self.lookup(&blocks, prompt);
        let uncached = prompt - hit;
        let prefill = config.ttft + config.prefill_per_token.saturating_mul(u32::try_from(uncached).unwrap_or(u32::MAX));
        tokio::time::sleep(prefill).await;
        self.prefilled(&blocks, prompt, uncached, prefill, arrival.elapsed());
        let seed = digest(&sequence.tokens);
        for i in 0..sequence.max_tokens {
            if i > 0 {
                tokio::time::sleep(config.itl).await;
            }
            self.core().stats.generation_tokens += 1;
            if tx.send(Event::Token(output_word(config.seed, seed, sequence.seed, i))).is_err() {
                return;
            }
        }
        // The place is given back before the answer ends, so a client that reads the metrics after
        // its answer sees its sequence gone.
        drop(ticket);
        {
            let mut core = self.core();
            core.stats.finished += 1;
            let steps = u32::try_from(sequence.max_tokens.saturating_sub(1)).unwrap_or(u32::MAX);
            core.stats.decode_seconds += config.itl.saturating_mul(steps).as_secs_f64();
        }
        let _ = tx.send(Event::Done);
    }

    /// Queues for a place among the running sequences and in the KV budget, first come first
    /// served (a head that does not fit blocks those behind it, as vLLM's scheduler does).
    async fn admit(&self, need: usize) -> Ticket<'_> {
        let (admitted, rx) = oneshot::channel();
        let id = {
            let mut core = self.core();
            let id = core.next_id;
            core.next_id += 1;
            core.queue.push_back(Waiter { id, need, admitted });
            core.pump(&self.config);
            id
        };
        let ticket = Ticket { engine: self, id, need };
        // The sender is dropped unsent only when the ticket takes its waiter out of the queue, so
        // an error here cannot happen while the ticket lives; either way the ticket's drop settles it.
        let _ = rx.await;
        ticket
    }

    /// How many prompt tokens the prefix cache saves this sequence; counts the query and the hits.
    fn lookup(&self, blocks: &[u64], prompt: usize) -> usize {
        let usable = usable_blocks(prompt, self.config.block_tokens).min(blocks.len());
        let mut core = self.core();
        let hit = core.cache.longest_prefix(&blocks[..usable]) * self.config.block_tokens;
        core.stats.record_lookup(prompt, hit);
        hit
    }

    /// Bookkeeping after a prefill: its blocks enter the cache, its time to first token is observed.
    fn prefilled(&self, blocks: &[u64], prompt: usize, uncached: usize, prefill: Duration, ttft: Duration) {
        let mut core = self.core();
        core.cache.insert(blocks);
        core.stats.prompt_tokens += prompt as u64;
        core.stats.computed_prompt_tokens += uncached as u64;
        core.stats.prompt_seconds += prefill.as_secs_f64();
        core.stats.ttft.observe(ttft.as_secs_f64());
    }

    /// llama-server's `--sleep-idle-seconds`: unloads after `idle` without requests. Runs for the
    /// server's life; every turn of the loop waits on time or on requests, never spins.
    pub async fn sleep_when_idle(self: Arc<Self>, idle: Duration) {
        let mut phase = self.watch_phase();
        loop {
            match phase.wait_for(|p| matches!(p, Phase::Ready | Phase::Dead)).await.map(|p| *p) {
                Ok(Phase::Ready) => {}
                _ => return,
            }
            if self.busy() {
                self.drained().await;
                continue;
            }
            let deadline = self.core().last_active + idle;
            if Instant::now() < deadline {
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            let asleep = Phase::Asleep(Sleep {
                level: 1,
                weights: true,
                kv_cache: true,
            });
            if self.replace_if(|p| *p == Phase::Ready, asleep) {
                self.drop_prefix_cache();
                tracing::info!("idle for {idle:?}: model unloaded");
            }
        }
    }
}

fn dead() -> ApiError {
    ApiError::Internal("EngineDeadError: the engine died; this server is shutting down".to_string())
}

// === impl Core ===

impl Core {
    /// Admits waiters from the head of the queue while they fit.
    fn pump(&mut self, config: &Config) {
        while let Some(front) = self.queue.front() {
            if self.running >= config.max_running || self.kv_used + front.need > config.kv_tokens {
                break;
            }
            let Some(waiter) = self.queue.pop_front() else { break };
            self.running += 1;
            self.kv_used += waiter.need;
            // A waiter that has gone gives its place back through its ticket's drop.
            let _ = waiter.admitted.send(());
        }
    }
}

/// A sequence's claim on a place: queued, or admitted (running, holding KV). Its drop gives back
/// whichever it holds. A waiter leaves the queue only here or when admitted, so "not in the queue"
/// means "admitted".
struct Ticket<'a> {
    engine: &'a Engine,
    id: u64,
    need: usize,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut core = self.engine.core();
        if let Some(at) = core.queue.iter().position(|w| w.id == self.id) {
            core.queue.remove(at);
        } else {
            core.running -= 1;
            core.kv_used -= self.need;
        }
        core.last_active = Instant::now();
        core.pump(&self.engine.config);
        drop(core);
        self.engine.left.notify_waiters();
    }
}

/// A request held while the engine reloads; counted as waiting.
struct Held<'a>(&'a Engine);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut core = self.0.core();
        core.held -= 1;
        core.last_active = Instant::now();
        drop(core);
        self.0.left.notify_waiters();
    }
}
