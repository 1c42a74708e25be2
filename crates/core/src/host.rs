//! Hosts: what an agent tells the rest of colo about the box it runs on, renewed by heartbeats.

use crate::Device;
use serde::{Deserialize, Serialize};

/// How long a host's record stays valid after its last heartbeat when the agent names no lease.
pub const DEFAULT_LEASE_MS: u64 = 15_000;

/// One host as its agent registers it. The agent rewrites the record on every heartbeat; a host
/// whose lease has run out is treated as gone (its machines unroutable) until it beats again.
///
/// Unknown fields are ignored rather than refused: during a rolling upgrade a newer agent may
/// write fields an older control does not know yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Host name, unique in the fleet; machines name it in `Machine.host`.
    pub name: String,
    /// Region code of the host (`fra`, `iad`).
    pub region: String,
    /// Base URL of the agent's API (`http://10.0.0.5:7070`).
    pub addr: String,
    /// Every device the agent may lease: its GPUs, or CPU slots where it has none.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Model revisions in the host cache, as `name@revision`; placement prefers these hosts.
    #[serde(default)]
    pub cached_models: Vec<String>,
    /// Milliseconds since the Unix epoch of the agent's last heartbeat.
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// How long after `heartbeat_ms` the record stays valid.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Set by control once the lease has run out, so that every reader agrees the host is gone
    /// even if their clocks differ; cleared by the agent's next heartbeat.
    #[serde(default)]
    pub lost: bool,
}

fn default_lease_ms() -> u64 {
    DEFAULT_LEASE_MS
}

// === impl HostRecord ===

impl HostRecord {
    /// Whether the lease has run out at `now_ms`: more than `lease_ms` since the last heartbeat.
    /// A heartbeat stamped in the future (clock skew) counts as fresh.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms) > self.lease_ms
    }

    /// Whether the host may take work at `now_ms`: control has not marked it lost and its
    /// lease holds.
    pub fn live(&self, now_ms: u64) -> bool {
        !self.lost && !self.expired(now_ms)
    }

    /// Whether the record holds `name@revision` in its cache list.
    pub fn caches(&self, model: &str, revision: &str) -> bool {
        self.cached_models
            .iter()
            .any(|entry| entry.split_once('@') == Some((model, revision)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(heartbeat_ms: u64, lease_ms: u64) -> HostRecord {
        HostRecord {
            name: "h1".into(),
            region: "fra".into(),
            addr: "http://127.0.0.1:7070".into(),
            devices: vec![Device::Cpu { slot: 0 }],
            cached_models: vec!["tiny@abc".into()],
            heartbeat_ms,
            lease_ms,
            lost: false,
        }
    }

    #[test]
    fn lease_expiry() {
        // (heartbeat, lease, now, expired)
        let cases = [
            (1_000, 500, 1_000, false),
            (1_000, 500, 1_500, false),
            (1_000, 500, 1_501, true),
            (1_000, 0, 1_001, true),
            (5_000, 500, 1_000, false),
            (0, DEFAULT_LEASE_MS, DEFAULT_LEASE_MS + 1, true),
        ];
        for (heartbeat, lease, now, want) in cases {
            assert_eq!(
                host(heartbeat, lease).expired(now),
                want,
                "heartbeat {heartbeat} lease {lease} now {now}"
            );
        }
    }

    #[test]
    fn live_means_not_lost_and_not_expired() {
        // (heartbeat, lease, lost, now, live)
        let cases = [
            (1_000, 500, false, 1_500, true),
            (1_000, 500, false, 1_501, false),
            (1_000, 500, true, 1_000, false),
            (1_000, 500, true, 9_000, false),
        ];
        for (heartbeat, lease, lost, now, want) in cases {
            let record = HostRecord {
                lost,
                ..host(heartbeat, lease)
            };
            assert_eq!(record.live(now), want, "heartbeat {heartbeat} lease {lease} lost {lost} now {now}");
        }
    }

    #[test]
    fn minimal_json_takes_defaults() {
        let record: HostRecord = serde_json::from_str(r#"{"name":"h","region":"fra","addr":"http://h:1"}"#).unwrap();
        assert_eq!(record.lease_ms, DEFAULT_LEASE_MS);
        assert!(record.devices.is_empty() && record.cached_models.is_empty() && !record.lost);
        let newer: HostRecord = serde_json::from_str(r#"{"name":"h","region":"fra","addr":"x","later_field":1}"#).unwrap();
        assert_eq!(newer.name, "h");
    }

    #[test]
    fn round_trips_and_knows_its_cache() {
        let record = host(7, 9);
        let back: HostRecord = serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(back, record);
        assert!(record.caches("tiny", "abc"));
        assert!(!record.caches("tiny", "abd"));
        assert!(!record.caches("tin", "y@abc"));
    }
}
