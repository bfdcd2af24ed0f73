//! Docker/distribution image reference rules.
//!
//! A Rust port of `github.com/distribution/reference` (`reference.go`,
//! `normalize.go`, `regexp.go`, `helpers.go`) plus the go-digest validation
//! rules that `Parse` applies to the digest part.
//!
//! * [`Reference::parse`] is upstream `Parse`: no normalisation; the first
//!   path component is taken as the domain whenever the name grammar allows
//!   it (`"busybox"` → domain `""`, path `"busybox"`; `"a/b"` → domain `"a"`,
//!   path `"b"`).
//! * [`Reference::parse_normalized`] is upstream `ParseNormalizedNamed`
//!   (`"busybox"` → `docker.io/library/busybox`, no tag added).
//! * [`parse_image_query`] is the CRI image-query classifier (image ID, short
//!   ID, or name), modelled on upstream `ParseAnyReference`.
//!
//! Differences from upstream, all deliberate:
//! * inputs longer than [`MAX_REFERENCE_LEN`] bytes are refused up front
//!   ([`ReferenceError::TooLong`]);
//! * the 255-character limit applies to the whole name (domain + path), as
//!   in the upstream test vectors and containerd's copy of the package;
//! * the supported digest algorithms are sha256, sha384 and sha512.

mod digest;
mod query;
mod regexp;

use std::fmt;
use std::str::FromStr;

pub use self::digest::{chain_id, is_valid_digest};
pub use self::query::{parse_image_query, ImageQuery};

use self::regexp::{ANCHORED_DIGEST, ANCHORED_IDENTIFIER, ANCHORED_NAME, ANCHORED_TAG, REFERENCE};

/// Maximum length in bytes of a whole reference string (not an upstream limit;
/// a guard against pathological inputs).
pub const MAX_REFERENCE_LEN: usize = 4096;
/// Upstream `RepositoryNameTotalLengthMax`.
pub const MAX_NAME_LEN: usize = 255;
/// Docker Hub's canonical domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy domain, normalised to [`DEFAULT_DOMAIN`].
pub const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Namespace of official images on Docker Hub.
pub const OFFICIAL_REPO_PREFIX: &str = "library/";
/// Tag added by [`Reference::with_default_tag`].
pub const DEFAULT_TAG: &str = "latest";
const LOCALHOST: &str = "localhost";

/// Why a reference string was refused. The payload is the offending input,
/// truncated to 100 characters.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference: empty")]
    Empty,
    #[error("invalid reference: longer than 4096 bytes")]
    TooLong,
    #[error("invalid reference {0:?}: repository name longer than 255 characters")]
    NameTooLong(String),
    /// Upstream `ErrNameContainsUppercase`.
    #[error("invalid reference {0:?}: repository name must be lowercase")]
    NameNotCanonical(String),
    #[error("invalid reference {0:?}: invalid tag format")]
    BadTag(String),
    /// Unsupported algorithm, wrong length for the algorithm, or malformed.
    #[error("invalid reference {0:?}: invalid digest format")]
    BadDigest(String),
    #[error(
        "invalid reference {0:?}: cannot specify 64-byte hexadecimal strings as a repository name"
    )]
    IdAsName(String),
    #[error("invalid reference {0:?}: invalid reference format")]
    Invalid(String),
}

