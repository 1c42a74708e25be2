//! Dynamic batching: requests that arrive close together share one forward pass.
//!
//! One compute thread owns the forward passes. It blocks for the first job, then keeps taking
//! jobs while requests that have not yet queued are still being read or tokenized, until the
//! first job has waited `window`. A lone request therefore runs at once, and a burst is run
//! together. The inputs run in sub-batches of at most `max_batch` sequences, shortest first.

use crate::bert::Embedder;
use crate::metrics::Metrics;
use crate::EngineError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Jobs waiting for the compute thread at most; past this a request is answered 503.
const QUEUE_CAPACITY: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    pub window: Duration,
    pub max_batch: usize,
}

struct Job {
    inputs: Vec<Vec<u32>>,
    arrived: Instant,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>>,
}

#[derive(Clone)]
pub struct Batcher {
    embedder: Arc<Embedder>,
    tx: mpsc::SyncSender<Job>,
    metrics: Metrics,
    /// Requests between `Batcher::begin` and their answer.
    active: Arc<AtomicUsize>,
}

/// Counts one request as active while it lives; see `Batcher::begin`.
pub struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// === impl Batcher ===

impl Batcher {
    /// Starts the thread that runs the model's forward passes. Fails only when the system
    /// refuses a thread (a thread or memory limit).
    pub fn spawn(embedder: Embedder, config: BatchConfig, metrics: Metrics) -> Result<Self, EngineError> {
        let embedder = Arc::new(embedder);
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let active = Arc::new(AtomicUsize::new(0));
        let (worker, worker_metrics, worker_active) = (embedder.clone(), metrics.clone(), active.clone());
        // On a worker of a pool of its own, whose other workers spin during each pass.
        crate::workers::spawn_in_pool("colo-embed", move || run(&worker, rx, config, &worker_metrics, &worker_active))?;
        Ok(Self {
            embedder,
            tx,
            metrics,
            active,
        })
    }

    /// Marks a request as on its way to the batcher (it is being parsed or tokenized), so the
    /// batcher waits for it rather than starting a pass without it.
    pub fn begin(&self) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self.active.clone())
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Embeds tokenized inputs, batched with whatever else is in flight. The request stops
    /// counting as coming (`active`) once it is queued.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>, active: Active) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            arrived: Instant::now(),
            reply,
        };
        let sent = self.tx.try_send(job);
        drop(active);
        match sent {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(TrySendError::Full(_)) => return Err(EngineError::Overloaded(format!("{QUEUE_CAPACITY} requests are already queued"))),
            Err(TrySendError::Disconnected(_)) => return Err(EngineError::Internal("batcher thread stopped".into())),
        };
        rx.await.map_err(|_| EngineError::Internal("batcher dropped the request".into()))?
    }
}

fn run(embedder: &Embedder, rx: mpsc::Receiver<Job>, config: BatchConfig, metrics: &Metrics, active: &AtomicUsize) {
    while let Ok(first) = rx.recv() {
        let deadline = first.arrived + config.window;
        let mut n_inputs = first.inputs.len();
        let mut jobs = vec![first];
        while n_inputs < config.max_batch {
            // Wait only for requests that are known to be coming; take what is queued otherwise.
            let coming = active.load(Ordering::SeqCst) > jobs.len();
            let wait = if coming {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let next = if wait.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(wait)
            };
            match next {
                Ok(job) => {
                    n_inputs += job.inputs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        metrics.queue_depth.dec_by(jobs.len() as i64);
        // A client that went away no longer needs its forward pass.
        jobs.retain(|job| !job.reply.is_closed());
        run_jobs(embedder, jobs, config.max_batch, metrics);
    }
}

fn run_jobs(embedder: &Embedder, jobs: Vec<Job>, max_batch: usize, metrics: &Metrics) {
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.inputs.len()).map(move |i| (j, i)))
        .collect();
    order.sort_by_key(|&(j, i)| jobs[j].inputs[i].len());

    let mut results: Vec<Vec<Option<Vec<f32>>>> = jobs.iter().map(|job| vec![None; job.inputs.len()]).collect();
    let mut failure = None;
    for group in order.chunks(max_batch.max(1)) {
        let batch: Vec<&[u32]> = group.iter().map(|&(j, i)| jobs[j].inputs[i].as_slice()).collect();
        metrics.batch_size.observe(batch.len() as f64);
        match crate::workers::with_helpers_spinning(|| embedder.embed(&batch)) {
            Ok(vectors) => {
                for (&(j, i), v) in group.iter().zip(vectors) {
                    results[j][i] = Some(v);
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    for (job, vectors) in jobs.into_iter().zip(results) {
        let reply = match &failure {
            Some(reason) => Err(EngineError::Inference(reason.clone())),
            None => Ok(vectors.into_iter().map(|v| v.unwrap_or_default()).collect()),
        };
        let _ = job.reply.send(reply);
    }
}
