//! Starting a real s3s-fs (the S3-compatible server the tests use) without racing other tests
//! for its port: as for [`crate::nats_server`], the server binds port 0 itself, and the port is
//! read from what this process says once it listens (`server is running at http://host:port`,
//! logged at `info`), never from whatever answers on a number picked before.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// Makes `command` (s3s-fs with its other flags) listen on `host` at a port of its own choosing
/// and log where, into whatever its stdout is.
pub fn with_port_args(command: &mut Command, host: &str) {
    command.args(["--host", host, "--port", "0"]).env("RUST_LOG", "s3s_fs=info");
}

/// Waits until the s3s-fs `child`, whose stdout and stderr go to `log`, says where it listens,
/// and returns the port. Panics, saying why, if it exits first or says nothing within `wait`.
pub fn bound_port(child: &mut Child, log: &Path, wait: Duration) -> u16 {
    let place = format!("its log, {}", log.display());
    crate::wait_for_port(child, "s3s-fs", &place, wait, || {
        std::fs::read_to_string(log).ok().as_deref().and_then(parse_port)
    })
}

/// The port in s3s-fs's `server is running at http://127.0.0.1:41727` line, once the line is
/// whole (the address followed by its line's end).
fn parse_port(log: &str) -> Option<u16> {
    let rest = &log[log.find("server is running at http://")? + "server is running at http://".len()..];
    let address = &rest[..rest.find(char::is_whitespace)?];
    address.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_from_the_line_that_says_it() {
        let log = "  2026-12-07T19:59:47.938900Z  INFO s3s_fs: authentication is enabled\n    at src/main.rs:100\n\n  \
                   2026-12-07T19:59:47.939157Z  INFO s3s_fs: server is running at http://127.0.0.1:41727\n    at src/main.rs:121\n";
        assert_eq!(parse_port(log), Some(41727));
        assert_eq!(parse_port("server is running at http://10.0.0.1:8014\n"), Some(8014));
        // A line still being written gives nothing yet rather than a cut port.
        assert_eq!(parse_port("server is running at http://10.0.0.1:80"), None);
        assert_eq!(parse_port("INFO s3s_fs: authentication is enabled"), None);
        assert_eq!(parse_port("server is running at http://127.0.0.1:\n"), None);
    }
}
