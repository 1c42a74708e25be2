//! Sending a request again: after a machine failed it (connect refused, or an answer cut off),
//! or because a machine answered `colo-replay` to have it sent elsewhere.
//!
//! One [`Attempts`] lives for one request. The rules:
//!
//! - A request the machine never received (the connect failed) may go to another machine; one
//!   it may have received goes again only if its method is idempotent.
//! - At most `max_failovers` machines may fail one request between replays; then the last
//!   failure is the answer.
//! - A request that failed over, or was replayed to one instance or away from the machine that
//!   answered, does not wait in the hold queue: with no other machine free the failure is the
//!   answer at once.
//! - `colo-replay: region=R`, `instance=ID` and/or `elsewhere` resend the request there, at most
//!   `max_replays` times; each replay starts the failover budget afresh.

use thiserror::Error;

/// How often one request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Machines that may fail one request (between replays) before the failure is returned.
    pub max_failovers: u32,
    /// `colo-replay` answers one request may follow.
    pub max_replays: u32,
}

/// How sending to a machine failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// Nothing was sent: the machine refused or did not answer the connect.
    Connect,
    /// The request went out, but no whole answer came back.
    AfterSend,
}

/// Why a request is not sent again.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum GiveUp {
    #[error("the request may have reached the machine and its method is not idempotent")]
    NotIdempotent,
    #[error("{failed} machines failed this request (the limit is {max})")]
    FailoversSpent { failed: u32, max: u32 },
    #[error("asked to replay the request more than {max} times")]
    ReplaysSpent { max: u32 },
}

/// Where a `colo-replay` answer sends the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Only machines of this region (lower-case code).
    pub region: Option<String>,
    /// Only this machine.
    pub instance: Option<String>,
    /// Any machine but the one that answered.
    pub elsewhere: bool,
}

/// Why a `colo-replay` header could not be read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReplayHeaderError {
    #[error("{field:?} is not region=<code>, instance=<id> or elsewhere")]
    BadField { field: String },
    #[error("names no region, instance or elsewhere")]
    Empty,
}

/// One request's sends so far, and where it may go next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Machines that failed it since the last replay (or that a replay said to avoid).
    avoid: Vec<String>,
    /// The one machine it may go to (a replay to an instance).
    only: Option<String>,
    /// The one region it may go to (a replay to a region).
    region: Option<String>,
    /// Failures since the last replay.
    failed: u32,
    replays: u32,
}

// === impl RetryPolicy ===

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_failovers: 2,
            max_replays: 10,
        }
    }
}

// === impl Attempts ===

impl Attempts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Machines the next pick must pass over.
    pub fn avoid(&self) -> &[String] {
        &self.avoid
    }

    /// The one machine the next pick may take, if the request is bound to one.
    pub fn only(&self) -> Option<&str> {
        self.only.as_deref()
    }

    /// The one region the next pick may take, if a replay named one.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Whether the request may wait in the hold queue for room: only before anything failed it
    /// and while it is not bound to one machine.
    pub fn may_hold(&self) -> bool {
        self.failed == 0 && self.only.is_none()
    }

    /// Machine `machine` failed the request: `Ok` to send it to another machine.
    pub fn failed(&mut self, machine: &str, failure: SendFailure, idempotent: bool, policy: &RetryPolicy) -> Result<(), GiveUp> {
        if failure == SendFailure::AfterSend && !idempotent {
            return Err(GiveUp::NotIdempotent);
        }
        if self.failed >= policy.max_failovers {
            return Err(GiveUp::FailoversSpent {
                failed: self.failed + 1,
                max: policy.max_failovers,
            });
        }
        self.failed += 1;
        self.avoid.push(machine.to_string());
        Ok(())
    }

    /// Machine `machine` answered with `replay`: `Ok` to send the request where it says.
    pub fn replay(&mut self, machine: &str, replay: Replay, policy: &RetryPolicy) -> Result<(), GiveUp> {
        self.replays += 1;
        if self.replays > policy.max_replays {
            return Err(GiveUp::ReplaysSpent { max: policy.max_replays });
        }
        // The machine a replay sends the request away from counts as one that failed it.
        self.failed = u32::from(replay.elsewhere);
        self.avoid.clear();
        if replay.elsewhere {
            self.avoid.push(machine.to_string());
        }
        self.only = replay.instance;
        self.region = replay.region;
        Ok(())
    }
}

// === impl Replay ===

impl Replay {
    /// Reads `region=<code>`, `instance=<machine id>` and/or `elsewhere` (or `elsewhere=true`),
    /// separated by `;`.
    pub fn parse(value: &str) -> Result<Replay, ReplayHeaderError> {
        let mut replay = Replay::default();
        for field in value.split(';').map(str::trim).filter(|f| !f.is_empty()) {
            match field.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("region", code)) if !code.is_empty() => replay.region = Some(code.to_ascii_lowercase()),
                Some(("instance", id)) if !id.is_empty() => replay.instance = Some(id.to_string()),
                Some(("elsewhere", v)) => replay.elsewhere = v == "true",
                None if field == "elsewhere" => replay.elsewhere = true,
                _ => return Err(ReplayHeaderError::BadField { field: field.to_string() }),
            }
        }
        if replay == Replay::default() {
            return Err(ReplayHeaderError::Empty);
        }
        Ok(replay)
    }
}

/// Whether a request of this HTTP method may be sent twice (RFC 9110's idempotent methods).
pub fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

#[cfg(test)]
mod tests;
