//! Continuous batching for text generation.
//!
//! One scheduler thread owns the model. Each step it admits waiting requests whose KV cache
//! fits the budget, drops sequences whose client went away, runs one packed step for every
//! running sequence (prefill and decode together), samples, and sends each new token to its
//! request. A sequence that finishes or is cancelled leaves the batch before the next step, and
//! its KV cache is freed with it.

use crate::llama::{Llama, SeqCache, StepInput};
use crate::EngineError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError, TrySendError};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub ignore_eos: bool,
    pub events: UnboundedSender<GenEvent>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    Token(u32),
    Finished(FinishReason),
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token (or, in the API layer, a stop string).
    Stop,
    /// `max_tokens` were generated.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// Bytes of KV cache all running sequences may hold together.
    pub kv_budget_bytes: usize,
    /// Requests that may wait for room; past this they are refused with 503.
    pub max_waiting: usize,
}

/// Counters the API reports on `/metrics` and in the `colo-load` header.
#[derive(Default)]
pub struct GenStats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_used_bytes: AtomicUsize,
    pub generated_tokens: AtomicUsize,
    pub steps: AtomicUsize,
}

#[derive(Clone)]
pub struct Generator {
    tx: mpsc::SyncSender<GenRequest>,
    pub stats: Arc<GenStats>,
    pub config: GenConfig,
    kv_bytes_per_token: usize,
}

struct Seq {
    request: GenRequest,
    cache: SeqCache,
    next: Vec<u32>,
    generated: usize,
    kv_bytes: usize,
    rng: StdRng,
}

// === impl Generator ===

impl Generator {
    /// Starts the scheduler thread, which owns the model's forward passes. Fails only when the
    /// system refuses a thread (a thread or memory limit).
    pub fn spawn(model: Arc<Llama>, config: GenConfig) -> Result<Self, EngineError> {
        let (tx, rx) = mpsc::sync_channel(config.max_waiting.max(1));
        let stats = Arc::new(GenStats::default());
        let kv_bytes_per_token = model.kv_bytes_per_token();
        let worker_stats = stats.clone();
        // On a worker of a pool of its own, whose other workers spin during each step.
        crate::workers::spawn_in_pool("colo-gen", move || run(&model, rx, config, &worker_stats))?;
        Ok(Self {
            tx,
            stats,
            config,
            kv_bytes_per_token,
        })
    }

    /// KV bytes a request of this size holds while it runs.
    pub fn kv_bytes_for(&self, tokens: usize) -> usize {
        tokens * self.kv_bytes_per_token
    }

    pub fn submit(&self, request: GenRequest) -> Result<(), EngineError> {
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => EngineError::Overloaded(format!(
                        "{} requests are already waiting for KV cache room",
                        self.config.max_waiting
                    )),
                    TrySendError::Disconnected(_) => EngineError::Internal("scheduler thread stopped".into()),
                })
            }
        }
    }
}

fn run(model: &Llama, rx: mpsc::Receiver<GenRequest>, config: GenConfig, stats: &GenStats) {
    let mut running: Vec<Seq> = Vec::new();
    let mut pending: Option<GenRequest> = None;
    let mut kv_used = 0usize;
    loop {
        // Admit what fits. With nothing running, block for the next request.
        loop {
            let request = match pending.take() {
                Some(r) => r,
                None if running.is_empty() => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                },
                None => match rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                },
            };
            if request.events.is_closed() {
                stats.waiting.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let capacity = request.prompt.len() + request.max_tokens;
            let kv_bytes = capacity * model.kv_bytes_per_token();
            if kv_used + kv_bytes > config.kv_budget_bytes && !running.is_empty() {
                pending = Some(request);
                break;
            }
            stats.waiting.fetch_sub(1, Ordering::SeqCst);
            kv_used += kv_bytes;
            let rng = StdRng::seed_from_u64(request.sampling.seed);
            let next = request.prompt.clone();
            running.push(Seq {
                cache: model.new_cache(capacity),
                request,
                next,
                generated: 0,
                kv_bytes,
                rng,
            });
        }
        // A client that went away frees its sequence now, before another step is spent on it.
        running.retain(|seq| {
            let keep = !seq.request.events.is_closed();
            if !keep {
                kv_used -= seq.kv_bytes;
            }
            keep
        });
        stats.running.store(running.len(), Ordering::SeqCst);
        stats.kv_used_bytes.store(kv_used, Ordering::SeqCst);
        if running.is_empty() {
            continue;
        }

        let logits = {
            let mut inputs: Vec<StepInput> = running
                .iter_mut()
                .map(|s| StepInput {
                    tokens: &s.next,
                    cache: &mut s.cache,
                })
                .collect();
            crate::workers::with_helpers_spinning(|| model.step(&mut inputs).and_then(|l| l.to_vec2::<f32>()))
        };
        stats.steps.fetch_add(1, Ordering::Relaxed);
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                for seq in running.drain(..) {
                    let _ = seq.request.events.send(GenEvent::Failed(e.to_string()));
                }
                kv_used = 0;
                continue;
            }
        };
        let mut finished = Vec::new();
        for (idx, (seq, row)) in running.iter_mut().zip(logits).enumerate() {
            let token = sample(&row, &seq.request.sampling, &mut seq.rng);
            seq.generated += 1;
            stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let _ = seq.request.events.send(GenEvent::Token(token));
            let eos = !seq.request.ignore_eos && model.config.eos_ids.contains(&token);
            if eos || seq.generated >= seq.request.max_tokens {
                let reason = if eos { FinishReason::Stop } else { FinishReason::Length };
                let _ = seq.request.events.send(GenEvent::Finished(reason));
                finished.push(idx);
            }
            seq.next = vec![token];
        }
        for idx in finished.into_iter().rev() {
            kv_used -= running.swap_remove(idx).kv_bytes;
        }
        stats.running.store(running.len(), Ordering::SeqCst);
        stats.kv_used_bytes.store(kv_used, Ordering::SeqCst);
    }
}

/// Greedy at temperature 0; otherwise samples from the softmax of `logits / temperature`,
/// restricted to the smallest set of tokens whose probability reaches `top_p`.
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> u32 {
    if sampling.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l - max) / sampling.temperature).exp()))
        .collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    if sampling.top_p < 1.0 {
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cumulative += p.1 / total;
            if cumulative >= sampling.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let mass: f32 = probs.iter().map(|p| p.1).sum();
    let mut target = rng.gen::<f32>() * mass;
    for &(token, p) in &probs {
        target -= p;
        if target <= 0.0 {
            return token;
        }
    }
    probs.last().map(|p| p.0).unwrap_or(0)
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_seeded_greedy_at_zero_and_respects_top_p() {
        let logits = vec![1.0, 3.0, 2.0, 0.5];
        let greedy = Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 1,
        };
        assert_eq!(sample(&logits, &greedy, &mut StdRng::seed_from_u64(0)), 1);
        let warm = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..32).map(|_| sample(&logits, &warm, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7), "same seed, same tokens");
        assert_ne!(draw(7), draw(8));
        // top_p small enough keeps only the most likely token.
        let narrow = Sampling {
            temperature: 1.0,
            top_p: 0.3,
            seed: 3,
        };
        let mut rng = StdRng::seed_from_u64(3);
        assert!((0..64).all(|_| sample(&logits, &narrow, &mut rng) == 1));
    }
}