/// Truncate `s` to at most 100 characters for error messages.
fn trunc(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A parsed image reference: `[domain/]path[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Upstream `ParseNormalizedNamed`: turns a familiar name into a fully
    /// qualified one. `"busybox"` → `docker.io/library/busybox` (no tag is
    /// added); `"index.docker.io/x"` → `docker.io/library/x`;
    /// `"localhost:5000/a"` keeps its host.
    ///
    /// The first `/`-separated component is a domain when it contains `.` or
    /// `:`, equals `localhost`, or — exactly as upstream `splitDockerDomain` —
    /// contains an upper-case letter (`"Foo/bar"` → domain `Foo`, path `bar`).
    ///
    /// Refuses bare 64-hex strings ([`ReferenceError::IdAsName`]), upper-case
    /// repository paths ([`ReferenceError::NameNotCanonical`]), inputs over 4096
    /// bytes ([`ReferenceError::TooLong`]) and names over 255 characters
    /// ([`ReferenceError::NameTooLong`]; counted on the normalised name).
    pub fn parse_normalized(s: &str) -> Result<Reference, ReferenceError> {
        precheck(s)?;
        if ANCHORED_IDENTIFIER.is_match(s) {
            return Err(ReferenceError::IdAsName(trunc(s)));
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote = match remainder.find(':') {
            Some(i) => &remainder[..i],
            None => &remainder[..],
        };
        if remote.to_lowercase() != remote {
            return Err(ReferenceError::NameNotCanonical(trunc(s)));
        }
        let full = format!("{domain}/{remainder}");
        parse_inner(&full).map_err(|e| e.with_input(s))
    }

    /// Upstream `Parse`: strict parse of `name[:tag][@digest]` with no
    /// normalisation. The name is split with upstream's anchored name regexp,
    /// so the first component becomes the domain whenever a `/` follows it:
    /// `"busybox"` → domain `""`, path `"busybox"`; `"library/busybox"` →
    /// domain `"library"`, path `"busybox"`. `to_string()` of the result
    /// reproduces the input exactly.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        precheck(s)?;
        parse_inner(s)
    }

    /// Registry host (and port), e.g. `docker.io`; empty for a domain-less
    /// [`Reference::parse`] result.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Repository path within the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Full repository name, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        if self.domain.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// Upstream `FamiliarName`: drops `docker.io/` and, for single-component
    /// official images, `library/` (`docker.io/library/busybox` → `busybox`,
    /// `docker.io/library/foo/bar` stays `library/foo/bar`).
    pub fn familiar_name(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.name();
        }
        match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }

    /// Upstream `FamiliarString`: familiar name plus `:tag` and `@digest`.
    pub fn familiar_string(&self) -> String {
        self.render(self.familiar_name())
    }

    /// Upstream `TagNameOnly`: adds `:latest` when there is neither a tag nor
    /// a digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// `name:tag` (fully qualified) if there is a tag.
    pub fn name_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `name@digest` (fully qualified) if there is a digest.
    pub fn name_digest(&self) -> Option<String> {
        self.digest.as_ref().map(|d| format!("{}@{d}", self.name()))
    }

    /// Same reference with `digest` set (any tag kept). The digest is NOT
    /// validated — pass only digests you computed or validated; use
    /// [`Reference::try_with_digest`] for untrusted input.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// Upstream `WithDigest`: like [`Reference::with_digest`] but refuses
    /// anything that is not a valid, supported digest.
    pub fn try_with_digest(&self, digest: &str) -> Result<Reference, ReferenceError> {
        if !ANCHORED_DIGEST.is_match(digest) || !is_valid_digest(digest) {
            return Err(ReferenceError::BadDigest(trunc(digest)));
        }
        Ok(self.with_digest(digest))
    }

    /// Upstream `WithTag`: same reference with `tag` set (any digest kept).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !ANCHORED_TAG.is_match(tag) {
            return Err(ReferenceError::BadTag(trunc(tag)));
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            ..self.clone()
        })
    }

    fn render(&self, name: String) -> String {
        let mut s = name;
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

impl fmt::Display for Reference {
    /// Fully qualified `name[:tag][@digest]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(self.name()))
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// Same as [`Reference::parse_normalized`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse_normalized(s)
    }
}

impl ReferenceError {
    /// Replace the carried input (used when an inner parse ran on a
    /// normalised string, so messages show what the caller passed).
    fn with_input(self, s: &str) -> ReferenceError {
        use ReferenceError::*;
        let t = trunc(s);
        match self {
            Empty => Empty,
            TooLong => TooLong,
            NameTooLong(_) => NameTooLong(t),
            NameNotCanonical(_) => NameNotCanonical(t),
            BadTag(_) => BadTag(t),
            BadDigest(_) => BadDigest(t),
            IdAsName(_) => IdAsName(t),
            Invalid(_) => Invalid(t),
        }
    }
}

fn precheck(s: &str) -> Result<(), ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if s.len() > MAX_REFERENCE_LEN {
        return Err(ReferenceError::TooLong);
    }
    Ok(())
}

/// Upstream `Parse` after the length pre-checks.
fn parse_inner(s: &str) -> Result<Reference, ReferenceError> {
    let Some(caps) = REFERENCE.captures(s) else {
        let lower = s.to_lowercase();
        if lower != s && REFERENCE.is_match(&lower) {
            return Err(ReferenceError::NameNotCanonical(trunc(s)));
        }
        return Err(ReferenceError::Invalid(trunc(s)));
    };
    let name = caps.get(1).map_or("", |m| m.as_str());
    if name.len() > MAX_NAME_LEN {
        return Err(ReferenceError::NameTooLong(trunc(s)));
    }
    let (domain, path) = match ANCHORED_NAME.captures(name) {
        Some(n) => (
            n.get(1).map_or("", |m| m.as_str()).to_string(),
            n.get(2).map_or("", |m| m.as_str()).to_string(),
        ),
        None => (String::new(), name.to_string()),
    };
    let tag = caps.get(2).map(|m| m.as_str().to_string());
    let digest = caps.get(3).map(|m| m.as_str().to_string());
    if let Some(d) = &digest {
        if digest::check_digest(d).is_err() {
            return Err(ReferenceError::BadDigest(trunc(s)));
        }
    }
    Ok(Reference {
        domain,
        path,
        tag,
        digest,
    })
}

