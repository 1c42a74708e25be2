//! `colo up --tls-cert --tls-key` (issue 16, item 6): the edge speaks HTTPS only, with HTTP/2
//! through ALPN, to real clients: the openai Python client streams and requests a chat
//! completion from colo's engine over TLS, curl streams one over HTTP/2, the admin endpoints
//! still want the API token, and plain HTTP is told to use HTTPS.

mod common;

use common::Colo;
use std::path::Path;
use std::process::Command;

/// A CA and a certificate for 127.0.0.1 and `*.apps.test` signed by it (ca.pem, edge.pem,
/// edge.key in `dir`), made with the openssl command.
fn make_certificates(dir: &Path) {
    let run = |args: &str| {
        let out = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
            .expect("the openssl command (Debian's openssl package)");
        assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=colo-test-ca");
    run("req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout edge.key -out edge.csr -subj /CN=colo-edge");
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:*.apps.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run("x509 -req -in edge.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out edge.pem -days 2 -extfile ext.cnf");
}

/// curl's answer to `args` against `url`, trusting the test CA: exit status, then the body and
/// `|<status>|<http version>`.
fn curl(ca: &Path, url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--cacert"])
        .arg(ca)
        .args(["-w", "|%{http_code}|%{http_version}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (Debian's curl package)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn colo_up_serves_https_and_http2_to_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certificates(&certs);
    let (cert, key, ca) = (certs.join("edge.pem"), certs.join("edge.key"), certs.join("ca.pem"));
    let colo = Colo::up_with(
        &dir.path().join("colo"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--domain",
            "apps.test",
        ],
    );
    let edge = colo.edge.clone();
    assert!(edge.starts_with("https://127.0.0.1:"), "the run file names the HTTPS edge: {edge}");
    let (ok, out) = curl(&ca, &format!("{edge}/health"), &["--http2"]);
    assert!(ok && out.ends_with("|200|2"), "health over HTTP/2: {out}");

    colo.push_tiny("tiny");
    colo.ok(&["deploy", "tiny", "--model", "tiny"]);

    // The openai client (HTTP/1.1 over TLS), streaming and whole.
    let out = Command::new("python3")
        .arg(common::repo_root().join("tests/py/openai_chat.py"))
        .arg(format!("{edge}/v1"))
        .arg("tiny")
        .env("COLO_TEST_CA", &ca)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "openai client over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["stream_text"], result["whole_text"], "{result}");
    assert_eq!(result["stream_usage"]["completion_tokens"], 10, "{result}");

    // A stream over HTTP/2, by app host name (the wildcard name of the certificate).
    let port = edge.rsplit(':').next().unwrap();
    let body = r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}"#;
    let (ok, out) = curl(
        &ca,
        &format!("https://tiny.apps.test:{port}/v1/chat/completions"),
        &[
            "--http2",
            "--resolve",
            &format!("tiny.apps.test:{port}:127.0.0.1"),
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ],
    );
    assert!(ok && out.ends_with("|200|2"), "stream over HTTP/2: {out}");
    assert!(out.matches("data: {").count() >= 5 && out.contains("data: [DONE]"), "{out}");

    // The admin endpoints want the API token over TLS too.
    let (ok, out) = curl(&ca, &format!("{edge}/metrics"), &["--http2"]);
    assert!(ok && out.ends_with("|401|2"), "/metrics without the token: {out}");
    let bearer = format!("authorization: Bearer {}", colo.token());
    let (ok, out) = curl(&ca, &format!("{edge}/metrics"), &["--http2", "-H", &bearer]);
    assert!(
        ok && out.ends_with("|200|2") && out.contains("colo_edge_connections"),
        "/metrics with it: {out}"
    );

    // Plain HTTP on the HTTPS address: told what to do instead.
    let plain = edge.replacen("https://", "http://", 1);
    let (_, out) = curl(&ca, &format!("{plain}/health"), &[]);
    assert!(out.contains("https_required") && out.ends_with("|400|1.1"), "{out}");
    colo.stop();
}

#[test]
fn certificates_that_do_not_load_stop_colo_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let colo = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_colo"))
            .args(["up", "--edge-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "colo up {args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = colo(&["--tls-cert", "/nowhere/edge.pem"]);
    assert!(
        stderr.contains("--tls-cert and --tls-key go in pairs: 1 certificates and 0 keys"),
        "{stderr}"
    );
    let stderr = colo(&["--tls-cert", "/nowhere/edge.pem", "--tls-key", "/nowhere/edge.key"]);
    assert!(stderr.contains("TLS certificate /nowhere/edge.pem: not a readable PEM"), "{stderr}");
    let key = dir.path().join("edge.key");
    std::fs::write(&key, "not a key").unwrap();
    let readme = common::repo_root().join("README.md");
    let stderr = colo(&["--tls-cert", readme.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(stderr.contains("holds no certificate"), "{stderr}");
    assert!(
        !dir.path().join("colo.json").exists(),
        "a run file was written by a colo that did not start"
    );
}
