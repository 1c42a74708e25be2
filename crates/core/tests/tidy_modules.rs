//! No crate of the workspace has a module cycle.
//!
//! A module is a source file (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). Module `m` depends
//! on module `t` when its code names `crate::t...` or `super::...t...` (use trees expanded,
//! names the crate root re-exports followed to the module they come from), and a module depends
//! on its children, which it declares. What a module names of its own ancestors is not a
//! dependency: a child is part of its parent. So a parent may hand a leaf child to a sibling
//! (`hydrate` using `cache::boot`) without a cycle, while `cache` -> `cache::pull` -> `hydrate`
//! -> `cache` is one.
//!
//! Test code (`tests.rs` files, and a file's lines from `#[cfg(test)]` on) is left out.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles that are known and being removed elsewhere, as (crate directory, modules). Only
/// exactly this set of modules is tolerated in that crate.
const KNOWN_CYCLES: &[(&str, &[&str])] = &[];

/// A module path, segments joined by `::`; the crate root is "".
type Module = String;

/// Where a dependency was seen, for the failure message.
#[derive(Clone, Debug)]
struct Seen {
    file: PathBuf,
    line: usize,
}

/// The module a source file is, or `None` for files outside the module tree (`src/bin`).
fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return Some(String::new());
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    Some(parts.join("::"))
}

fn parent(module: &str) -> Option<Module> {
    if module.is_empty() {
        return None;
    }
    Some(module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string()))
}

/// Whether `ancestor` is `module` or one of its ancestors.
fn is_ancestor_or_self(ancestor: &str, module: &str) -> bool {
    ancestor.is_empty() || module == ancestor || module.starts_with(&format!("{ancestor}::"))
}

/// A path of a use tree, with the name it binds (its alias or last segment).
struct UsePath {
    segments: Vec<String>,
    binds: Option<String>,
}

/// Reads a use tree (or a plain path) from the start of `s`: `a::b`, `a::{b, c::d as e}`,
/// `a::*`. Stops at the first character that cannot continue it.
fn parse_tree(s: &[u8], i: &mut usize) -> Vec<UsePath> {
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(i);
    if *i < s.len() && s[*i] == b'{' {
        *i += 1;
        let mut out = Vec::new();
        loop {
            skip_ws(i);
            if *i >= s.len() || s[*i] == b'}' {
                *i += 1;
                return out;
            }
            let before = *i;
            out.extend(parse_tree(s, i));
            skip_ws(i);
            if *i < s.len() && s[*i] == b',' {
                *i += 1;
            } else if *i == before {
                // Something no use tree holds: give up on this group rather than loop.
                return out;
            }
        }
    }
    if *i < s.len() && s[*i] == b'*' {
        *i += 1;
        return vec![UsePath {
            segments: Vec::new(),
            binds: None,
        }];
    }
    let start = *i;
    while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
        *i += 1;
    }
    if start == *i {
        return vec![UsePath {
            segments: Vec::new(),
            binds: None,
        }];
    }
    let ident = String::from_utf8_lossy(&s[start..*i]).into_owned();
    if s[*i..].starts_with(b"::") {
        *i += 2;
        let mut subs = parse_tree(s, i);
        for sub in &mut subs {
            sub.segments.insert(0, ident.clone());
        }
        return subs;
    }
    let mut binds = ident.clone();
    let mut j = *i;
    while j < s.len() && s[j].is_ascii_whitespace() {
        j += 1;
    }
    if s[j..].starts_with(b"as ") {
        j += 3;
        while j < s.len() && s[j].is_ascii_whitespace() {
            j += 1;
        }
        let alias_start = j;
        while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'_') {
            j += 1;
        }
        binds = String::from_utf8_lossy(&s[alias_start..j]).into_owned();
        *i = j;
    }
    let binds = if ident == "self" { None } else { Some(binds) };
    vec![UsePath {
        segments: vec![ident],
        binds,
    }]
}

