//! The test network of issue 17 (item 1): an origin and a host, each in its own network
//! namespace, joined by veth pairs to a bridge, each link capped in both directions with
//! `tc tbf`. A bulk transfer across it runs at the cap, in either direction, and uncapped it
//! runs much faster: the links behave like links, not like loopback.
//!
//! Needs root, iproute2 and a kernel with namespaces and tbf; the test says which path it took
//! and fails, saying why, where the network cannot be made (CI runs as root).

mod common;

use common::netns::Netns;
use std::process::Stdio;
use std::time::Instant;

/// Sends `bytes` from `from` to `to` over TCP (a Python sender and receiver, each in its own
/// namespace); the rate the receiver saw, in Mbit/s.
fn transfer(net: &Netns, from: &str, to: &str, port: u16, bytes: u64) -> f64 {
    let sender_ip = net.ip(from);
    let send = format!(
        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{sender_ip}', {port})); s.listen(1); print('ready', flush=True)\n\
         c,_=s.accept(); block=b'x'*65536; left={bytes}\n\
         while left>0:\n    n=min(left, len(block)); c.sendall(block[:n]); left-=n\n\
         c.close()"
    );
    let mut sender = net
        .command(from, "python3")
        .args(["-c", &send])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the sender");
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(sender.stdout.as_mut().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let receive = format!(
        "import socket, time\nc=socket.create_connection(('{sender_ip}', {port})); t=time.monotonic(); n=0\n\
         while True:\n    b=c.recv(1<<20)\n    if not b: break\n    n+=len(b)\n\
         print(n, time.monotonic()-t)"
    );
    let started = Instant::now();
    let out = net.command(to, "python3").args(["-c", &receive]).output().expect("the receiver");
    sender.wait().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let got: u64 = fields
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("receiver said {text:?}: {:?}", out));
    let secs: f64 = fields.next().and_then(|v| v.parse().ok()).unwrap();
    assert_eq!(got, bytes, "every byte arrived");
    let mbit = got as f64 * 8.0 / secs / 1e6;
    println!(
        "{from} -> {to}: {got} bytes in {secs:.2} s ({mbit:.0} Mbit/s; {:.2} s with the processes)",
        started.elapsed().as_secs_f64()
    );
    mbit
}

#[test]
fn capped_links_run_at_their_rate_both_ways() {
    let net = Netns::create(&["origin", "host"], 0).unwrap_or_else(|why| panic!("the test network cannot be made here: {why}"));
    println!("path: network namespaces, veth pairs to a bridge, tbf caps");
    let free = transfer(&net, "origin", "host", 7101, 25_000_000);
    // 200 Mbit/s, and the 1 Gbit/s of issue 17's example.
    for (i, mbit) in [200u32, 1000].into_iter().enumerate() {
        for region in ["origin", "host"] {
            net.cap(region, mbit).unwrap();
        }
        let port = 7102 + 2 * i as u16;
        // A second of traffic at the cap, so that the bucket's first burst (10 ms) counts little.
        let bytes = u64::from(mbit) * 125_000;
        let down = transfer(&net, "origin", "host", port, bytes);
        let up = transfer(&net, "host", "origin", port + 1, bytes);
        for (what, got) in [("origin to host", down), ("host to origin", up)] {
            let share = got / f64::from(mbit);
            assert!((0.85..=1.05).contains(&share), "{what}: {got:.0} Mbit/s on a {mbit} Mbit/s link");
        }
    }
    assert!(free > 2000.0, "uncapped, the link ran at only {free:.0} Mbit/s");
}
