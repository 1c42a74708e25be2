//! TLS at the edge, with real clients: curl (OpenSSL, nghttp2) speaks HTTP/2 and HTTP/1.1 to
//! an edge served as in production, each app host name gets its own certificate by SNI (exact,
//! wildcard, default), a certificate replaced on disk is served without a restart (and a broken
//! replacement is not), plain HTTP is told to use HTTPS, and a stalled handshake is cut off.
//! Certificates are made with the openssl command.

use axum::routing::post;
use colo_edge::routes::Endpoint;
use colo_edge::tls::{CertFiles, EdgeTls};
use colo_edge::{serve, Edge, EdgeConfig, RouteTable};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn openssl(dir: &Path, args: &str) {
    let out = std::process::Command::new("openssl")
        .args(args.split(' '))
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian's openssl package) makes the test certificates");
    assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA named `ca` in `dir` (ca.pem, ca.key).
fn make_ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &format!("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN={ca}"),
    );
}

/// A certificate `name`.pem / `name`.key for DNS name `host`, signed by CA `ca`; its files.
fn make_cert(dir: &Path, ca: &str, name: &str, host: &str) -> CertFiles {
    openssl(
        dir,
        &format!("req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key -out {name}.csr -subj /CN=colo-test"),
    );
    std::fs::write(
        dir.join(format!("{name}.cnf")),
        format!("subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &format!("x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.cnf"),
    );
    CertFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// A machine that echoes the body it was sent, prefixed with `echo:`.
async fn echo_upstream() -> String {
    let app = axum::Router::new().route("/v1/embeddings", post(|body: String| async move { format!("echo:{body}") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

/// What curl made of one call: its exit status, and its output (the body, then the HTTP
/// version after a `|`).
async fn curl(port: u16, host: &str, ca: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1"), "-w", "|%{http_version}"])
        .args(args)
        .arg(format!("https://{host}:{port}/v1/embeddings"))
        .output()
        .await
        .expect("curl (Debian's curl package) is the HTTP/2 client of this test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

struct Served {
    port: u16,
    dir: PathBuf,
    _stop: watch::Sender<bool>,
    _routes: watch::Sender<Arc<RouteTable>>,
    _tmp: tempfile::TempDir,
}

/// An edge for app `chat` under domain `apps.test`, with three certificates: the
/// default for `edge.test`, one for `chat.apps.test` and a wildcard `*.apps.test`, all signed
/// by CA `ca1`.
async fn served(head_timeout: Duration) -> (Served, Arc<EdgeTls>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    make_ca(&dir, "ca1");
    let files = vec![
        make_cert(&dir, "ca1", "default", "edge.test"),
        make_cert(&dir, "ca1", "chat", "chat.apps.test"),
        make_cert(&dir, "ca1", "wild", "*.apps.test"),
    ];
    let tls = EdgeTls::load(files).unwrap();
    assert_eq!(
        tls.names(),
        vec![
            vec!["edge.test".to_string()],
            vec!["chat.apps.test".into()],
            vec!["*.apps.test".into()]
        ]
    );
    EdgeTls::watch(&tls, Duration::from_millis(200));
    let upstream = echo_upstream().await;
    let table = RouteTable::single("chat", vec![Endpoint::new("m1", &upstream, "local").unwrap()]);
    let (routes, rx) = watch::channel(Arc::new(table));
    let config = EdgeConfig {
        domain: "apps.test".into(),
        tls: Some(tls.clone()),
        limits: colo_edge::Limits {
            head_timeout,
            ..colo_edge::Limits::default()
        },
        ..EdgeConfig::default()
    };
    let edge = Edge::new(config, rx);
    let sockets = serve::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let port = sockets.addr().port();
    let (stop, stop_rx) = watch::channel(false);
    serve::spawn(sockets, edge, stop_rx, Duration::from_secs(1)).unwrap();
    let served = Served {
        port,
        dir,
        _stop: stop,
        _routes: routes,
        _tmp: tmp,
    };
    (served, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_over_tls_with_a_certificate_per_host_reloaded_on_change() {
    let (edge, _tls) = served(Duration::from_secs(10)).await;
    let (port, dir) = (edge.port, edge.dir.clone());
    let ca1 = dir.join("ca1.pem");

    // HTTP/2 through ALPN, a request body proxied and the machine's answer back.
    let (ok, out) = curl(port, "chat.apps.test", &ca1, &["--http2", "-d", r#"{"input":"h2"}"#]).await;
    assert!(ok, "HTTP/2 call failed: {out}");
    assert_eq!(out, r#"echo:{"input":"h2"}|2"#);
    // HTTP/1.1 over TLS takes the fast path.
    let (ok, out) = curl(port, "chat.apps.test", &ca1, &["--http1.1", "-d", r#"{"input":"h1"}"#]).await;
    assert!(ok, "HTTP/1.1 call failed: {out}");
    assert_eq!(out, r#"echo:{"input":"h1"}|1.1"#);
    // Several streams on one HTTP/2 connection at once.
    let url = format!("https://chat.apps.test:{port}/v1/embeddings");
    let many = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2", "-Z", "--cacert"])
        .arg(&ca1)
        .args(["--resolve", &format!("chat.apps.test:{port}:127.0.0.1"), "-d", "x"])
        .args(["-o", "/dev/null", "-w", "%{http_code}|%{http_version}|%{num_connects}\n"])
        .args([&url, &url, &url, &url])
        .output()
        .await
        .unwrap();
    // Bodies and the -w lines interleave; each transfer's line is `200|2|<connections made>`.
    let text = String::from_utf8_lossy(&many.stdout).replace("echo:x", "");
    assert_eq!(text.matches("200|2|").count(), 4, "{text}");
    let connects: u32 = text.lines().filter_map(|l| l.rsplit('|').next()?.parse::<u32>().ok()).sum();
    assert_eq!(connects, 1, "the four streams did not share one connection: {text}");

    // Each host name gets the certificate that covers it: curl checks the name against the
    // certificate, so a call succeeds only when SNI picked the right one. The wildcard covers
    // `embed` (an app that does not exist: the edge's 404 comes over TLS); a name nothing
    // covers gets the default, which curl refuses.
    let (ok, out) = curl(port, "embed.apps.test", &ca1, &["-d", "w"]).await;
    assert!(ok && out.ends_with("|2") && out.contains("embed"), "wildcard host: {out}");
    let (ok, out) = curl(port, "other.example", &ca1, &["-d", "w"]).await;
    assert!(!ok && out.contains("certificate"), "a name no certificate covers: {out}");

    // A broken replacement (a renewal half written) leaves the old certificate serving.
    let chat = dir.join("chat.pem");
    std::fs::write(&chat, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (ok, out) = curl(port, "chat.apps.test", &ca1, &["-d", "still"]).await;
    assert!(ok, "a broken certificate file replaced the good one: {out}");

    // A new certificate from another CA is served within a second or so, with no restart.
    make_ca(&dir, "ca2");
    make_cert(&dir, "ca2", "chat", "chat.apps.test");
    let ca2 = dir.join("ca2.pem");
    let started = Instant::now();
    loop {
        let (ok, out) = curl(port, "chat.apps.test", &ca2, &["-d", "new"]).await;
        if ok {
            assert_eq!(out, "echo:new|2");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate was never served: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, _) = curl(port, "chat.apps.test", &ca1, &["-d", "old"]).await;
    assert!(!ok, "the old certificate is still served after the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_told_to_use_https_and_a_stalled_handshake_is_cut_off() {
    let (edge, _tls) = served(Duration::from_millis(500)).await;
    let addr = format!("127.0.0.1:{}", edge.port);

    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nhost: chat.apps.test\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_string(&mut answer))
        .await
        .expect("the plain request was not answered and closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("https_required") && answer.contains("use an https:// URL"),
        "{answer}"
    );

    // A client that starts a handshake and stops: closed once the head timeout passes.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("a stalled handshake held its connection open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}
