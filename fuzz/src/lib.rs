//! The fuzz targets: one plain function per target, taking any bytes. Each
//! panics (under AFL: aborts) on a broken invariant and returns otherwise.
//!
//! Used twice: by the AFL binaries in `fuzz/src/bin/` (instrumented, built
//! with `cargo afl build --features afl` in `fuzz/`), and by the replay test
//! `tests/fuzz_replay.rs` of the main crate, which includes this file as a
//! module and runs every file of `fuzz/corpus/<target>/` through its target,
//! uninstrumented, as part of `cargo test`.
//!
//! Only `cri_imaged` and crates the main crate depends on are used here, so
//! the replay test needs nothing more than the main build.

use cri_imaged::fuzz_hooks::{platform_select, Matcher, Platform};
use cri_imaged::manifest;
use cri_imaged::reference::{self, Reference};
use cri_imaged::registry;

/// A target: one input, panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by its corpus directory name.
pub const TARGETS: &[(&str, Target)] = &[
    ("layer_writer", layer_writer),
    ("reference", reference),
    ("digest", digest),
    ("platform", platform),
    ("manifest", manifest),
    ("www_authenticate", www_authenticate),
    ("token_response", token_response),
    ("hosts_toml", hosts_toml),
    ("cri_request", cri_request),
];

// ---------------------------------------------------------------- parsers

/// Image references: `Reference::parse_normalized` / `parse` and the image
/// query of the CRI calls; a parsed reference round-trips through its
/// canonical string.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse_normalized(s) {
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
            r.name_tag(),
            r.name_digest(),
        );
        let t = r.clone().with_default_tag();
        assert!(t.tag().is_some() || t.digest().is_some(), "{s:?}");
        if let Some(d) = r.digest() {
            assert!(reference::is_valid_digest(d), "{s:?}: digest {d:?}");
        }
        let _ = r.with_tag("latest");
        let _ = r.try_with_digest(s);
    }
    let _ = Reference::parse(s);
    if let Ok(reference::ImageQuery::Id(id)) = reference::parse_image_query(s) {
        assert!(reference::is_valid_digest(&id), "{s:?}: id {id:?}");
    }
}

/// Digests and chain IDs: one digest a line; a valid digest attaches to a
/// reference, a chain ID per diff ID.
pub fn digest(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let lines: Vec<String> = s.lines().map(str::to_string).collect();
    let base = Reference::parse_normalized("busybox").expect("busybox parses");
    for l in &lines {
        let valid = reference::is_valid_digest(l);
        let attached = base.try_with_digest(l);
        if valid {
            let r = attached.unwrap_or_else(|e| panic!("valid digest {l:?} rejected: {e}"));
            assert_eq!(r.digest(), Some(l.as_str()));
        }
    }
    let chain = reference::chain_id(&lines);
    assert_eq!(chain.len(), lines.len());
    if let Some(first) = lines.first() {
        assert_eq!(&chain[0], first, "the first chain ID is the first diff ID");
    }
}

/// Platform specifiers: the first line is wanted, the others offered (as
/// an index's entries); parse, normalise, match and select.
pub fn platform(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let mut lines = s.lines();
    let wanted = lines.next().unwrap_or("");
    let offered: Vec<Option<Platform>> = lines.map(|l| Platform::parse(l).ok()).collect();
    let Ok(p) = Platform::parse(wanted) else {
        return;
    };
    let n = p.normalize();
    assert_eq!(n.normalize(), n, "normalize is idempotent for {wanted:?}");
    let _ = p.to_string();
    for strict in [false, true] {
        let m = Matcher::new(vec![p.clone()], strict);
        let _ = m.describe();
        for o in offered.iter().flatten() {
            let _ = (m.matches(o), m.rank(o));
        }
        if let Ok(i) = platform_select(&m, &offered) {
            assert!(i < offered.len(), "select out of range");
        }
    }
}

/// Manifests, indexes and configs (JSON from the registry) under every media
/// type, with the 4 MiB document limit.
pub fn manifest(data: &[u8]) {
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
        let chain = reference::chain_id(&ids);
        assert_eq!(chain.len(), ids.len());
    }
    assert!(
        data.len() as u64 <= manifest::MAX_DOCUMENT_BYTES || {
            manifest::parse(manifest::OCI_MANIFEST, digest, data).is_err()
                && manifest::parse_config(digest, data).is_err()
        }
    );
}

/// `WWW-Authenticate` values (any bytes from the registry): schemes and
/// parameter names come out lower-cased, never empty.
pub fn www_authenticate(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    for (scheme, params) in registry::fuzz_www_authenticate(&s) {
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

/// The token server's JSON answer.
pub fn token_response(data: &[u8]) {
    let _ = registry::fuzz_token_response(data);
}

/// `hosts.toml` (an operator's file, but read on every pull): endpoints are
/// URLs, the upstream comes last.
pub fn hosts_toml(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(hosts) = registry::fuzz_hosts_toml(s, "fuzz.example") {
        for h in &hosts {
            assert!(!h.url.is_empty());
        }
    }
}

/// A CRI request's protobuf bytes (the first byte picks the RPC) through the
/// handlers' decode and checks: a `Status` or success, never a panic.
pub fn cri_request(data: &[u8]) {
    let Some((&rpc, body)) = data.split_first() else {
        return;
    };
    if let Err(st) = cri_imaged::fuzz_hooks::cri_request(rpc, body) {
        let _ = (st.code(), st.message());
    }
}

// ---------------------------------------------------------- layer writer

#[path = "layer_env.rs"]
mod layer_env;
pub use layer_env::{layer_writer, layer_writer_cleanup};
