//! A fault layer for tests: a TCP proxy put between a client and a server (edge and machine,
//! store and S3 server, daemons and NATS) whose behaviour is switched while it runs.
//!
//! Faults that act on every connection, open ones included, as soon as they are set:
//! [`Fault::Delay`] (each piece of data waits before it is passed on), [`Fault::Stall`] (no
//! byte moves either way, connections stay open) and [`Fault::Cut`] (every connection is reset
//! and new ones are reset at once: a partition, or a host that died). Faults that act on new
//! connections, on every one or every nth ([`FaultProxy::set_every`]): [`Fault::Truncate`] (the
//! server's bytes stop after a count and the connection closes), [`Fault::LoseAnswer`] (the
//! request reaches the server, then the connection is reset before a byte of its answer comes
//! back) and [`Fault::Answer`] (the proxy answers the request itself with the given bytes; the
//! server never sees it).
//!
//! [`nats_server`] and [`s3s_fs`] start the real servers the tests put such faults in front of,
//! each on a port no other test can take from it.

#![forbid(unsafe_code)]

pub mod nats_server;
pub mod s3s_fs;

use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Polls `read` (what `child`, a server named `what`, says about where it listens, written to
/// `place`) until it gives a port. Panics, saying why, if the child exits first or nothing
/// comes within `wait`. Shared by [`nats_server`] and [`s3s_fs`].
fn wait_for_port(child: &mut std::process::Child, what: &str, place: &str, wait: Duration, mut read: impl FnMut() -> Option<u16>) -> u16 {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("polling {what}: {e}")) {
            panic!(
                "{what} (pid {}) exited with {status} before it listened: its port was taken or its flags refused ({place})",
                child.id()
            );
        }
        if let Some(port) = read() {
            return port;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (pid {}) did not say where it listens within {wait:?} ({place})",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the proxy does to the bytes it carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass unchanged.
    #[default]
    Pass,
    /// Each piece of data, either way, waits this long first.
    Delay(Duration),
    /// Nothing moves; connections stay open until the fault changes.
    Stall,
    /// Every open connection is reset and new ones are refused (the listening socket is
    /// closed until the cut is lifted): a host or process that died, or a partition.
    Cut,
    /// The server's bytes stop after this many on a connection, which then closes.
    Truncate(u64),
    /// The request is passed on; the connection is reset when the answer starts.
    LoseAnswer,
    /// The proxy answers the first request head itself with these bytes and closes.
    Answer(Bytes),
}

impl Fault {
    /// Whether it acts on open connections (else only on new ones).
    fn live(&self) -> bool {
        matches!(self, Fault::Delay(_) | Fault::Stall | Fault::Cut)
    }
}

/// The setting: a fault, and for faults on new connections, every how many it hits, counted
/// from `from`, the connections accepted before it was set (so the first new one is hit).
#[derive(Clone, Debug, Default)]
struct Setting {
    fault: Fault,
    every: u64,
    from: u64,
}

/// Counts of what the proxy did, for tests to check that a fault was hit.
#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    faulted: AtomicU64,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    setting: watch::Sender<Setting>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections end too: a dropped proxy is a cut.
        self.setting.send_replace(Setting {
            fault: Fault::Cut,
            every: 1,
            from: 0,
        });
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and passes connections on to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), target).await
    }

    /// Listens on `listen` and passes connections on to `target`.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (setting, watch) = watch::channel(Setting::default());
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn(accept_loop(listener, target, watch, counts.clone()));
        Ok(FaultProxy {
            addr,
            setting,
            counts,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets `fault` for every connection (open ones too, for the faults that act on them).
    pub fn set(&self, fault: Fault) {
        self.set_every(fault, 1);
    }

    /// Sets `fault` for every `nth` new connection (the first one included); the others pass.
    /// Faults that act on open connections ignore `nth`.
    pub fn set_every(&self, fault: Fault, nth: u64) {
        self.setting.send_replace(Setting {
            fault,
            every: nth.max(1),
            from: self.connections(),
        });
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counts.connections.load(Ordering::Relaxed)
    }

    /// Connections a fault acted on so far (counted once each).
    pub fn faulted(&self) -> u64 {
        self.counts.faulted.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, mut watch: watch::Receiver<Setting>, counts: Arc<Counts>) {
    let addr = listener.local_addr().expect("a bound listener");
    let mut listener = Some(listener);
    loop {
        // A cut closes the listening socket, so new connections are refused as by a dead
        // process; it is opened again on the same port when the cut is lifted.
        if watch.borrow().fault == Fault::Cut {
            listener = None;
            if watch.changed().await.is_err() {
                return;
            }
            continue;
        }
        let active = match &listener {
            Some(active) => active,
            None => match rebind(addr).await {
                Some(bound) => listener.insert(bound),
                None => return,
            },
        };
        let client = tokio::select! {
            accepted = active.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            changed = watch.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let n = counts.connections.fetch_add(1, Ordering::Relaxed);
        let setting = watch.borrow().clone();
        // Faults on new connections hit every nth; live ones are read as the bytes move.
        let own = if !setting.fault.live() && n.saturating_sub(setting.from).is_multiple_of(setting.every.max(1)) {
            setting.fault
        } else {
            Fault::Pass
        };
        let (watch, counts) = (watch.clone(), counts.clone());
        tokio::spawn(async move {
            let _ = carry(client, target, own, watch, &counts).await;
        });
    }
}

/// Listens on `addr` again after a cut (the port may take a moment to be free).
async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..100 {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .ok()?;
        let _ = socket.set_reuseaddr(true);
        if socket.bind(addr).is_ok() {
            if let Ok(listener) = socket.listen(1024) {
                return Some(listener);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Resets a connection (RST rather than FIN) by closing it with a zero linger.
fn reset(stream: TcpStream) {
    #[allow(deprecated)] // set_linger: deprecated only for blocking the thread on close, which zero does not.
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Which side a read came from.
enum Moved {
    Up(io::Result<usize>),
    Down(io::Result<usize>),
    Changed,
}

/// Carries one connection, applying `own` (the fault it drew at accept) and the live faults.
async fn carry(
    mut client: TcpStream,
    target: SocketAddr,
    own: Fault,
    mut watch: watch::Receiver<Setting>,
    counts: &Counts,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut hit = false;
    let count_hit = |hit: &mut bool| {
        if !*hit {
            *hit = true;
            counts.faulted.fetch_add(1, Ordering::Relaxed);
        }
    };
    if watch.borrow().fault == Fault::Cut {
        count_hit(&mut hit);
        reset(client);
        return Ok(());
    }
    if let Fault::Answer(answer) = &own {
        count_hit(&mut hit);
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return Ok(()),
            }
        }
        client.write_all(answer).await?;
        let _ = client.shutdown().await;
        return Ok(());
    }
    let mut server = match TcpStream::connect(target).await {
        Ok(server) => server,
        Err(_) => {
            reset(client);
            return Ok(());
        }
    };
    let _ = server.set_nodelay(true);
    let (mut up_buf, mut down_buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let (mut up_open, mut down_open) = (true, true);
    let mut down_bytes: u64 = 0;
    while up_open || down_open {
        // Live faults first: a stall moves nothing until it is lifted; a cut resets both sides.
        loop {
            let live = watch.borrow().fault.clone();
            match live {
                Fault::Cut => {
                    count_hit(&mut hit);
                    reset(client);
                    reset(server);
                    return Ok(());
                }
                Fault::Stall => {
                    count_hit(&mut hit);
                    if watch.changed().await.is_err() {
                        return Ok(());
                    }
                }
                _ => break,
            }
        }
        let moved = {
            let (mut client_read, _) = client.split();
            let (mut server_read, _) = server.split();
            tokio::select! {
                r = client_read.read(&mut up_buf), if up_open => Moved::Up(r),
                r = server_read.read(&mut down_buf), if down_open => Moved::Down(r),
                changed = watch.changed() => match changed {
                    Ok(()) => Moved::Changed,
                    Err(_) => return Ok(()),
                },
            }
        };
        let delay = match watch.borrow().fault {
            Fault::Delay(delay) => Some(delay),
            _ => None,
        };
        if let Some(delay) = delay {
            count_hit(&mut hit);
            tokio::time::sleep(delay).await;
        }
        match moved {
            Moved::Changed => {}
            Moved::Up(Ok(0)) | Moved::Up(Err(_)) => {
                up_open = false;
                let _ = server.shutdown().await;
            }
            Moved::Up(Ok(n)) => server.write_all(&up_buf[..n]).await?,
            Moved::Down(Ok(0)) | Moved::Down(Err(_)) => {
                down_open = false;
                let _ = client.shutdown().await;
            }
            Moved::Down(Ok(n)) => match own {
                Fault::LoseAnswer => {
                    count_hit(&mut hit);
                    reset(client);
                    reset(server);
                    return Ok(());
                }
                Fault::Truncate(limit) if down_bytes + n as u64 >= limit => {
                    count_hit(&mut hit);
                    let keep = (limit - down_bytes) as usize;
                    client.write_all(&down_buf[..keep]).await?;
                    let _ = client.shutdown().await;
                    return Ok(());
                }
                _ => {
                    down_bytes += n as u64;
                    client.write_all(&down_buf[..n]).await?;
                }
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that echoes what it reads.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(data).await?;
        s.shutdown().await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let addr = proxy.addr();
        assert_eq!(round_trip(addr, b"hello").await.unwrap(), b"hello");

        proxy.set(Fault::Truncate(3));
        assert_eq!(round_trip(addr, b"hello").await.unwrap(), b"hel");

        proxy.set(Fault::Answer(Bytes::from_static(b"HTTP/1.1 503 Slow Down\r\n\r\n")));
        let answered = round_trip(addr, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(answered, b"HTTP/1.1 503 Slow Down\r\n\r\n");

        proxy.set(Fault::LoseAnswer);
        assert!(round_trip(addr, b"hello").await.map(|b| b.is_empty()).unwrap_or(true));

        proxy.set(Fault::Delay(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(addr, b"hello").await.unwrap(), b"hello");
        assert!(started.elapsed() >= Duration::from_millis(300), "delayed both ways");

        // A stall holds an open connection until it is lifted.
        proxy.set(Fault::Pass);
        let mut open = TcpStream::connect(addr).await.unwrap();
        proxy.set(Fault::Stall);
        tokio::time::sleep(Duration::from_millis(50)).await;
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        assert!(tokio::time::timeout(Duration::from_millis(300), open.read(&mut one)).await.is_err());
        proxy.set(Fault::Pass);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(2), open.read(&mut one))
                .await
                .unwrap()
                .unwrap(),
            1
        );

        // A cut resets open connections and refuses new ones.
        proxy.set(Fault::Cut);
        let read = tokio::time::timeout(Duration::from_secs(2), open.read(&mut one)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(round_trip(addr, b"x").await.map(|b| b.is_empty()).unwrap_or(true));

        // Every second new connection.
        proxy.set_every(Fault::Truncate(1), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lengths: Vec<usize> = [
            round_trip(addr, b"ab").await.unwrap().len(),
            round_trip(addr, b"ab").await.unwrap().len(),
            round_trip(addr, b"ab").await.unwrap().len(),
        ]
        .to_vec();
        assert_eq!(
            lengths.iter().filter(|&&l| l == 1).count() + lengths.iter().filter(|&&l| l == 2).count(),
            3
        );
        assert!(lengths.contains(&1) && lengths.contains(&2), "{lengths:?}");
        assert!(proxy.faulted() >= 5);
    }
}
