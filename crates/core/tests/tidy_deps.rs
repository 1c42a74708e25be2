//! colo-policy depends on what docs/ARCHITECTURE.md says and nothing more: colo-core,
//! colo-model, serde and thiserror; and nothing it builds on, however deep, brings an async
//! runtime or an HTTP stack.

mod common;

use std::collections::{BTreeMap, BTreeSet};

/// colo-policy's `[dependencies]`, as docs/ARCHITECTURE.md ("colo-policy") names them.
const POLICY_DEPENDENCIES: &[&str] = &["colo-core", "colo-model", "serde", "thiserror"];

/// Crates that must not be in colo-policy's build: runtimes, sockets, HTTP.
const NEVER_UNDER_POLICY: &[&str] = &["tokio", "mio", "hyper", "hyper-util", "axum", "reqwest", "async-nats", "socket2"];

fn manifest(crate_dir: &str) -> toml::Table {
    let path = common::workspace().join(crate_dir).join("Cargo.toml");
    std::fs::read_to_string(&path).unwrap().parse().unwrap()
}

fn dependency_names(manifest: &toml::Table) -> BTreeSet<String> {
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn policy_depends_on_exactly_what_the_architecture_says() {
    let found = dependency_names(&manifest("crates/policy"));
    let expected: BTreeSet<String> = POLICY_DEPENDENCIES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        found, expected,
        "crates/policy/Cargo.toml [dependencies] must be what docs/ARCHITECTURE.md says; change both together"
    );
    let architecture = std::fs::read_to_string(common::workspace().join("docs/ARCHITECTURE.md")).unwrap();
    let words: Vec<&str> = architecture.split_whitespace().collect();
    assert!(
        words
            .join(" ")
            .contains("depends only on colo-core, colo-model, serde and thiserror"),
        "docs/ARCHITECTURE.md no longer lists colo-policy's dependencies as this test expects"
    );
}

/// Every crate colo-policy builds on, through workspace manifests (normal dependencies only)
/// and then Cargo.lock (which lists only normal and build dependencies of registry crates).
fn policy_build_graph() -> BTreeSet<String> {
    let members: BTreeMap<String, String> = common::crate_dirs()
        .into_iter()
        .map(|dir| {
            let rel = dir.strip_prefix(common::workspace()).unwrap().to_string_lossy().into_owned();
            let name = manifest(&rel)["package"]["name"].as_str().unwrap().to_string();
            (name, rel)
        })
        .collect();
    let lock: toml::Table = std::fs::read_to_string(common::workspace().join("Cargo.lock"))
        .unwrap()
        .parse()
        .unwrap();
    let mut locked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in lock["package"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap().to_string();
        let deps = package
            .get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            // "name" or "name version" where several versions are locked.
            .map(|d| d.split(' ').next().unwrap_or(d).to_string());
        locked.entry(name).or_default().extend(deps);
    }

    let mut seen = BTreeSet::new();
    let mut todo = vec!["colo-policy".to_string()];
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let next: Vec<String> = match members.get(&name) {
            Some(dir) => dependency_names(&manifest(dir)).into_iter().collect(),
            None => locked.get(&name).into_iter().flatten().cloned().collect(),
        };
        todo.extend(next);
    }
    seen
}

#[test]
fn nothing_under_policy_brings_a_runtime_or_http() {
    let graph = policy_build_graph();
    assert!(
        graph.contains("serde") && graph.contains("colo-model"),
        "the walk found too little: {graph:?}"
    );
    let bad: Vec<&&str> = NEVER_UNDER_POLICY.iter().filter(|c| graph.contains(**c)).collect();
    assert!(bad.is_empty(), "colo-policy's build pulls in {bad:?}; its whole graph: {graph:?}");
}
