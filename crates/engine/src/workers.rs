//! The threads a model's passes run on: the loop that owns the model (the generator's
//! scheduler, the embedder's batcher) runs on a worker of a rayon pool of its own, and during a
//! pass the pool's other workers look for its parallel parts without pause.

use crate::EngineError;
use std::sync::atomic::{AtomicBool, Ordering};

/// Starts a thread named `name` that runs `run` on a worker of a new rayon pool (as many
/// threads as the global one, named `{name}-{i}`).
///
/// From a worker of the pool, a pass's parallel parts (~75 per generated token, dozens per
/// embedding batch) are pushed onto that worker's own queue and stolen by the others. From a
/// thread outside it, each part was handed in and waited for through a sleeping lock: about 8%
/// of a one-stream decode went to waking threads (docs/BENCHMARKS.md).
pub(crate) fn spawn_in_pool(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), EngineError> {
    let workers = name.to_string();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(move |i| format!("{workers}-{i}"))
        .build()
        .map_err(|e| EngineError::Internal(format!("starting the {name} threads: {e}")))?;
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || pool.install(run))
        .map_err(|e| EngineError::Internal(format!("spawning the {name} thread: {e}")))?;
    Ok(())
}

/// Runs `op` (one pass of a model) on this worker of its pool with every other worker looking
/// for work without pause until it returns; outside a pool, or alone in one, just runs it.
///
/// Between a pass's parallel parts the owning thread does short serial work (norms, residual
/// adds, gathering rows). rayon's idle workers yield about 32 times and then sleep, and waking
/// one again costs a futex call and, in a VM, an interrupt between cores: tens of microseconds,
/// many times a pass. Here each other worker takes one job for the pass's length that steals
/// the parts as they appear (`rayon::yield_now`) and, when there are none, gives its core up
/// only to threads already waiting for it (`sched_yield`: the HTTP threads that share the cores
/// still run; a pure spin measured the same, docs/BENCHMARKS.md), never sleeping, as llama.cpp's
/// threads spin between a graph's operations. Between passes they sleep as before.
pub(crate) fn with_helpers_spinning<R>(op: impl FnOnce() -> R) -> R {
    let Some(me) = rayon::current_thread_index() else {
        return op();
    };
    if rayon::current_num_threads() < 2 {
        return op();
    }
    /// Ends the helpers' jobs when the pass ends, also by a panic (the scope waits for them).
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        scope.spawn_broadcast(|_, ctx| {
            // This worker's own copy runs when it next waits for work, or at the scope's end:
            // it has the pass to run, so its copy leaves at once.
            if ctx.index() == me {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                    std::thread::yield_now();
                }
            }
        });
        let _done = Done(&done);
        op()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Runs `f` on a thread and fails if it has not finished within 20 s (a helper that never
    /// leaves would hang the scope).
    fn within_20s(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(20)).expect("the pass did not end");
    }

    #[test]
    fn passes_return_their_values_and_the_helpers_share_their_parts() {
        within_20s(|| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            pool.install(|| {
                let me = rayon::current_thread_index().unwrap();
                for _ in 0..50 {
                    let (sum, threads) = with_helpers_spinning(|| {
                        let parts: Vec<(u64, usize)> = (0..64u64)
                            .into_par_iter()
                            .map(|i| {
                                std::thread::sleep(Duration::from_micros(200));
                                (i, rayon::current_thread_index().unwrap())
                            })
                            .collect();
                        let mut threads: Vec<usize> = parts.iter().map(|p| p.1).collect();
                        threads.sort_unstable();
                        threads.dedup();
                        (parts.iter().map(|p| p.0).sum::<u64>(), threads)
                    });
                    assert_eq!(sum, 64 * 63 / 2);
                    assert!(threads.iter().any(|&t| t != me), "no other worker took a part: {threads:?}");
                }
            });
        });
    }

    #[test]
    fn a_pass_that_panics_releases_the_helpers() {
        within_20s(|| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let caught = pool.install(|| std::panic::catch_unwind(|| with_helpers_spinning(|| panic!("a failed pass"))));
            assert!(caught.is_err());
            // The pool is still usable afterwards.
            assert_eq!(
                pool.install(|| with_helpers_spinning(|| (0..100).into_par_iter().sum::<i32>())),
                4950
            );
        });
    }

    #[test]
    fn outside_a_pool_the_pass_just_runs() {
        assert_eq!(with_helpers_spinning(|| 7), 7);
    }
}