/// Every path in `code` that starts with `prefix` (`crate::` or `super::`), with the line it
/// is on. `$crate::` (macros) and identifiers that merely end in the prefix are skipped.
fn paths_after(code: &[String], prefix: &str) -> Vec<(usize, UsePath)> {
    let text = code.join("\n");
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        let before = bytes[..at].last().copied();
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b':') {
            continue;
        }
        let line = text[..at].matches('\n').count() + 1;
        let mut i = at + prefix.len();
        for path in parse_tree(bytes, &mut i) {
            out.push((line, path));
        }
    }
    out
}

/// The longest prefix of `segments` that names a module (the root when none does).
fn longest_module(modules: &BTreeSet<Module>, segments: &[String]) -> (Module, usize) {
    for n in (1..=segments.len()).rev() {
        let candidate = segments[..n].join("::");
        if modules.contains(&candidate) {
            return (candidate, n);
        }
    }
    (String::new(), 0)
}

/// The module a path names. `base` is where the path starts (the root for `crate::`).
fn resolve(modules: &BTreeSet<Module>, root_names: &BTreeMap<String, Module>, base: &str, path: &UsePath) -> Module {
    let mut segments: Vec<String> = if base.is_empty() {
        Vec::new()
    } else {
        base.split("::").map(String::from).collect()
    };
    for segment in &path.segments {
        match segment.as_str() {
            "self" => {}
            "super" => {
                segments.pop();
            }
            _ => segments.push(segment.clone()),
        }
    }
    let (module, _) = longest_module(modules, &segments);
    if module.is_empty() {
        if let Some(from) = segments.first().and_then(|name| root_names.get(name)) {
            return from.clone();
        }
    }
    module
}

