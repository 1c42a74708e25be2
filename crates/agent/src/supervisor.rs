//! One task per machine: hydrate, spawn the engine, wait for health, watch it, restart it on
//! a crash with backoff, and stop it when told. Every state change is written to the state
//! store as it happens, which is how edges learn where to route.

use crate::profile::{self, Health};
use crate::{now_ms, Agent};
use colo_core::{ColdStart, HydrationReport, Machine, MachineState, StartPhase, StartProgress};
use colo_store::no_progress;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::watch;

/// Consecutive failed starts after which the machine is marked failed.
const MAX_START_FAILURES: u32 = 3;
/// Consecutive failed health checks after which a started engine is restarted.
const MAX_HEALTH_FAILURES: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a starting machine's record shows how far its hydration has got.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

enum Outcome {
    /// The engine exited or stopped answering; restart it.
    Crashed(String),
    /// The desired state changed away from started.
    Told,
}

pub(crate) async fn run(agent: Arc<Agent>, mut machine: Machine, mut desired: watch::Receiver<MachineState>) {
    let mut backoff = Duration::from_millis(250);
    let mut start_failures = 0;
    loop {
        let want = *desired.borrow_and_update();
        match want {
            MachineState::Started => {}
            // `Stopping` is the agent shutting down: the machine stays meant to run. A machine
            // asked to suspend with no engine running is simply down.
            MachineState::Stopping | MachineState::Suspended => {
                record(&agent, &mut machine, MachineState::Stopped, &desired).await;
                match agent.retire(&machine.id, &desired) {
                    true => return,
                    false => continue,
                }
            }
            other => {
                record(&agent, &mut machine, other, &desired).await;
                match agent.retire(&machine.id, &desired) {
                    true => return,
                    false => continue,
                }
            }
        }
        // A start may have leased the machine another device while it was stopped.
        if let Ok(current) = agent.machine(&machine.id).await {
            machine.device = current.device;
        }
        record(&agent, &mut machine, MachineState::Starting, &desired).await;
        // A restart after a crash has no request behind it: its clock starts now.
        let requested_at_ms = agent.take_start_request(&machine.id).unwrap_or_else(now_ms);
        // The model stays pinned in the host cache for as long as this engine may run.
        let _pin = agent.cache.pin(machine.model.as_str(), &machine.revision);
        // The forwarder in front of the engine, if any, lives as long as this run of it.
        let (child, _forwarder) = match start(&agent, &mut machine, &mut desired, requested_at_ms).await {
            Ok(Some(started)) => started,
            Ok(None) => continue,
            Err(reason) => {
                machine.progress = None;
                start_failures += 1;
                tracing::warn!(machine = %machine.id, %reason, start_failures, "machine failed to start");
                machine.last_error = Some(reason);
                if start_failures >= MAX_START_FAILURES {
                    record(&agent, &mut machine, MachineState::Failed, &desired).await;
                    if agent.retire(&machine.id, &desired) {
                        return;
                    }
                    start_failures = 0;
                    continue;
                }
                if sleep_or_told(&mut desired, backoff).await {
                    continue;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        start_failures = 0;
        machine.healthy = true;
        record(&agent, &mut machine, MachineState::Started, &desired).await;
        let ran_since = tokio::time::Instant::now();
        match watch_engine(&agent, &mut machine, child, &mut desired).await {
            Outcome::Told => {
                record(&agent, &mut machine, MachineState::Stopping, &desired).await;
                machine.pid = None;
                machine.addr = None;
                machine.engine_addr = None;
            }
            Outcome::Crashed(reason) => {
                tracing::warn!(machine = %machine.id, %reason, "engine crashed; restarting");
                machine.restarts += 1;
                machine.last_error = Some(reason);
                machine.pid = None;
                machine.addr = None;
                machine.engine_addr = None;
                // A machine that ran for a while earns a fresh backoff.
                if ran_since.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(250);
                }
                record(&agent, &mut machine, MachineState::Starting, &desired).await;
                if !sleep_or_told(&mut desired, backoff).await {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Writes the machine with a new state. The desired state is taken from the channel so that a
/// concurrent start/stop request is never overwritten.
async fn record(agent: &Agent, machine: &mut Machine, state: MachineState, desired: &watch::Receiver<MachineState>) {
    let want = *desired.borrow();
    if want != MachineState::Stopping {
        machine.desired = want;
    }
    machine.state = state;
    machine.updated_at_ms = now_ms();
    if state != MachineState::Starting {
        machine.progress = None;
    }
    if let Err(e) = agent.save_machine(machine).await {
        tracing::error!(machine = %machine.id, error = %e, "recording machine state");
    }
}

/// Writes how far the machine's start has got, leaving its state and when it changed as they
/// are (the desired state is taken from the channel, as `record` does).
async fn note_progress(agent: &Agent, machine: &mut Machine, progress: StartProgress, desired: &watch::Receiver<MachineState>) {
    let want = *desired.borrow();
    if want != MachineState::Stopping {
        machine.desired = want;
    }
    machine.progress = Some(progress);
    if let Err(e) = agent.save_machine(machine).await {
        tracing::debug!(machine = %machine.id, error = %e, "recording a start's progress");
    }
}

/// Sleeps for `duration`; returns true early when the desired state changes.
async fn sleep_or_told(desired: &mut watch::Receiver<MachineState>, duration: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = desired.changed() => true,
    }
}

/// Hydrates the model, spawns the engine and waits for its health check, timing each phase
/// into `machine.cold_start`. `Ok(None)` means the desired state changed meanwhile.
async fn start(
    agent: &Arc<Agent>,
    machine: &mut Machine,
    desired: &mut watch::Receiver<MachineState>,
    requested_at_ms: u64,
) -> Result<Option<(Child, Option<crate::forward::Forwarder>)>, String> {
    let hydrate_began = tokio::time::Instant::now();
    let queued_ms = now_ms().saturating_sub(requested_at_ms);
    let manifest = agent
        .store
        .manifest_at(machine.model.as_str(), &machine.revision)
        .await
        .map_err(|e| e.to_string())?;
    // colo's own engine loads weights as they land; other engines read whole files.
    let stream = agent.config.engine.load_while_pulling && machine.engine_cmd.is_none() && machine.engine.is_none();
    let weights = match agent.cache.complete_dir(&manifest) {
        Some(dir) => {
            let total = manifest.total_bytes();
            let report = HydrationReport {
                bytes_total: total,
                bytes_reused: total,
                bytes_from_cache: total,
                ..Default::default()
            };
            Weights::Ready(dir, report)
        }
        None => {
            // One pull per model on this host: machines starting together share it.
            let pull = agent.cache.pull(&agent.store, &manifest, &agent.hydrate_options(), no_progress());
            match stream.then(|| crate::landing::weight_files(&manifest)).flatten() {
                Some(files) => {
                    // The engine reads its config, tokenizer and template whole: they come
                    // first (every file's head does) and are small.
                    crate::landing::wait_for_small_files(&pull, &manifest)
                        .await
                        .map_err(|e| format!("hydrating {}: {e}", machine.model))?;
                    Weights::Landing(pull, files)
                }
                None => {
                    let report = hydrate_with_progress(agent, machine, &manifest, &pull, desired).await?;
                    let dir = agent
                        .cache
                        .complete_dir(&manifest)
                        .ok_or("hydration finished but the model is not complete")?;
                    Weights::Ready(dir, report)
                }
            }
        }
    };
    let ready_after = hydrate_began.elapsed();
    let dir = match &weights {
        Weights::Ready(dir, _) => dir.clone(),
        Weights::Landing(pull, _) => pull.dir().to_path_buf(),
    };

    // Behind a forwarder the engine listens on loopback only; the forwarder takes the host's
    // address.
    let host = match agent.config.forward_key {
        Some(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        None => agent.config.engine_host,
    };
    let port = free_port(host).map_err(|e| format!("finding a free port on {host}: {e}"))?;
    let log_dir = agent.config.data_dir.join("machines").join(&machine.id);
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let log_path = log_dir.join("engine.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;

    let mut command = profile::command(&agent.config.engine, machine, &dir, host, port)?;
    command.stdout(log).stderr(log_err).kill_on_drop(true);
    match &weights {
        Weights::Landing(..) => command.arg("--landing").stdin(Stdio::piped()),
        Weights::Ready(..) => command.stdin(Stdio::null()),
    };
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the engine if the
    // agent dies, so no engine outlives the process that supervises it.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let loading = StartProgress {
        phase: StartPhase::Loading,
        bytes_done: 0,
        bytes_total: manifest.total_bytes(),
        since_ms: now_ms(),
    };
    note_progress(agent, machine, loading, desired).await;
    let spawned = tokio::time::Instant::now();
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let mut child = command.spawn().map_err(|e| format!("spawning the engine {program}: {e}"))?;
    machine.pid = child.id();
    // The hydration: done, or going on beside the engine's load, which the feed keeps told.
    let mut hydration = match weights {
        Weights::Ready(_, report) => Hydration::Done(report, ready_after),
        Weights::Landing(pull, files) => {
            let stdin = child.stdin.take().ok_or("the engine's stdin was not piped")?;
            let feed = tokio::spawn(crate::landing::feed(stdin, pull.clone(), files));
            Hydration::Landing { pull, feed }
        }
    };
    let addr = std::net::SocketAddr::new(host, port);
    let forwarder = match &agent.config.forward_key {
        Some(key) => Some(
            crate::forward::start(agent.config.engine_host, addr, key.clone())
                .await
                .map_err(|e| format!("starting the forwarder on {}: {e}", agent.config.engine_host))?,
        ),
        None => None,
    };
    machine.addr = Some(forwarder.as_ref().map_or(addr, |f| f.addr).to_string());
    machine.engine_addr = forwarder.is_some().then(|| addr.to_string());

    let health = format!("http://{addr}/health");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| e.to_string())?;
    // The engine's time to load starts once the weights have landed.
    let mut deadline = tokio::time::Instant::now() + agent.config.start_timeout;
    let mut noted = tokio::time::Instant::now();
    loop {
        if let Hydration::Landing { pull, feed } = &hydration {
            deadline = tokio::time::Instant::now() + agent.config.start_timeout;
            if feed.is_finished() {
                if let Err(e) = hydration.finish(machine, hydrate_began).await {
                    let _ = child.kill().await;
                    return Err(e);
                }
            } else if noted.elapsed() >= PROGRESS_EVERY {
                noted = tokio::time::Instant::now();
                let files: Vec<_> = manifest.files.iter().filter_map(|f| pull.file_progress(&f.path)).collect();
                let since_ms = now_ms().saturating_sub(hydrate_began.elapsed().as_millis() as u64);
                note_progress(agent, machine, hydrating(&manifest, &files, since_ms), desired).await;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(start_failed(&format!("engine exited during start with {status}"), &log_path));
        }
        let status = client.get(&health).send().await.ok().map(|r| r.status().as_u16());
        let health = profile::starting(machine, status);
        if health == Health::Dead {
            let _ = child.kill().await;
            return Err(start_failed(
                "the engine said it died while loading (its /health answered 503)",
                &log_path,
            ));
        }
        if health == Health::Ready {
            // The engine has read every weight, so the pull has verified every byte; it may
            // still be publishing the last file.
            hydration.finish(machine, hydrate_began).await?;
            let Hydration::Done(report, hydrated) = &hydration else {
                unreachable!("the hydration was finished above")
            };
            let hydrate_ms = hydrated.as_millis() as u64;
            let overlap_ms = hydrated.saturating_sub(spawned.duration_since(hydrate_began)).as_millis() as u64;
            machine.cold_start = Some(ColdStart {
                requested_at_ms,
                queued_ms,
                hydrate_ms,
                overlap_ms,
                bytes_from_cache: report.bytes_from_cache,
                bytes_from_peer: report.bytes_from_peer,
                bytes_from_origin: report.bytes_from_origin,
                engine_load_ms: spawned.elapsed().as_millis() as u64,
                first_response_ms: now_ms().saturating_sub(requested_at_ms),
                from_suspended: false,
            });
            return Ok(Some((child, forwarder)));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(start_failed(
                &format!("engine not ready after {:?}", agent.config.start_timeout),
                &log_path,
            ));
        }
        if sleep_or_told(desired, Duration::from_millis(50)).await && *desired.borrow() != MachineState::Started {
            stop_child(&mut child).await;
            return Ok(None);
        }
    }
}

/// Where a starting machine's weights are.
enum Weights {
    /// Complete in the host cache (there, or just pulled), with how they got there.
    Ready(std::path::PathBuf, HydrationReport),
    /// Being pulled: the engine starts now and loads these weight files as they land.
    Landing(colo_store::Pull, Vec<crate::landing::WeightFile>),
}

/// A start's hydration once the engine is spawned.
enum Hydration {
    /// Finished, taking this long from the start.
    Done(HydrationReport, Duration),
    /// Going on beside the engine's load; `feed` ends when the pull does.
    Landing {
        pull: colo_store::Pull,
        feed: tokio::task::JoinHandle<()>,
    },
}

impl Hydration {
    /// Waits for a pull going on beside the engine to end and records it (on the machine and
    /// in the log) as taking from `began` until now; a finished hydration is left as it is.
    async fn finish(&mut self, machine: &mut Machine, began: tokio::time::Instant) -> Result<(), String> {
        if let Hydration::Landing { pull, .. } = self {
            let report = pull.finish().await.map_err(|e| format!("hydrating {}: {e}", machine.model))?;
            note_hydrated(machine, &report, pull.joined());
            *self = Hydration::Done(report, began.elapsed());
        }
        Ok(())
    }
}

/// Records a finished hydration on the machine and in the log.
fn note_hydrated(machine: &mut Machine, report: &HydrationReport, joined: bool) {
    tracing::info!(
        machine = %machine.id, model = %machine.model, bytes = report.bytes_fetched,
        from_peer = report.bytes_from_peer, from_origin = report.bytes_from_origin,
        secs = report.seconds, gb_per_s = report.gb_per_s(), joined, "hydrated"
    );
    machine.hydration = Some(report.clone());
}

/// A hydrating start's progress: the verified bytes of `files` (one receiver per file).
fn hydrating(manifest: &colo_model::Manifest, files: &[watch::Receiver<u64>], since_ms: u64) -> StartProgress {
    StartProgress {
        phase: StartPhase::Hydrating,
        bytes_done: files.iter().map(|f| *f.borrow()).sum(),
        bytes_total: manifest.total_bytes(),
        since_ms,
    }
}

/// Pulls the whole model, noting its progress on the machine's record as bytes land.
async fn hydrate_with_progress(
    agent: &Agent,
    machine: &mut Machine,
    manifest: &colo_model::Manifest,
    pull: &colo_store::Pull,
    desired: &watch::Receiver<MachineState>,
) -> Result<HydrationReport, String> {
    // Verified bytes per file, as they grow (the same for a pull this machine joined).
    let files: Vec<watch::Receiver<u64>> = manifest.files.iter().filter_map(|f| pull.file_progress(&f.path)).collect();
    let began_ms = now_ms();
    let finish = pull.finish();
    tokio::pin!(finish);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let report = loop {
        tokio::select! {
            report = &mut finish => break report,
            _ = tick.tick() => note_progress(agent, machine, hydrating(manifest, &files, began_ms), desired).await,
        }
    };
    let report = report.map_err(|e| format!("hydrating {}: {e}", machine.model))?;
    note_hydrated(machine, &report, pull.joined());
    Ok(report)
}

/// A failed start's error: what happened, where the log is, and the log's last lines.
fn start_failed(what: &str, log_path: &std::path::Path) -> String {
    let tail = profile::log_tail(log_path);
    if tail.is_empty() {
        format!("{what}; its log {} is empty", log_path.display())
    } else {
        format!("{what}; the end of {}:\n{tail}", log_path.display())
    }
}

/// Watches a started engine until it crashes, fails its health checks, or is told to stop. The
/// first failed check marks the machine unhealthy (edges stop routing to it); a passing one
/// marks it healthy again.
async fn watch_engine(agent: &Agent, machine: &mut Machine, mut child: Child, desired: &mut watch::Receiver<MachineState>) -> Outcome {
    let health = format!("http://{}/health", machine.local_addr().unwrap_or_default());
    // A check may take no longer than the interval, so a hung engine is seen within about one.
    let check_timeout = agent
        .config
        .health_interval
        .clamp(Duration::from_millis(50), Duration::from_secs(2));
    let client = reqwest::Client::builder().timeout(check_timeout).build().ok();
    let mut failures = 0;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Outcome::Crashed(format!("engine exited with {status}"));
            }
            changed = desired.changed() => {
                let want = *desired.borrow();
                if changed.is_err() || want == MachineState::Stopping {
                    stop_child(&mut child).await;
                    return Outcome::Told;
                }
                if want == MachineState::Suspended {
                    match suspend(agent, machine, &mut child, desired).await {
                        Ok(()) => continue,
                        Err(outcome) => return outcome,
                    }
                }
                if want != MachineState::Started {
                    // Edges stopped routing here when the desired state changed; requests
                    // already in flight get the grace period to finish before the engine stops.
                    if sleep_or_told(desired, agent.config.stop_grace).await && *desired.borrow() == MachineState::Started {
                        continue;
                    }
                    stop_child(&mut child).await;
                    return Outcome::Told;
                }
            }
            _ = tokio::time::sleep(agent.config.health_interval) => {
                let ok = match &client {
                    Some(client) => profile::healthy(machine, client.get(&health).send().await.ok().map(|r| r.status().as_u16())),
                    None => true,
                };
                failures = if ok { 0 } else { failures + 1 };
                if ok != machine.healthy {
                    tracing::info!(machine = %machine.id, healthy = ok, "health changed");
                    machine.healthy = ok;
                    record(agent, machine, MachineState::Started, desired).await;
                }
                if failures >= MAX_HEALTH_FAILURES {
                    let _ = child.kill().await;
                    return Outcome::Crashed(format!("{failures} health checks failed in a row"));
                }
            }
        }
    }
}

/// Suspends a started engine: after the stop grace (for requests in flight), its engine is told
/// to sleep where it can be, and the machine is recorded suspended, keeping its process and
/// device. Returns `Ok` once it is woken and answering again, or the outcome that ends the watch
/// (it was told to stop, or the engine died).
async fn suspend(
    agent: &Agent,
    machine: &mut Machine,
    child: &mut Child,
    desired: &mut watch::Receiver<MachineState>,
) -> Result<(), Outcome> {
    if sleep_or_told(desired, agent.config.stop_grace).await && *desired.borrow() != MachineState::Suspended {
        return woken_or_told(agent, machine, child, desired, None).await;
    }
    let addr = machine.local_addr().unwrap_or_default().to_string();
    let level = profile::sleep_level(machine, host_memory_available());
    let mut slept = 0;
    if let Some(call) = profile::sleep_call(machine, level) {
        match engine_call(&addr, call).await {
            Ok(()) => slept = level,
            // The engine keeps running, holding its memory (it was started without its sleep
            // mode, say): still suspended as far as routing goes, and woken without the call.
            Err(reason) => tracing::warn!(machine = %machine.id, %reason, "the engine did not go to sleep"),
        }
    }
    record(agent, machine, MachineState::Suspended, desired).await;
    tracing::info!(machine = %machine.id, level = slept, "suspended");
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(Outcome::Crashed(format!("suspended engine exited with {status}")));
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    stop_child(child).await;
                    return Err(Outcome::Told);
                }
                if *desired.borrow() != MachineState::Suspended {
                    return woken_or_told(agent, machine, child, desired, Some(slept)).await;
                }
            }
        }
    }
}

