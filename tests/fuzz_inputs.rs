//! Fuzz-style tests (stable Rust, no cargo-fuzz): seeds from
//! `fuzz/corpus/<target>/` are mutated with proptest-generated edits (byte
//! flips, inserts, deletes, splices between seeds, dictionary tokens) and
//! fed to the parsers for untrusted input. No input may panic; parsed
//! references must round-trip.
//!
//!   cargo test --test fuzz_inputs -- --nocapture                  (~2 s per target)
//!   FUZZ_SECONDS=60 cargo test --test fuzz_inputs -- --ignored --nocapture
//!
//! A panicking input is written to `target/fuzz-crashes/<target>-<n>` and
//! can be added to the corpus once fixed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use cri_imaged::manifest;
use cri_imaged::reference::Reference;
use cri_imaged::registry::Registries;

#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Replace(usize, u8),
    Token(usize, usize),
    Splice(usize, usize, usize),
    Duplicate(usize, usize),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Edit::Delete(p, n)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Replace(p, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(p, t)| Edit::Token(p, t)),
        (any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(s, p, n)| Edit::Splice(s, p, n)),
        (any::<usize>(), 1usize..32).prop_map(|(p, n)| Edit::Duplicate(p, n)),
    ]
}

/// (seed index, edits) or a fully random input.
fn input_strategy() -> impl Strategy<Value = (usize, Vec<Edit>, Option<Vec<u8>>)> {
    prop_oneof![
        9 => (any::<usize>(), prop::collection::vec(edit_strategy(), 1..8)).prop_map(|(s, e)| (s, e, None)),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| (0, vec![], Some(b))),
    ]
}

fn apply(
    seeds: &[Vec<u8>],
    dict: &[&[u8]],
    (seed, edits, raw): &(usize, Vec<Edit>, Option<Vec<u8>>),
) -> Vec<u8> {
    if let Some(r) = raw {
        return r.clone();
    }
    let mut v = seeds[seed % seeds.len()].clone();
    for e in edits {
        let len = v.len();
        let at = |p: usize| if len == 0 { 0 } else { p % (len + 1) };
        match *e {
            Edit::Flip(p, b) if len > 0 => v[p % len] ^= 1 << b,
            Edit::Insert(p, b) => v.insert(at(p), b),
            Edit::Delete(p, n) if len > 0 => {
                let s = p % len;
                v.drain(s..(s + n).min(len));
            }
            Edit::Replace(p, b) if len > 0 => v[p % len] = b,
            Edit::Token(p, t) => {
                let tok = dict[t % dict.len()];
                let i = at(p);
                v.splice(i..i, tok.iter().copied());
            }
            Edit::Splice(s, p, n) => {
                let other = &seeds[s % seeds.len()];
                if !other.is_empty() {
                    let from = p % other.len();
                    let chunk: Vec<u8> = other[from..(from + n).min(other.len())].to_vec();
                    let i = at(p);
                    v.splice(i..i, chunk);
                }
            }
            Edit::Duplicate(p, n) if len > 0 => {
                let s = p % len;
                let chunk: Vec<u8> = v[s..(s + n).min(len)].to_vec();
                v.splice(s..s, chunk);
            }
            _ => {}
        }
    }
    v.truncate(64 << 10);
    v
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let v: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!v.is_empty(), "empty corpus {}", dir.display());
    v
}

/// Run `f` on the seeds, then on mutations for `budget`. Returns executions.
fn fuzz(target: &str, dict: &[&[u8]], budget: Duration, f: impl Fn(&[u8])) -> u64 {
    let seeds = corpus(target);
    let seed_bytes: [u8; 32] = *b"cri-imaged fuzz corpus mutations";
    let mut runner = TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = input_strategy();
    let start = Instant::now();
    let mut execs = 0u64;
    let run = |input: &[u8], execs: &mut u64| {
        *execs += 1;
        if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{target}-{execs}"));
            std::fs::write(&file, input).unwrap();
            panic!(
                "{target}: input panicked (saved to {}): {:?}",
                file.display(),
                String::from_utf8_lossy(input)
            );
        }
    };
    for s in &seeds {
        run(s, &mut execs);
    }
    while start.elapsed() < budget {
        for _ in 0..64 {
            let v = strategy.new_tree(&mut runner).expect("generate").current();
            let input = apply(&seeds, dict, &v);
            run(&input, &mut execs);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz {target}: {execs} executions in {secs:.1} s ({:.0}/s), {} seeds",
        execs as f64 / secs,
        seeds.len()
    );
    execs
}

fn budget(fast: bool) -> Duration {
    if fast {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(
            std::env::var("FUZZ_SECONDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(60),
        )
    }
}

// ---- targets ----

const REF_DICT: &[&[u8]] = &[
    b":",
    b"/",
    b"@",
    b"sha256:",
    b"sha512:",
    b"localhost",
    b"docker.io/",
    b"library/",
    b"..",
    b"--",
    b"__",
    b":5000",
    b"[::1]",
    b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    b"\xff",
    b"\0",
    b"%",
    b"A",
];

fn reference_target(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse_normalized(s) {
        // Round trip: the canonical form parses to the same reference.
        let canon = r.to_string();
        let again = Reference::parse_normalized(&canon)
            .unwrap_or_else(|e| panic!("{s:?} -> {canon:?} does not parse: {e}"));
        assert_eq!(again.to_string(), canon, "{s:?}");
        let _ = (
            r.domain(),
            r.path(),
            r.tag(),
            r.digest(),
            r.name(),
            r.familiar_name(),
            r.familiar_string(),
        );
        let _ = (r.name_tag(), r.name_digest());
        let t = r.clone().with_default_tag();
        assert!(t.tag().is_some() || t.digest().is_some(), "{s:?}");
    }
    let _ = Reference::parse(s);
}

const JSON_DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\"mediaType\"",
    b"\"manifests\"",
    b"\"layers\"",
    b"\"config\"",
    b"\"platform\"",
    b"\"diff_ids\"",
    b"\"schemaVersion\":1",
    b"\"fsLayers\"",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\"size\":-5",
];

