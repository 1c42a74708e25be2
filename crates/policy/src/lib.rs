//! Pure decision code: which machine takes a request. No clock, no sockets, no files, no tokio:
//! callers pass in the facts (and, where it matters, `now` and a seed) and carry out the result.

pub mod pick;

pub use pick::{pick_machine, Candidate};
