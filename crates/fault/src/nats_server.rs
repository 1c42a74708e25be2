//! Starting a real nats-server for a test without racing other tests for its port.
//!
//! Picking a free port first (bind to port 0, close, pass the number on) leaves a gap in which
//! another test's server or client can take the same port; the server started on it then fails
//! to listen and exits, and a test that only waits for *something* to answer on the port goes
//! on talking to the other test's server. So the server is asked to pick its own port (`-p -1`)
//! and to write the ports it listens on into a file named after its pid (`--ports_file_dir`),
//! which only this process can write: that file is the proof that this child is the listener.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// The arguments that make nats-server write its ports file into `ports_dir`, listening on
/// `port`, or on a port it picks itself when `port` is `None`.
pub fn port_args(port: Option<u16>, ports_dir: &Path) -> Vec<String> {
    let port = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
    vec!["-p".into(), port, "--ports_file_dir".into(), ports_dir.display().to_string()]
}

/// Adds [`port_args`] to `command`.
pub fn with_port_args(command: &mut Command, port: Option<u16>, ports_dir: &Path) {
    std::fs::create_dir_all(ports_dir).unwrap_or_else(|e| panic!("creating {}: {e}", ports_dir.display()));
    command.args(port_args(port, ports_dir));
}

/// Waits until the nats-server `child` has written its ports file into `ports_dir` (it does so
/// once it listens) and returns the port it serves clients on. Panics, saying why, if the
/// child exits first (its port was taken, or its flags were refused) or nothing comes within
/// `wait`.
pub fn client_port(child: &mut Child, ports_dir: &Path, wait: Duration) -> u16 {
    let suffix = format!("_{}.ports", child.id());
    let place = format!("a ports file in {}", ports_dir.display());
    crate::wait_for_port(child, "nats-server", &place, wait, || {
        let written = std::fs::read_dir(ports_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))
            .find_map(|entry| std::fs::read_to_string(entry.path()).ok());
        written.as_deref().and_then(parse_client_port)
    })
}

/// The client port in a ports file (`{"nats":["nats://127.0.0.1:4222"], ...}`); `None` while
/// the file is still being written.
fn parse_client_port(text: &str) -> Option<u16> {
    let start = text.find("nats://")? + "nats://".len();
    let url = &text[start..];
    let end = url.find('"')?;
    url[..end].rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_client_port_and_waits_for_a_whole_file() {
        assert_eq!(parse_client_port(r#"{"nats":["nats://127.0.0.1:34241"]}"#), Some(34241));
        assert_eq!(
            parse_client_port(r#"{"nats":["nats://[::1]:4222"],"monitoring":["http://[::1]:8222"]}"#),
            Some(4222)
        );
        assert_eq!(parse_client_port(r#"{"nats":["nats://127.0.0.1:34"#), None);
        assert_eq!(parse_client_port(""), None);
    }

    #[test]
    fn asks_for_a_port_of_its_own_choosing_or_the_given_one() {
        let dir = Path::new("/tmp/ports");
        assert_eq!(port_args(None, dir), ["-p", "-1", "--ports_file_dir", "/tmp/ports"]);
        assert_eq!(port_args(Some(4222), dir)[1], "4222");
    }
}
