//! Who else listens on an address: SO_REUSEPORT lets another process of the same user bind the
//! very port an edge serves, and the kernel then splits connections between the two. After
//! binding, the edge looks for listening sockets on its port that are not its own (Linux's
//! /proc/net/tcp and tcp6) and refuses to serve beside them, naming the process that holds them.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

/// A process that listens on the address too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// Its command line, as /proc shows it.
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid} ({})", self.command),
            None => write!(f, "a process this user cannot see"),
        }
    }
}

/// One listening socket of /proc/net/tcp{,6}: its address and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listening {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// Reads the listening sockets from the text of /proc/net/tcp (`v6` false) or tcp6.
pub(crate) fn parse_listening(text: &str, v6: bool) -> Vec<Listening> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != "0A" {
                return None;
            }
            let (ip_hex, port_hex) = fields[1].split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let ip = if v6 { parse_v6(ip_hex)? } else { parse_v4(ip_hex)? };
            let inode = fields[9].parse().ok()?;
            Some(Listening {
                addr: SocketAddr::new(ip, port),
                inode,
            })
        })
        .collect()
}

/// /proc writes an IPv4 address as one 32-bit word in host order (little endian here).
fn parse_v4(hex: &str) -> Option<IpAddr> {
    let word = u32::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::from(word.to_le_bytes()))
}

/// ... and an IPv6 address as four such words.
fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let word = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    Some(IpAddr::from(bytes))
}

/// Whether a socket listening on `theirs` takes connections meant for `ours`.
fn overlaps(ours: SocketAddr, theirs: SocketAddr) -> bool {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let (a, b) = (v4(ours.ip()), v4(theirs.ip()));
    ours.port() == theirs.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// The socket inode of an open socket.
fn inode_of(fd: &impl AsRawFd) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let text = link.to_string_lossy();
    text.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The processes that listen where `ours` does with sockets other than `sockets` (ours,
/// bound). Empty where /proc cannot say (not Linux).
pub fn other_holders(ours: SocketAddr, sockets: &[std::net::TcpListener]) -> Vec<Holder> {
    let mine: Vec<u64> = sockets.iter().filter_map(inode_of).collect();
    let mut theirs: Vec<u64> = Vec::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        theirs.extend(
            parse_listening(&text, v6)
                .into_iter()
                .filter(|l| overlaps(ours, l.addr) && !mine.contains(&l.inode))
                .map(|l| l.inode),
        );
    }
    if theirs.is_empty() {
        return Vec::new();
    }
    let mut holders: Vec<Holder> = Vec::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let holds = fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| {
                    let l = l.to_string_lossy();
                    theirs.iter().any(|ino| l == format!("socket:[{ino}]"))
                })
            });
            if holds {
                let command = std::fs::read(entry.path().join("cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
                    .unwrap_or_default();
                holders.push(Holder { pid: Some(pid), command });
            }
        }
    }
    if holders.is_empty() {
        holders.push(Holder {
            pid: None,
            command: String::new(),
        });
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_are_read() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            parse_listening(v4, false),
            vec![Listening {
                addr: "127.0.0.1:8080".parse().unwrap(),
                inode: 12345
            }]
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listening(v6, true)[0].addr, "[::1]:8080".parse().unwrap());
        assert!(overlaps("127.0.0.1:8080".parse().unwrap(), "0.0.0.0:8080".parse().unwrap()));
        assert!(overlaps("0.0.0.0:8080".parse().unwrap(), "127.0.0.1:8080".parse().unwrap()));
        assert!(!overlaps("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:8081".parse().unwrap()));
        assert!(!overlaps("127.0.0.1:8080".parse().unwrap(), "10.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn a_second_listener_on_our_port_is_found() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        // Our own sockets are not others'.
        assert!(other_holders(addr, std::slice::from_ref(&first)).is_empty());
        // Seen from a second set of sockets, the first is another's, and its holder is named.
        let holders = other_holders(addr, &[]);
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert_eq!(holders[0].pid, Some(std::process::id()));
        assert!(holders[0].to_string().starts_with(&format!("pid {}", std::process::id())));
    }
}