/// Upstream `splitDockerDomain`: returns (domain, remainder) where remainder
/// still carries any `:tag` / `@digest`.
fn split_docker_domain(name: &str) -> (String, String) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        return (
            DEFAULT_DOMAIN.to_string(),
            format!("{OFFICIAL_REPO_PREFIX}{name}"),
        );
    };
    let (domain, mut remote) = if maybe_domain == LOCALHOST {
        (maybe_domain.to_string(), maybe_remote.to_string())
    } else if maybe_domain == LEGACY_DEFAULT_DOMAIN {
        (DEFAULT_DOMAIN.to_string(), maybe_remote.to_string())
    } else if maybe_domain.contains(['.', ':']) || maybe_domain.to_lowercase() != maybe_domain {
        (maybe_domain.to_string(), maybe_remote.to_string())
    } else {
        (DEFAULT_DOMAIN.to_string(), name.to_string())
    };
    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        remote = format!("{OFFICIAL_REPO_PREFIX}{remote}");
    }
    (domain, remote)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// Expected outcome of a parse: Ok(domain, name, tag, digest) or the
    /// error kind (compared by variant).
    type Want<'a> = Result<(&'a str, &'a str, &'a str, &'a str), ReferenceError>;

    fn same_kind(a: &ReferenceError, b: &ReferenceError) -> bool {
        std::mem::discriminant(a) == std::mem::discriminant(b)
    }

    fn inv() -> ReferenceError {
        ReferenceError::Invalid(String::new())
    }
    fn upper() -> ReferenceError {
        ReferenceError::NameNotCanonical(String::new())
    }
    fn bad_digest() -> ReferenceError {
        ReferenceError::BadDigest(String::new())
    }
    fn too_long_name() -> ReferenceError {
        ReferenceError::NameTooLong(String::new())
    }

    fn check(parse: fn(&str) -> Result<Reference, ReferenceError>, input: &str, want: &Want) {
        let got = parse(input);
        match (want, &got) {
            (Ok((domain, name, tag, digest)), Ok(r)) => {
                assert_eq!(r.domain(), *domain, "domain of {input:?}");
                assert_eq!(r.name(), *name, "name of {input:?}");
                assert_eq!(r.tag().unwrap_or(""), *tag, "tag of {input:?}");
                assert_eq!(r.digest().unwrap_or(""), *digest, "digest of {input:?}");
            }
            (Err(w), Err(g)) => assert!(same_kind(w, g), "{input:?}: want {w:?}, got {g:?}"),
            _ => panic!("{input:?}: want {want:?}, got {got:?}"),
        }
    }

    /// Upstream reference_test.go `TestReferenceParse` (strict `Parse`).
    #[test]
    fn upstream_reference_parse() {
        let d256 = format!("sha256:{F64}");
        let d512 = format!("sha512:{F64}{F64}");
        let long_ok_name = format!("{}a", "a/".repeat(127));
        let cases: Vec<(String, Want)> = vec![
            ("test_com".into(), Ok(("", "test_com", "", ""))),
            ("test.com:tag".into(), Ok(("", "test.com", "tag", ""))),
            ("test.com:5000".into(), Ok(("", "test.com", "5000", ""))),
            (
                "test.com/repo:tag".into(),
                Ok(("test.com", "test.com/repo", "tag", "")),
            ),
            (
                "test:5000/repo".into(),
                Ok(("test:5000", "test:5000/repo", "", "")),
            ),
            (
                "test:5000/repo:tag".into(),
                Ok(("test:5000", "test:5000/repo", "tag", "")),
            ),
            (
                format!("test:5000/repo@{d256}"),
                Ok(("test:5000", "test:5000/repo", "", &d256)),
            ),
            (
                format!("test:5000/repo:tag@{d256}"),
                Ok(("test:5000", "test:5000/repo", "tag", &d256)),
            ),
            ("".into(), Err(ReferenceError::Empty)),
            (":justtag".into(), Err(inv())),
            (format!("@{d256}"), Err(inv())),
            (format!("repo@sha256:{}", &F64[..34]), Err(bad_digest())),
            (format!("validname@invaliddigest:{F64}"), Err(bad_digest())),
            ("Uppercase:tag".into(), Err(upper())),
            ("test:5000/Uppercase/lowercase:tag".into(), Err(upper())),
            (
                "lowercase:Uppercase".into(),
                Ok(("", "lowercase", "Uppercase", "")),
            ),
            (format!("{}a:tag", "a/".repeat(128)), Err(too_long_name())),
            (
                format!("{}a:tag-puts-this-over-max", "a/".repeat(127)),
                Ok(("a", &long_ok_name, "tag-puts-this-over-max", "")),
            ),
            ("aa/asdf$$^/aa".into(), Err(inv())),
            (
                "sub-dom1.foo.com/bar/baz/quux".into(),
                Ok(("sub-dom1.foo.com", "sub-dom1.foo.com/bar/baz/quux", "", "")),
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
                Ok((
                    "sub-dom1.foo.com",
                    "sub-dom1.foo.com/bar/baz/quux",
                    "some-long-tag",
                    "",
                )),
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com".into(),
                Ok((
                    "b.gcr.io",
                    "b.gcr.io/test.example.com/my-app",
                    "test.example.com",
                    "",
                )),
            ),
            (
                "xn--n3h.com/myimage:xn--n3h.com".into(),
                Ok(("xn--n3h.com", "xn--n3h.com/myimage", "xn--n3h.com", "")),
            ),
            (
                format!("xn--7o8h.com/myimage:xn--7o8h.com@{d512}"),
                Ok((
                    "xn--7o8h.com",
                    "xn--7o8h.com/myimage",
                    "xn--7o8h.com",
                    &d512,
                )),
            ),
            (
                "foo_bar.com:8080".into(),
                Ok(("", "foo_bar.com", "8080", "")),
            ),
            (
                "foo/foo_bar.com:8080".into(),
                Ok(("foo", "foo/foo_bar.com", "8080", "")),
            ),
            ("192.168.1.1".into(), Ok(("", "192.168.1.1", "", ""))),
            ("192.168.1.1:tag".into(), Ok(("", "192.168.1.1", "tag", ""))),
            (
                "192.168.1.1:5000".into(),
                Ok(("", "192.168.1.1", "5000", "")),
            ),
            (
                "192.168.1.1/repo".into(),
                Ok(("192.168.1.1", "192.168.1.1/repo", "", "")),
            ),
            (
                "192.168.1.1:5000/repo".into(),
                Ok(("192.168.1.1:5000", "192.168.1.1:5000/repo", "", "")),
            ),
            (
                "192.168.1.1:5000/repo:5050".into(),
                Ok(("192.168.1.1:5000", "192.168.1.1:5000/repo", "5050", "")),
            ),
            ("[2001:db8::1]".into(), Err(inv())),
            ("[2001:db8::1]:5000".into(), Err(inv())),
            ("[2001:db8::1]:tag".into(), Err(inv())),
            (
                "[2001:db8::1]/repo".into(),
                Ok(("[2001:db8::1]", "[2001:db8::1]/repo", "", "")),
            ),
            (
                "[2001:db8:1:2:3:4:5:6]/repo:tag".into(),
                Ok((
                    "[2001:db8:1:2:3:4:5:6]",
                    "[2001:db8:1:2:3:4:5:6]/repo",
                    "tag",
                    "",
                )),
            ),
            (
                "[2001:db8::1]:5000/repo".into(),
                Ok(("[2001:db8::1]:5000", "[2001:db8::1]:5000/repo", "", "")),
            ),
            (
                "[2001:db8::1]:5000/repo:tag".into(),
                Ok(("[2001:db8::1]:5000", "[2001:db8::1]:5000/repo", "tag", "")),
            ),
            (
                format!("[2001:db8::1]:5000/repo@{d256}"),
                Ok(("[2001:db8::1]:5000", "[2001:db8::1]:5000/repo", "", &d256)),
            ),
            (
                format!("[2001:db8::1]:5000/repo:tag@{d256}"),
                Ok((
                    "[2001:db8::1]:5000",
                    "[2001:db8::1]:5000/repo",
                    "tag",
                    &d256,
                )),
            ),
            (
                "[2001:db8::]:5000/repo".into(),
                Ok(("[2001:db8::]:5000", "[2001:db8::]:5000/repo", "", "")),
            ),
            (
                "[::1]:5000/repo".into(),
                Ok(("[::1]:5000", "[::1]:5000/repo", "", "")),
            ),
            ("[fe80::1%eth0]:5000/repo".into(), Err(inv())),
            ("[fe80::1%@invalidzone]:5000/repo".into(), Err(inv())),
        ];
        for (input, want) in &cases {
            check(Reference::parse, input, want);
            if let Ok(r) = Reference::parse(input) {
                assert_eq!(&r.to_string(), input, "round trip of {input:?}");
            }
        }
        assert_eq!(cases.len(), 45);
    }

    /// Upstream `TestWithNameFailure` and `TestDomainAndPath` (name-only inputs).
    #[test]
    fn upstream_with_name_and_domain_and_path() {
        for input in [
            String::new(),
            ":justtag".into(),
            format!("@sha256:{F64}"),
            format!("validname@invaliddigest:{F64}"),
            format!("{}a:tag", "a/".repeat(128)),
            "aa/asdf$$^/aa".into(),
        ] {
            assert!(Reference::parse(&input).is_err(), "{input:?}");
        }
        for (input, domain, path) in [
            ("test.com/foo", "test.com", "foo"),
            ("test_com/foo", "", "test_com/foo"),
            ("test:8080/foo", "test:8080", "foo"),
            ("test.com:8080/foo", "test.com:8080", "foo"),
            ("test-com:8080/foo", "test-com:8080", "foo"),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
        ] {
            let r = Reference::parse(input).unwrap();
            assert_eq!((r.domain(), r.path()), (domain, path), "{input:?}");
        }
    }

    /// Upstream `TestValidateReferenceName`.
    #[test]
    fn upstream_validate_reference_name() {
        let valid = [
            "docker/docker",
            "library/debian",
            "debian",
            "docker.io/docker/docker",
            "docker.io/library/debian",
            "docker.io/debian",
            "index.docker.io/docker/docker",
            "index.docker.io/library/debian",
            "index.docker.io/debian",
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/library/debian",
            "127.0.0.1:5000/debian",
            "192.168.0.1",
            "192.168.0.1:80",
            "192.168.0.1:8/debian",
            "192.168.0.2:25000/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "[fc00::1]:5000/docker",
            "[fc00::1]:5000/docker/docker",
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "Docker/docker",
            "DOCKER/docker",
        ];
        let invalid: [(&str, ReferenceError); 14] = [
            ("https://github.com/docker/docker", inv()),
            ("docker/Docker", upper()),
            ("-docker", inv()),
            ("-docker/docker", inv()),
            ("-docker.io/docker/docker", inv()),
            ("docker///docker", inv()),
            ("docker.io/docker/Docker", upper()),
            ("docker.io/docker///docker", inv()),
            ("[fc00::1]", inv()),
            ("[fc00::1]:5000", inv()),
            ("fc00::1:5000/debian", inv()),
            ("[fe80::1%eth0]:5000/debian", inv()),
            ("[2001:db8:3:4::192.0.2.33]:5000/debian", inv()),
            (
                "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
                ReferenceError::IdAsName(String::new()),
            ),
        ];
        for name in valid {
            assert!(
                Reference::parse_normalized(name).is_ok(),
                "{name:?}: {:?}",
                Reference::parse_normalized(name)
            );
        }
        for (name, kind) in &invalid {
            let got = Reference::parse_normalized(name);
            assert!(
                matches!(&got, Err(e) if same_kind(e, kind)),
                "{name:?}: want {kind:?}, got {got:?}"
            );
        }
    }

    /// Upstream `TestValidateRemoteName`.
    #[test]
    fn upstream_validate_remote_name() {
        for name in [
            "docker/docker",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "docker-rules/docker",
            "docker---rules/docker",
            "doc/docker",
            "d/docker",
            "jess/t",
            "dock__er/docker",
        ] {
            assert!(Reference::parse_normalized(name).is_ok(), "{name:?}");
        }
        let too_long = "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker";
        for name in [
            "docker/Docker",
            "docker///docker",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "-docker/docker",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
            too_long,
        ] {
            assert!(Reference::parse_normalized(name).is_err(), "{name:?}");
        }
        assert!(matches!(
            Reference::parse_normalized(too_long),
            Err(ReferenceError::NameTooLong(_))
        ));
    }

    /// Upstream `TestParseRepositoryInfo`.
    #[test]
    fn upstream_parse_repository_info() {
        // (remote, familiar, full, ambiguous, domain)
        let cases = [
            (
                "fooo/bar",
                "fooo/bar",
                "docker.io/fooo/bar",
                "index.docker.io/fooo/bar",
                "docker.io",
            ),
            (
                "library/ubuntu",
                "ubuntu",
                "docker.io/library/ubuntu",
                "library/ubuntu",
                "docker.io",
            ),
            (
                "nonlibrary/ubuntu",
                "nonlibrary/ubuntu",
                "docker.io/nonlibrary/ubuntu",
                "",
                "docker.io",
            ),
            (
                "other/library",
                "other/library",
                "docker.io/other/library",
                "",
                "docker.io",
            ),
            (
                "private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "privatebase",
                "127.0.0.1:8000/privatebase",
                "127.0.0.1:8000/privatebase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "private/moonbase",
                "example.com/private/moonbase",
                "example.com/private/moonbase",
                "",
                "example.com",
            ),
            (
                "privatebase",
                "example.com/privatebase",
                "example.com/privatebase",
                "",
                "example.com",
            ),
            (
                "private/moonbase",
                "example.com:8000/private/moonbase",
                "example.com:8000/private/moonbase",
                "",
                "example.com:8000",
            ),
            (
                "privatebasee",
                "example.com:8000/privatebasee",
                "example.com:8000/privatebasee",
                "",
                "example.com:8000",
            ),
            (
                "library/ubuntu-12.04-base",
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                "index.docker.io/library/ubuntu-12.04-base",
                "docker.io",
            ),
            (
                "library/foo",
                "foo",
                "docker.io/library/foo",
                "docker.io/foo",
                "docker.io",
            ),
            (
                "library/foo/bar",
                "library/foo/bar",
                "docker.io/library/foo/bar",
                "",
                "docker.io",
            ),
            (
                "store/foo/bar",
                "store/foo/bar",
                "docker.io/store/foo/bar",
                "",
                "docker.io",
            ),
            ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
            ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
        ];
        for (remote, familiar, full, ambiguous, domain) in cases {
            let mut inputs = vec![familiar, full];
            if !ambiguous.is_empty() {
                inputs.push(ambiguous);
            }
            for input in inputs {
                let r =
                    Reference::parse_normalized(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
                assert_eq!(r.familiar_name(), familiar, "familiar of {input:?}");
                assert_eq!(r.to_string(), full, "full of {input:?}");
                assert_eq!(r.name(), full, "name of {input:?}");
                assert_eq!(r.domain(), domain, "domain of {input:?}");
                assert_eq!(r.path(), remote, "remote of {input:?}");
            }
        }
    }

    /// Upstream `TestParseReferenceWithTagAndDigest`.
    #[test]
    fn upstream_tag_and_digest() {
        let short = "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
        let r = Reference::parse_normalized(short).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/{short}"));
        assert_eq!(r.tag(), Some("latest"));
        assert!(r.digest().is_some());
        assert_eq!(r.familiar_string(), short);
        assert_eq!(r.name_tag().unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(
            r.name_digest().unwrap(),
            "docker.io/library/busybox@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
        );
    }

    /// Upstream `TestInvalidReferenceComponents`.
    #[test]
    fn upstream_invalid_reference_components() {
        assert!(Reference::parse_normalized("-foo").is_err());
        let r = Reference::parse_normalized("busybox").unwrap();
        assert!(matches!(r.with_tag("-foo"), Err(ReferenceError::BadTag(_))));
        assert!(matches!(
            r.try_with_digest("foo"),
            Err(ReferenceError::BadDigest(_))
        ));
        // Extra: well-formed but wrong length / unsupported.
        assert!(r
            .try_with_digest(&format!("sha256:{}", &F64[..40]))
            .is_err());
        assert!(r.try_with_digest(&format!("md5:{}", &F64[..32])).is_err());
        let ok = r.try_with_digest(&format!("sha256:{F64}")).unwrap();
        assert_eq!(ok.digest(), Some(&*format!("sha256:{F64}")));
    }

    /// Upstream `TestNormalizedSplitHostname`.
    #[test]
    fn upstream_normalized_split_hostname() {
        for (input, domain, path) in [
            ("test.com/foo", "test.com", "foo"),
            ("test_com/foo", "docker.io", "test_com/foo"),
            ("docker/migrator", "docker.io", "docker/migrator"),
            ("test.com:8080/foo", "test.com:8080", "foo"),
            ("test-com:8080/foo", "test-com:8080", "foo"),
            ("foo", "docker.io", "library/foo"),
            ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
            ("docker.io/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
        ] {
            let r = Reference::parse_normalized(input).unwrap();
            assert_eq!((r.domain(), r.path()), (domain, path), "{input:?}");
        }
    }

    /// Upstream `TestParseNamed`: canonical iff normalising doesn't change it.
    #[test]
    fn upstream_parse_named_canonical() {
        let canonical = |s: &str| Reference::parse_normalized(s).map(|r| r.to_string() == s);
        assert_eq!(canonical("test.com/foo"), Ok(true));
        assert_eq!(canonical("test:8080/foo"), Ok(true));
        assert_eq!(canonical("test_com/foo"), Ok(false));
        assert_eq!(canonical("test.com"), Ok(false));
        assert_eq!(canonical("foo"), Ok(false));
        assert_eq!(canonical("library/foo"), Ok(false));
        assert_eq!(canonical("docker.io/library/foo"), Ok(true));
        assert_eq!(canonical("docker.io/foo"), Ok(false));
    }

    /// Upstream `TestParseAnyReference` (names via parse_normalized, IDs via
    /// parse_image_query).
    #[test]
    fn upstream_parse_any_reference() {
        let h = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";
        for (input, equivalent) in [
            ("redis".to_string(), "docker.io/library/redis".to_string()),
            (
                "redis:latest".into(),
                "docker.io/library/redis:latest".into(),
            ),
            (
                "docker.io/library/redis:latest".into(),
                "docker.io/library/redis:latest".into(),
            ),
            (
                format!("redis@sha256:{h}"),
                format!("docker.io/library/redis@sha256:{h}"),
            ),
            (
                format!("docker.io/library/redis@sha256:{h}"),
                format!("docker.io/library/redis@sha256:{h}"),
            ),
            ("dmcgowan/myapp".into(), "docker.io/dmcgowan/myapp".into()),
            (
                "dmcgowan/myapp:latest".into(),
                "docker.io/dmcgowan/myapp:latest".into(),
            ),
            (
                "docker.io/mcgowan/myapp:latest".into(),
                "docker.io/mcgowan/myapp:latest".into(),
            ),
            (
                format!("dmcgowan/myapp@sha256:{h}"),
                format!("docker.io/dmcgowan/myapp@sha256:{h}"),
            ),
            (
                format!("docker.io/dmcgowan/myapp@sha256:{h}"),
                format!("docker.io/dmcgowan/myapp@sha256:{h}"),
            ),
            (
                h[..63].to_string(),
                format!("docker.io/library/{}", &h[..63]),
            ),
            ("dbcc1".into(), "docker.io/library/dbcc1".into()),
        ] {
            let r = Reference::parse_normalized(&input).unwrap();
            assert_eq!(r.to_string(), equivalent, "{input:?}");
            assert_eq!(r, Reference::parse(&equivalent).unwrap(), "{input:?}");
        }
        for input in [h.to_string(), format!("sha256:{h}")] {
            assert_eq!(
                parse_image_query(&input),
                Ok(ImageQuery::Id(format!("sha256:{h}")))
            );
        }
    }

    /// Upstream `TestWithTag` / `TestWithDigest` (string forms). Upstream's
    /// `WithDigest` only checks the loose digest grammar, which our
    /// unvalidated `with_digest` reproduces.
    #[test]
    fn upstream_with_tag_and_digest() {
        let dg = "sha256:1234567890098765432112345667890098765";
        let cases: [(&str, &str, &str, &str); 9] = [
            // (name, digest, tag, combined); tag applied after digest for WithTag cases
            ("test.com/foo", "", "tag", "test.com/foo:tag"),
            ("foo", "", "tag2", "foo:tag2"),
            ("test.com:8000/foo", "", "tag4", "test.com:8000/foo:tag4"),
            ("test.com:8000/foo", "", "TAG5", "test.com:8000/foo:TAG5"),
            (
                "test.com:8000/foo",
                dg,
                "TAG5",
                "test.com:8000/foo:TAG5@sha256:1234567890098765432112345667890098765",
            ),
            (
                "test.com/foo",
                dg,
                "",
                "test.com/foo@sha256:1234567890098765432112345667890098765",
            ),
            (
                "foo",
                dg,
                "",
                "foo@sha256:1234567890098765432112345667890098765",
            ),
            (
                "test.com:8000/foo",
                dg,
                "",
                "test.com:8000/foo@sha256:1234567890098765432112345667890098765",
            ),
            (
                "test.com:8000/foo",
                dg,
                "latest",
                "test.com:8000/foo:latest@sha256:1234567890098765432112345667890098765",
            ),
        ];
        for (name, digest, tag, combined) in cases {
            let mut r = Reference::parse(name).unwrap();
            if !digest.is_empty() {
                assert!(ANCHORED_DIGEST.is_match(digest));
                r = r.with_digest(digest);
            }
            if !tag.is_empty() {
                r = r.with_tag(tag).unwrap();
            }
            assert_eq!(r.to_string(), combined);
        }
    }

    #[test]
    fn normalized_extra_cases() {
        let d = format!("sha256:{F64}");
        let cases: Vec<(String, Want)> = vec![
            (
                "busybox".into(),
                Ok(("docker.io", "docker.io/library/busybox", "", "")),
            ),
            (
                "busybox:1.36".into(),
                Ok(("docker.io", "docker.io/library/busybox", "1.36", "")),
            ),
            (
                format!("busybox@{d}"),
                Ok(("docker.io", "docker.io/library/busybox", "", &d)),
            ),
            (
                "index.docker.io/x".into(),
                Ok(("docker.io", "docker.io/library/x", "", "")),
            ),
            (
                "localhost/foo".into(),
                Ok(("localhost", "localhost/foo", "", "")),
            ),
            (
                "localhost:5000/a".into(),
                Ok(("localhost:5000", "localhost:5000/a", "", "")),
            ),
            (
                "localhost".into(),
                Ok(("docker.io", "docker.io/library/localhost", "", "")),
            ),
            (
                "example.com".into(),
                Ok(("docker.io", "docker.io/library/example.com", "", "")),
            ),
            ("Foo/bar:v1".into(), Ok(("Foo", "Foo/bar", "v1", ""))),
            ("Uppercase".into(), Err(upper())),
            ("foo/Bar".into(), Err(upper())),
            ("busybox:".into(), Err(inv())),
            ("busybox@".into(), Err(inv())),
            ("busybox:-x".into(), Err(inv())),
            (format!("busybox:{}", "t".repeat(129)), Err(inv())),
            (
                format!("busybox:{}", "t".repeat(128)),
                Ok((
                    "docker.io",
                    "docker.io/library/busybox",
                    &*"t".repeat(128).leak(),
                    "",
                )),
            ),
            (
                format!("busybox@sha256:{}", F64.to_uppercase()),
                Err(bad_digest()),
            ),
            (format!("busybox@sha512:{F64}"), Err(bad_digest())),
            (
                format!("{}:v1", &F64),
                Ok((
                    "docker.io",
                    &*format!("docker.io/library/{F64}").leak(),
                    "v1",
                    "",
                )),
            ),
            (F64.into(), Err(ReferenceError::IdAsName(String::new()))),
            (" busybox".into(), Err(inv())),
            ("busybox ".into(), Err(inv())),
            ("caf\u{e9}".into(), Err(inv())),
        ];
        for (input, want) in &cases {
            check(Reference::parse_normalized, input, want);
        }
    }

    #[test]
    fn limits() {
        let s = "a".repeat(4097);
        assert_eq!(Reference::parse(&s), Err(ReferenceError::TooLong));
        assert_eq!(
            Reference::parse_normalized(&s),
            Err(ReferenceError::TooLong)
        );
        // 4096 bytes is not "too long" (it fails on the name limit instead).
        assert!(matches!(
            Reference::parse(&"a".repeat(4096)),
            Err(ReferenceError::NameTooLong(_))
        ));
        let name = "a".repeat(256);
        assert!(matches!(
            Reference::parse(&name),
            Err(ReferenceError::NameTooLong(_))
        ));
        assert!(matches!(
            Reference::parse_normalized(&name),
            Err(ReferenceError::NameTooLong(_))
        ));
        assert!(Reference::parse(&"a".repeat(255)).is_ok());
        // Normalised name counts: docker.io/library/ + 237 = 255.
        assert!(Reference::parse_normalized(&"a".repeat(237)).is_ok());
        assert!(Reference::parse_normalized(&"a".repeat(238)).is_err());
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        assert_eq!(Reference::parse_normalized(""), Err(ReferenceError::Empty));
    }

    #[test]
    fn error_messages_truncate_input() {
        let s = format!("{}$", "x".repeat(300));
        let e = Reference::parse_normalized(&s).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("invalid reference format"), "{msg}");
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains(&"x".repeat(100)));
        let e = Reference::parse_normalized("foo/Bar").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid reference \"foo/Bar\": repository name must be lowercase"
        );
    }

    #[test]
    fn familiar_and_defaults() {
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.familiar_name(), "busybox");
        assert_eq!(r.familiar_string(), "busybox");
        assert_eq!(r.name_tag(), None);
        assert_eq!(r.name_digest(), None);
        let r = r.with_default_tag();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar_string(), "busybox:latest");
        assert_eq!(r.name_tag().unwrap(), "docker.io/library/busybox:latest");
        let d = format!("sha256:{F64}");
        let r: Reference = format!("foo/bar@{d}").parse().unwrap();
        assert_eq!(r.clone().with_default_tag(), r);
        assert_eq!(r.familiar_string(), format!("foo/bar@{d}"));
        let r: Reference = "quay.io/a/b:1".parse().unwrap();
        assert_eq!(r.familiar_string(), "quay.io/a/b:1");
        let r: Reference = "docker.io/library/a/b".parse().unwrap();
        assert_eq!(r.familiar_name(), "library/a/b");
        let r = r.with_tag("v2").unwrap().with_digest(&d);
        assert_eq!(r.to_string(), format!("docker.io/library/a/b:v2@{d}"));
        assert!(matches!(r.with_tag(""), Err(ReferenceError::BadTag(_))));
    }

    fn domain_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("localhost".to_string()),
            Just("docker.io".to_string()),
            Just("[::1]".to_string()),
            "[a-z0-9]([a-z0-9-]{0,4}[a-z0-9])?(\\.[a-zA-Z0-9]([a-z0-9-]{0,4}[a-z0-9])?){1,3}",
            "[a-z0-9]{1,6}:[0-9]{1,5}",
            "[A-Z][a-zA-Z0-9]{0,5}",
        ]
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let component = "[a-z0-9]{1,5}(([._]|__|-{1,3})[a-z0-9]{1,5}){0,2}";
        proptest::collection::vec(component, 1..4).prop_map(|v| v.join("/"))
    }

    fn reference_string() -> impl Strategy<Value = String> {
        (
            domain_strategy(),
            path_strategy(),
            proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            proptest::option::of("[a-f0-9]{64}"),
        )
            .prop_map(|(domain, path, tag, digest)| {
                let mut s = if domain.is_empty() {
                    path
                } else {
                    format!("{domain}/{path}")
                };
                if let Some(t) = tag {
                    s = format!("{s}:{t}");
                }
                if let Some(d) = digest {
                    s = format!("{s}@sha256:{d}");
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = Reference::parse(&s);
            let _ = Reference::parse_normalized(&s);
            let _ = parse_image_query(&s);
            let _ = is_valid_digest(&s);
        }

        #[test]
        fn never_panics_reference_alphabet(s in "[a-zA-Z0-9:/@._\\-\\[\\]]{0,80}") {
            let _ = Reference::parse(&s);
            let _ = Reference::parse_normalized(&s);
            let _ = parse_image_query(&s);
        }

        #[test]
        fn strict_round_trip(s in reference_string()) {
            let r = Reference::parse(&s).unwrap();
            prop_assert_eq!(r.to_string(), s.clone());
            prop_assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        }

        #[test]
        fn normalized_round_trip(s in reference_string()) {
            let x = Reference::parse_normalized(&s);
            prop_assume!(x.is_ok());
            let x = x.unwrap();
            prop_assert_eq!(Reference::parse_normalized(&x.to_string()).unwrap(), x.clone());
            prop_assert_eq!(Reference::parse(&x.to_string()).unwrap(), x.clone());
            // Familiar form normalises back to the same reference, except
            // when a Docker Hub namespace looks like a host ("docker.io/a.b/c"
            // familiarises to "a.b/c"), an ambiguity upstream shares.
            let fam = x.familiar_name();
            let first = fam.split('/').next().unwrap_or("");
            let ambiguous = x.domain() == DEFAULT_DOMAIN
                && fam.contains('/')
                && (first.contains(['.', ':']) || first == "localhost" || first == LEGACY_DEFAULT_DOMAIN);
            if !ambiguous {
                prop_assert_eq!(Reference::parse_normalized(&x.familiar_string()).unwrap(), x);
            }
        }
    }
}
