//! Machine leases in Fly's shape: whoever holds a machine's lease (and only they, by its nonce)
//! may change the machine's configuration until the lease expires or is released. Pure: the
//! time and the new nonce are arguments.

use serde::Serialize;
use std::collections::HashMap;

/// The longest lease one call may take or extend to, in seconds.
pub const MAX_TTL_SECS: u64 = 3600;

/// One machine's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The secret that proves the lease: send it in `fly-machine-lease-nonce`.
    pub nonce: String,
    /// When it runs out, in Unix seconds (as Fly's API says it).
    pub expires_at: u64,
    /// Who took it (free text, shown to others who find it held).
    pub owner: String,
    /// Why (free text).
    pub description: String,
}

/// Why a lease call or a leased machine's change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("machine {id} is leased by {owner:?} until {expires_at} (Unix seconds); send its nonce in fly-machine-lease-nonce")]
    Held { id: String, owner: String, expires_at: u64 },
    #[error("fly-machine-lease-nonce does not match machine {id}'s lease")]
    WrongNonce { id: String },
    #[error("machine {id} holds no lease")]
    NoLease { id: String },
    #[error("ttl: {ttl} seconds is outside 1 to {max}")]
    BadTtl { ttl: u64, max: u64 },
}

/// A request for a lease.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// Seconds it should hold from now.
    pub ttl: u64,
    /// The nonce of the lease held now, to extend it.
    pub nonce: Option<&'a str>,
    pub owner: &'a str,
    pub description: &'a str,
}

/// The leases of one host's machines, by machine id.
#[derive(Debug, Default)]
pub struct Leases(HashMap<String, Lease>);

impl Leases {
    /// The lease on `id` that holds at `now_ms`, if any.
    pub fn get(&self, id: &str, now_ms: u64) -> Option<&Lease> {
        self.0.get(id).filter(|l| l.expires_at * 1000 > now_ms)
    }

    /// Takes the lease on `id` for `ask.ttl` seconds (with `new_nonce`), or with the holder's
    /// nonce extends it to `ask.ttl` seconds from now. Refused while someone else holds it.
    pub fn acquire(&mut self, id: &str, ask: Ask<'_>, now_ms: u64, new_nonce: String) -> Result<Lease, LeaseError> {
        let Ask {
            ttl,
            nonce,
            owner,
            description,
        } = ask;
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(LeaseError::BadTtl { ttl, max: MAX_TTL_SECS });
        }
        let expires_at = now_ms / 1000 + ttl;
        if let Some(held) = self.get(id, now_ms) {
            return match nonce {
                Some(n) if n == held.nonce => {
                    let lease = Lease {
                        expires_at,
                        ..held.clone()
                    };
                    self.0.insert(id.to_string(), lease.clone());
                    Ok(lease)
                }
                Some(_) => Err(LeaseError::WrongNonce { id: id.to_string() }),
                None => Err(LeaseError::Held {
                    id: id.to_string(),
                    owner: held.owner.clone(),
                    expires_at: held.expires_at,
                }),
            };
        }
        let lease = Lease {
            nonce: new_nonce,
            expires_at,
            owner: owner.to_string(),
            description: description.to_string(),
        };
        self.0.insert(id.to_string(), lease.clone());
        Ok(lease)
    }

    /// Gives the lease on `id` back; only its nonce can.
    pub fn release(&mut self, id: &str, nonce: Option<&str>, now_ms: u64) -> Result<(), LeaseError> {
        let held = self.get(id, now_ms).ok_or_else(|| LeaseError::NoLease { id: id.to_string() })?;
        if nonce != Some(held.nonce.as_str()) {
            return Err(LeaseError::WrongNonce { id: id.to_string() });
        }
        self.0.remove(id);
        Ok(())
    }

    /// Whether a change to `id` sent with `nonce` may go ahead: yes when no lease holds, or
    /// when the nonce is the lease's.
    pub fn check(&self, id: &str, nonce: Option<&str>, now_ms: u64) -> Result<(), LeaseError> {
        match (self.get(id, now_ms), nonce) {
            (None, _) => Ok(()),
            (Some(held), Some(n)) if n == held.nonce => Ok(()),
            (Some(_), Some(_)) => Err(LeaseError::WrongNonce { id: id.to_string() }),
            (Some(held), None) => Err(LeaseError::Held {
                id: id.to_string(),
                owner: held.owner.clone(),
                expires_at: held.expires_at,
            }),
        }
    }

    /// Drops the lease of a destroyed machine.
    pub fn forget(&mut self, id: &str) {
        self.0.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask<'a>(ttl: u64, nonce: Option<&'a str>, owner: &'a str, description: &'a str) -> Ask<'a> {
        Ask {
            ttl,
            nonce,
            owner,
            description,
        }
    }

    #[test]
    fn a_lease_is_held_refreshed_checked_and_released_by_its_nonce_only() {
        let mut leases = Leases::default();
        let t0 = 1_000_000;
        let lease = leases.acquire("m1", ask(30, None, "deployer", "rollout"), t0, "n1".into()).unwrap();
        assert_eq!((lease.nonce.as_str(), lease.expires_at), ("n1", 1030));
        // Held: a second taker is refused and told who holds it; the wrong nonce is refused.
        assert!(matches!(
            leases.acquire("m1", ask(30, None, "other", ""), t0 + 1, "n2".into()),
            Err(LeaseError::Held { owner, expires_at: 1030, .. }) if owner == "deployer"
        ));
        assert!(matches!(
            leases.acquire("m1", ask(30, Some("nope"), "other", ""), t0, "n2".into()),
            Err(LeaseError::WrongNonce { .. })
        ));
        assert!(leases.check("m1", None, t0).is_err());
        assert!(leases.check("m1", Some("nope"), t0).is_err());
        assert!(leases.check("m1", Some("n1"), t0).is_ok());
        assert!(leases.check("m2", None, t0).is_ok(), "other machines are not leased");
        // The holder extends it; the nonce stays.
        let longer = leases
            .acquire("m1", ask(60, Some("n1"), "", ""), t0 + 10_000, "unused".into())
            .unwrap();
        assert_eq!(
            (longer.nonce.as_str(), longer.expires_at, longer.owner.as_str()),
            ("n1", 1070, "deployer")
        );
        // It runs out by itself.
        assert!(leases.get("m1", 1_069_999).is_some());
        assert!(leases.get("m1", 1_070_000).is_none());
        assert!(leases.check("m1", None, 1_070_000).is_ok());
        // Released only with its nonce.
        leases.acquire("m1", ask(10, None, "b", ""), 1_070_000, "n3".into()).unwrap();
        let t1 = 1_070_000;
        assert!(matches!(leases.release("m1", None, t1), Err(LeaseError::WrongNonce { .. })));
        leases.release("m1", Some("n3"), t1).unwrap();
        assert!(matches!(leases.release("m1", Some("n3"), t1), Err(LeaseError::NoLease { .. })));
        // Bad ttls are named.
        assert!(matches!(
            leases.acquire("m1", ask(0, None, "", ""), t0, "x".into()),
            Err(LeaseError::BadTtl { .. })
        ));
        assert!(matches!(
            leases.acquire("m1", ask(MAX_TTL_SECS + 1, None, "", ""), t0, "x".into()),
            Err(LeaseError::BadTtl { .. })
        ));
    }
}
