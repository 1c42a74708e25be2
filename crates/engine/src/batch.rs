//! Dynamic batching: requests that arrive close together share one forward pass.
//!
//! One compute thread owns the forward passes. It blocks for the first job, then takes every
//! job that arrives until the first job has waited `window` (under load that moment has long
//! passed, so it takes what is queued and goes), sorts the inputs by length so that padding
//! stays small, and runs them in sub-batches of at most `max_batch` sequences.

use crate::bert::Embedder;
use crate::metrics::Metrics;
use crate::EngineError;
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
}

// === impl Batcher ===

impl Batcher {
    pub fn spawn(embedder: Embedder, config: BatchConfig, metrics: Metrics) -> Self {
        let embedder = Arc::new(embedder);
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let worker = embedder.clone();
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("colo-batcher".into())
            .spawn(move || run(&worker, rx, config, &worker_metrics))
            .expect("spawning the batcher thread");
        Self { embedder, tx, metrics }
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Embeds tokenized inputs, batched with whatever else is in flight.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let job = Job { inputs, arrived: Instant::now(), reply };
        match self.tx.try_send(job) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(TrySendError::Full(_)) => {
                return Err(EngineError::Overloaded(format!("{QUEUE_CAPACITY} requests are already queued")))
            }
            Err(TrySendError::Disconnected(_)) => return Err(EngineError::Internal("batcher thread stopped".into())),
        };
        rx.await.map_err(|_| EngineError::Internal("batcher dropped the request".into()))?
    }
}

fn run(embedder: &Embedder, rx: mpsc::Receiver<Job>, config: BatchConfig, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let deadline = first.arrived + config.window;
        let mut n_inputs = first.inputs.len();
        let mut jobs = vec![first];
        while n_inputs < config.max_batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = if wait.is_zero() { rx.try_recv().map_err(|_| RecvTimeoutError::Timeout) } else { rx.recv_timeout(wait) };
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
    let mut order: Vec<(usize, usize)> =
        jobs.iter().enumerate().flat_map(|(j, job)| (0..job.inputs.len()).map(move |i| (j, i))).collect();
    order.sort_by_key(|&(j, i)| jobs[j].inputs[i].len());

    let mut results: Vec<Vec<Option<Vec<f32>>>> = jobs.iter().map(|job| vec![None; job.inputs.len()]).collect();
    let mut failure = None;
    for group in order.chunks(max_batch.max(1)) {
        let batch: Vec<&[u32]> = group.iter().map(|&(j, i)| jobs[j].inputs[i].as_slice()).collect();
        metrics.batch_size.observe(batch.len() as f64);
        match embedder.embed(&batch) {
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