/// After a suspend: wakes the engine when the machine is wanted again (timing the wake into
/// `cold_start`), or stops it. `suspended` is `None` when the machine was wanted again before
/// it suspended, else the level its engine was put to sleep at (0: it was not, so it needs no
/// wake call).
async fn woken_or_told(
    agent: &Agent,
    machine: &mut Machine,
    child: &mut Child,
    desired: &mut watch::Receiver<MachineState>,
    suspended: Option<u8>,
) -> Result<(), Outcome> {
    if *desired.borrow() != MachineState::Started {
        stop_child(child).await;
        return Err(Outcome::Told);
    }
    let Some(slept) = suspended else {
        return Ok(());
    };
    let requested_at_ms = agent.take_start_request(&machine.id).unwrap_or_else(now_ms);
    record(agent, machine, MachineState::Starting, desired).await;
    let began = tokio::time::Instant::now();
    let addr = machine.local_addr().unwrap_or_default().to_string();
    let calls = if slept > 0 {
        profile::wake_calls(machine, slept)
    } else {
        Vec::new()
    };
    for call in calls {
        if let Err(reason) = engine_call(&addr, call).await {
            let _ = child.kill().await;
            return Err(Outcome::Crashed(format!("the engine did not wake: {reason}")));
        }
    }
    let health = format!("http://{addr}/health");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().ok();
    let deadline = began + agent.config.start_timeout;
    loop {
        let status = match &client {
            Some(client) => client.get(&health).send().await.ok().map(|r| r.status().as_u16()),
            None => Some(200),
        };
        if profile::healthy(machine, status) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(Outcome::Crashed(format!(
                "the engine did not answer within {:?} of waking",
                agent.config.start_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let woke_ms = began.elapsed().as_millis() as u64;
    machine.cold_start = Some(ColdStart {
        requested_at_ms,
        queued_ms: 0,
        hydrate_ms: 0,
        engine_load_ms: woke_ms,
        first_response_ms: now_ms().saturating_sub(requested_at_ms),
        from_suspended: true,
        ..ColdStart::default()
    });
    machine.healthy = true;
    record(agent, machine, MachineState::Started, desired).await;
    tracing::info!(machine = %machine.id, woke_ms, "woken from suspend");
    Ok(())
}

/// One call to an engine's own endpoint (sleep, wake), which must answer 2xx within 60 s.
async fn engine_call(addr: &str, (method, path, body): profile::EngineCall) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let response = client
        .request(method, format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{path} answered {}", response.status()))
    }
}

/// The host's available memory (`MemAvailable` of /proc/meminfo), where the kernel says.
fn host_memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// SIGTERM, then SIGKILL if the engine has not exited within 10 seconds.
async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

fn free_port(host: std::net::IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}
