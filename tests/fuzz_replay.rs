//! Every file of `fuzz/corpus/<target>/` (the AFL corpus, minimised, and the
//! regression inputs) through its fuzz target, uninstrumented: a corpus input
//! that panics or breaks a target's invariant fails `cargo test`. The targets
//! are `fuzz/src/lib.rs`, included here as a module, so this needs nothing but
//! the main build. One test: the layer writer counts the process's open file
//! descriptors, which other tests running alongside would disturb.
//! Needs root (the layer writer chowns, makes devices, sets trusted xattrs).

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[test]
fn fuzz_corpus_replays() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failed = Vec::new();
    for (name, target) in targets::TARGETS {
        let dir = top.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "empty corpus {}", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failed.push(f.display().to_string());
            }
        }
        println!("{name}: {} inputs", files.len());
    }
    targets::layer_writer_cleanup();
    assert!(failed.is_empty(), "inputs that fail: {failed:#?}");
}
