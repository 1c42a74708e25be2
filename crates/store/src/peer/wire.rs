//! What peers say to each other: where the cache API lives and how a host lists the files it
//! has of a model. A leaf, so that hydration (the client side) does not depend on the server
//! side and the host cache behind it.

use serde::{Deserialize, Serialize};

/// Where the cache API lives on a host.
pub const PEER_PREFIX: &str = "/v1/cache/models";

/// What a host has of one model revision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerModel {
    pub name: String,
    pub revision: String,
    pub files: Vec<PeerFile>,
}

/// One file a host has, as a path in the model and its size in bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerFile {
    pub path: String,
    pub size: u64,
}