/// The crate's modules and, for each, the modules it depends on with where it was seen.
fn dependencies(src: &Path) -> BTreeMap<Module, BTreeMap<Module, Seen>> {
    let files: Vec<(Module, PathBuf)> = common::rust_files(src)
        .into_iter()
        .filter(|f| !common::is_test_file(f))
        .filter_map(|f| module_of(src, &f).map(|m| (m, f)))
        .collect();
    let modules: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    let code: BTreeMap<Module, (PathBuf, Vec<String>)> = files
        .iter()
        .map(|(m, f)| (m.clone(), (f.clone(), common::code_lines(&std::fs::read_to_string(f).unwrap()))))
        .collect();

    // What the root brings into scope with `use` is reachable as `crate::<name>` everywhere.
    let mut root_names = BTreeMap::new();
    if let Some((_, lines)) = code.get("") {
        let text = lines.join("\n");
        for (at, _) in text.match_indices("use ") {
            let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
            if !matches!(text[line_start..at].trim(), "" | "pub" | "pub(crate)") {
                continue;
            }
            let mut i = at + "use ".len();
            for path in parse_tree(text.as_bytes(), &mut i) {
                let segments: Vec<String> = path.segments.iter().filter(|s| *s != "crate" && *s != "self").cloned().collect();
                let (module, _) = longest_module(&modules, &segments);
                if let (false, Some(name)) = (module.is_empty(), path.binds) {
                    root_names.insert(name, module);
                }
            }
        }
    }

    let mut deps: BTreeMap<Module, BTreeMap<Module, Seen>> = modules.iter().map(|m| (m.clone(), BTreeMap::new())).collect();
    for (module, (file, lines)) in &code {
        if let Some(parent) = parent(module) {
            let seen = Seen {
                file: file.clone(),
                line: 0,
            };
            deps.entry(parent).or_default().entry(module.clone()).or_insert(seen);
        }
        let base_of_super = parent(module).unwrap_or_default();
        let found = paths_after(lines, "crate::")
            .into_iter()
            .map(|(line, path)| (line, resolve(&modules, &root_names, "", &path)))
            .chain(
                paths_after(lines, "super::")
                    .into_iter()
                    .map(|(line, path)| (line, resolve(&modules, &root_names, &base_of_super, &path))),
            );
        for (line, target) in found {
            if is_ancestor_or_self(&target, module) {
                continue;
            }
            let seen = Seen { file: file.clone(), line };
            deps.entry(module.clone()).or_default().entry(target).or_insert(seen);
        }
    }
    deps
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(deps: &BTreeMap<Module, BTreeMap<Module, Seen>>) -> Vec<BTreeSet<Module>> {
    struct Walk<'a> {
        deps: &'a BTreeMap<Module, BTreeMap<Module, Seen>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<Module>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on_stack.insert(v);
        for t in w.deps.get(v).into_iter().flat_map(|d| d.keys()) {
            let t = t.as_str();
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = BTreeSet::new();
            while let Some(u) = w.stack.pop() {
                w.on_stack.remove(u);
                component.insert(u.to_string());
                if u == v {
                    break;
                }
            }
            if component.len() > 1 {
                w.out.push(component);
            }
        }
    }
    let mut walk = Walk {
        deps,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in deps.keys() {
        if !walk.index.contains_key(v.as_str()) {
            visit(&mut walk, v);
        }
    }
    walk.out
}

fn describe(deps: &BTreeMap<Module, BTreeMap<Module, Seen>>, cycle: &BTreeSet<Module>) -> String {
    let name = |m: &str| if m.is_empty() { "(root)".to_string() } else { m.to_string() };
    let mut out = String::new();
    for from in cycle {
        for (to, seen) in &deps[from] {
            if cycle.contains(to) {
                let at = if seen.line == 0 {
                    "declares it".to_string()
                } else {
                    let file = seen.file.strip_prefix(common::workspace()).unwrap_or(&seen.file);
                    format!("{}:{}", file.display(), seen.line)
                };
                out.push_str(&format!("\n    {} -> {} ({at})", name(from), name(to)));
            }
        }
    }
    out
}

#[test]
fn no_crate_has_a_module_cycle() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for dir in common::crate_dirs() {
        let crate_name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let deps = dependencies(&dir.join("src"));
        checked += deps.len();
        for cycle in cycles(&deps) {
            let known = KNOWN_CYCLES
                .iter()
                .any(|(c, modules)| *c == crate_name && modules.iter().map(|m| m.to_string()).collect::<BTreeSet<_>>() == cycle);
            if known {
                println!("known cycle in crates/{crate_name}: {cycle:?}");
                continue;
            }
            problems.push(format!("crates/{crate_name}: {cycle:?}{}", describe(&deps, &cycle)));
        }
    }
    assert!(
        checked > 50,
        "found only {checked} modules; is the workspace where this test looks?"
    );
    assert!(problems.is_empty(), "module cycles:\n  {}", problems.join("\n  "));
}

/// The checker itself, on sources written here: it must see a cycle through a parent, follow
/// root re-exports and `super::`, and accept a leaf child used by a sibling.
#[test]
fn the_checker_finds_cycles_through_parents_and_re_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod cache;\nmod hydrate;\npub use cache::{HostCache as Cache};\n");
    write("cache/mod.rs", "mod boot;\nmod pull;\npub struct HostCache;\n");
    write("cache/boot.rs", "pub fn stamp() {}\n");
    write("cache/pull.rs", "use crate::hydrate::run;\nuse super::HostCache;\n");
    write("hydrate/mod.rs", "mod job;\npub fn run() { crate::cache::boot::stamp(); }\n");
    write(
        "hydrate/job.rs",
        "use super::super::cache::boot;\n#[cfg(test)]\nmod tests { use crate::Cache; }\n",
    );
    let acyclic = dependencies(dir);
    assert_eq!(cycles(&acyclic), Vec::<BTreeSet<Module>>::new(), "{acyclic:?}");
    assert!(acyclic["hydrate::job"].contains_key("cache::boot"), "{acyclic:?}");

    // Through the root's re-export, `hydrate` now needs all of `cache`, whose `pull` needs it.
    write("hydrate/mod.rs", "mod job;\npub fn run(_: &crate::Cache) {}\n");
    let cyclic = cycles(&dependencies(dir));
    let expected: BTreeSet<Module> = ["cache", "cache::pull", "hydrate"].map(String::from).into();
    assert_eq!(cyclic, vec![expected]);
}