fn manifest_target(data: &[u8]) {
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let sniffed = manifest::sniff_media_type("", data);
    for mt in [
        sniffed.as_str(),
        manifest::OCI_INDEX,
        manifest::OCI_MANIFEST,
        manifest::DOCKER_LIST,
        manifest::DOCKER_MANIFEST,
        manifest::DOCKER_SCHEMA1,
        "application/json; charset=utf-8",
    ] {
        match manifest::parse(mt, digest, data) {
            Ok(manifest::Document::Index(idx)) => {
                for d in &idx.manifests {
                    if let Some(p) = &d.platform {
                        let _ = p.to_platform().to_string();
                    }
                    let _ = manifest::is_manifest(&d.media_type);
                }
            }
            Ok(manifest::Document::Manifest(m)) => {
                let _ = (m.config.size, m.layers.len());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    if let Ok(c) = manifest::parse_config(digest, data) {
        let _ = c.platform().to_string();
        let _ = manifest::split_user(c.user());
        let ids = c.diff_ids().to_vec();
        let chain = cri_imaged::reference::chain_id(&ids);
        assert_eq!(chain.len(), ids.len());
    }
}

const TOML_DICT: &[&[u8]] = &[
    b"server = ",
    b"[host.\"",
    b"\"]\n",
    b"capabilities = [\"pull\", \"resolve\"]\n",
    b"ca = ",
    b"client = ",
    b"skip_verify = true\n",
    b"override_path = true\n",
    b"[header]\n",
    b"\"http://",
    b"\"https://",
    b"unix://",
    b"= [[\"a\", \"b\"]]",
    b"\n",
    b"'''",
    b"\\u0000",
    b"\xff",
    b"= 1979-05-27T07:32:00Z",
    b"= inf",
    b"[[host]]",
];

fn hosts_target(dir: &Path) -> impl Fn(&[u8]) + '_ {
    let regs = Registries::new(dir);
    let file = dir.join("fuzz.example").join("hosts.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    move |data: &[u8]| {
        std::fs::write(&file, data).unwrap();
        match regs.hosts("fuzz.example") {
            Ok(hosts) => {
                // The upstream is always the last entry; every endpoint is a URL.
                for h in &hosts {
                    assert!(!h.url.is_empty());
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

const AUTH_DICT: &[&[u8]] = &[
    b"Bearer",
    b"Basic",
    b"realm=",
    b"service=",
    b"scope=",
    b"\"",
    b"\\",
    b",",
    b"=",
    b" ",
    b"error=\"invalid_token\"",
];

/// WWW-Authenticate values come from the registry: any bytes.
fn www_authenticate_target(input: &[u8]) {
    let s = String::from_utf8_lossy(input);
    for (scheme, params) in cri_imaged::registry::fuzz_www_authenticate(&s) {
        assert!(!scheme.is_empty(), "empty scheme from {s:?}");
        assert_eq!(
            scheme,
            scheme.to_ascii_lowercase(),
            "scheme not lower-cased"
        );
        for (k, _) in params {
            assert_eq!(k, k.to_ascii_lowercase(), "parameter name not lower-cased");
        }
    }
}

fn run_all(fast: bool) {
    let t = Instant::now();
    let a = fuzz("reference", REF_DICT, budget(fast), reference_target);
    let b = fuzz("manifest", JSON_DICT, budget(fast), manifest_target);
    let dir = tempfile::tempdir().unwrap();
    let c = fuzz(
        "hosts_toml",
        TOML_DICT,
        budget(fast),
        hosts_target(dir.path()),
    );
    let d = fuzz(
        "www_authenticate",
        AUTH_DICT,
        budget(fast),
        www_authenticate_target,
    );
    println!(
        "fuzz total: {} executions in {:.1?}",
        a + b + c + d,
        t.elapsed()
    );
}

#[test]
fn fuzz_parsers_fast() {
    run_all(true);
}

#[test]
#[ignore = "long: FUZZ_SECONDS=60 cargo test --test fuzz_inputs -- --ignored --nocapture"]
fn fuzz_parsers_long() {
    run_all(false);
}

// Property tests with generated (not mutated) inputs.
proptest! {
    #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn reference_grammar_round_trips(
        host in prop::option::of("[a-z0-9]{1,10}(\\.[a-z]{2,5})?(:[0-9]{1,5})?"),
        path in "[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*){0,3}",
        tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        digest in prop::option::of("[a-f0-9]{64}"),
    ) {
        let mut s = String::new();
        if let Some(h) = &host { s.push_str(h); s.push('/'); }
        s.push_str(&path);
        if let Some(t) = &tag { s.push(':'); s.push_str(t); }
        if let Some(d) = &digest { s.push_str("@sha256:"); s.push_str(d); }
        reference_target(s.as_bytes());
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,200}") {
        reference_target(s.as_bytes());
        manifest_target(s.as_bytes());
    }
}
