//! The pure crates stay pure: colo-core, colo-model and colo-policy never read a clock, draw
//! unseeded randomness, spawn threads or tasks, or touch files, sockets or processes
//! (docs/ARCHITECTURE.md, "Invariants and boundaries"). Time and randomness are arguments.
//!
//! This reads their sources (comments and test code left out) for the names that do those
//! things. Each crate's clippy.toml bans the same calls as `disallowed-methods`, so an editor
//! shows them too; this test is what `cargo test` checks.

mod common;

/// Names that do I/O or read the world, with why each is banned.
const FORBIDDEN: &[(&str, &str)] = &[
    ("Instant::now", "reads the clock; take `now` as an argument"),
    ("SystemTime::now", "reads the clock; take `now` as an argument"),
    ("thread_rng", "unseeded randomness; take a seeded RNG as an argument"),
    ("rand::random", "unseeded randomness; take a seeded RNG as an argument"),
    ("std::fs", "touches files; take the bytes as an argument"),
    ("File::open", "touches files; take the bytes as an argument"),
    ("File::create", "touches files; take the bytes as an argument"),
    ("std::thread", "spawns threads"),
    ("std::process", "runs processes"),
    ("tokio", "an async runtime: the pure crates are plain functions"),
    ("TcpStream", "opens sockets"),
    ("TcpListener", "opens sockets"),
    ("UdpSocket", "opens sockets"),
];

/// The one place allowed each name, as (file under the workspace, name): the wall clock that
/// records and leases are stamped with. It is vocabulary every daemon shares; colo-policy
/// never calls it (checked below).
const ALLOWED: &[(&str, &str)] = &[("crates/core/src/lib.rs", "SystemTime::now")];

const PURE: &[&str] = &["crates/core/src", "crates/model/src", "crates/policy/src"];

#[test]
fn the_pure_crates_do_no_io_and_read_no_clock() {
    let root = common::workspace();
    let mut problems = Vec::new();
    let mut allowed_seen = Vec::new();
    let mut files = 0;
    for dir in PURE {
        for file in common::rust_files(&root.join(dir)) {
            if common::is_test_file(&file) {
                continue;
            }
            files += 1;
            let rel = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in common::code_lines(&text).iter().enumerate() {
                for (name, why) in FORBIDDEN {
                    if !common::has_token(line, name) {
                        continue;
                    }
                    if ALLOWED.contains(&(rel.as_str(), *name)) {
                        allowed_seen.push((rel.clone(), *name));
                        continue;
                    }
                    problems.push(format!("{rel}:{}: `{name}` {why}", n + 1));
                }
            }
        }
    }
    assert!(
        files > 20,
        "found only {files} source files; is the workspace where this test looks?"
    );
    assert!(problems.is_empty(), "the pure crates must stay pure:\n  {}", problems.join("\n  "));
    // Each exception is used exactly once: a second call site needs its own decision.
    for (file, name) in ALLOWED {
        let n = allowed_seen.iter().filter(|(f, m)| f == file && m == name).count();
        assert_eq!(n, 1, "{file} should name `{name}` exactly once (in `unix_ms`), found {n}");
    }
}

#[test]
fn policy_never_reads_the_wall_clock() {
    let root = common::workspace();
    for file in common::rust_files(&root.join("crates/policy/src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in common::code_lines(&text).iter().enumerate() {
            assert!(
                !common::has_token(line, "unix_ms"),
                "{}:{}: colo-policy takes time as an argument; it must not call `unix_ms`",
                file.display(),
                n + 1
            );
        }
    }
}

#[test]
fn the_token_check_sees_what_it_should() {
    let lines = common::code_lines("let t = std::time::Instant::now(); // Instant::now\n#[cfg(test)]\nuse tokio;\n");
    assert!(common::has_token(&lines[0], "Instant::now"));
    assert_eq!(lines.len(), 1, "test code is left out");
    assert!(!common::has_token("let tokio_like = 1;", "tokio"));
    assert!(
        !common::has_token(&common::code_lines("run(); // tokio")[0], "tokio"),
        "comments are left out"
    );
}
