//! Every committed corpus input and every crash the fuzzers found (`fuzz/corpus/<target>/`,
//! `fuzz/artifacts/<target>/`) run through their target's check: a crash fixed stays fixed.
//! A target without a corpus directory fails the test, so a missing corpus cannot pass silently.

use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_corpus_input_and_found_crash_passes_its_check() {
    let mut ran = Vec::new();
    for (target, check) in colo_fuzzcheck::TARGETS {
        let corpus = fuzz_dir().join("corpus").join(target);
        let entries = std::fs::read_dir(&corpus).unwrap_or_else(|e| panic!("{}: {e}", corpus.display()));
        let mut inputs: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        assert!(!inputs.is_empty(), "{} is empty", corpus.display());
        if let Ok(found) = std::fs::read_dir(fuzz_dir().join("artifacts").join(target)) {
            inputs.extend(found.map(|e| e.unwrap().path()));
        }
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails its check", input.display());
        }
        ran.push(format!("{target}: {}", inputs.len()));
    }
    println!("{}", ran.join(", "));
}
