//! Regular expressions of the reference grammar, transcribed from
//! `github.com/distribution/reference` `regexp.go`.
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] remote-name
//! domain           := host [':' port-number]
//! host             := domain-name | IPv4address | \[ IPv6address \]
//! domain-name      := domain-component ['.' domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! port-number      := /[0-9]+/
//! path-component   := alpha-numeric [separator alpha-numeric]*
//! remote-name      := path-component ['/' path-component]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" /[0-9a-fA-F]{32,}/
//! identifier       := /[a-f0-9]{64}/
//! ```
//!
//! Go's `\w` is ASCII-only, whereas Rust's is Unicode, so `\w` is spelled out
//! as `[0-9A-Za-z_]`. Both engines use leftmost-first (Perl) semantics, so the
//! capture groups split names exactly as upstream does.

use once_cell::sync::Lazy;
use regex::Regex;

const ALPHANUMERIC: &str = r"[a-z0-9]+";
const SEPARATOR: &str = r"(?:[._]|__|[-]+)";
const DOMAIN_NAME_COMPONENT: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const OPTIONAL_PORT: &str = r"(?::[0-9]+)?";
const TAG: &str = r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}";
const DIGEST_PAT: &str = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}";
const IDENTIFIER: &str = r"([a-f0-9]{64})";
const IPV6_ADDRESS: &str = r"\[(?:[a-fA-F0-9:]+)\]";

fn domain_name() -> String {
    format!(r"{DOMAIN_NAME_COMPONENT}(?:\.{DOMAIN_NAME_COMPONENT})*")
}

fn host() -> String {
    format!("(?:{}|{IPV6_ADDRESS})", domain_name())
}

fn domain_and_port() -> String {
    format!("{}{OPTIONAL_PORT}", host())
}

fn path_component() -> String {
    format!("{ALPHANUMERIC}(?:{SEPARATOR}{ALPHANUMERIC})*")
}

fn remote_name() -> String {
    let pc = path_component();
    format!("{pc}(?:/{pc})*")
}

fn name_pat() -> String {
    format!("(?:{}/)?{}", domain_and_port(), remote_name())
}

fn compile(pat: &str) -> Regex {
    Regex::new(pat).expect("reference grammar regexp must compile")
}

/// `^(name)(?::(tag))?(?:@(digest))?$` — captures 1: name, 2: tag, 3: digest.
pub(crate) static REFERENCE: Lazy<Regex> = Lazy::new(|| {
    compile(&format!(
        "^({})(?::({TAG}))?(?:@({DIGEST_PAT}))?$",
        name_pat()
    ))
});

/// `^(?:(domain)/)?(remote-name)$` — captures 1: domain, 2: path.
pub(crate) static ANCHORED_NAME: Lazy<Regex> = Lazy::new(|| {
    compile(&format!(
        "^(?:({})/)?({})$",
        domain_and_port(),
        remote_name()
    ))
});

/// Anchored tag.
pub(crate) static ANCHORED_TAG: Lazy<Regex> = Lazy::new(|| compile(&format!("^{TAG}$")));

/// Anchored reference-grammar digest (the loose shape; algorithm support and
/// length are checked separately, as go-digest does).
pub(crate) static ANCHORED_DIGEST: Lazy<Regex> = Lazy::new(|| compile(&format!("^{DIGEST_PAT}$")));

/// Anchored 64-hex identifier (an image ID without its `sha256:` prefix).
pub(crate) static ANCHORED_IDENTIFIER: Lazy<Regex> =
    Lazy::new(|| compile(&format!("^{IDENTIFIER}$")));

/// go-digest's `DigestRegexpAnchored`: the canonical digest shape
/// (lower-case algorithm, restricted encoded alphabet).
pub(crate) static GO_DIGEST: Lazy<Regex> =
    Lazy::new(|| compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$"));

/// Anchored domain-and-port (upstream `DomainRegexp`, anchored).
#[cfg(test)]
pub(crate) static ANCHORED_DOMAIN: Lazy<Regex> =
    Lazy::new(|| compile(&format!("^{}$", domain_and_port())));

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from upstream regexp_test.go `TestDomainRegexp` (anchored form).
    #[test]
    fn domain_regexp_vectors() {
        let cases: &[(&str, bool)] = &[
            ("test.com", true),
            ("test.com:10304", true),
            ("test.com:http", false),
            ("localhost", true),
            ("localhost:8080", true),
            ("a", true),
            ("a.b", true),
            ("ab.cd.com", true),
            ("a-b.com", true),
            ("-ab.com", false),
            ("ab-.com", false),
            ("ab.c-om", true),
            ("ab.-com", false),
            ("ab.com-", false),
            ("0101.com", true),
            ("001a.com", true),
            ("b.gbc.io:443", true),
            ("b.gbc.io", true),
            ("xn--n3h.com", true),
            ("Asdf.com", true),
            ("192.168.1.1:75050", true),
            ("192.168.1.1:750050", true),
            ("[fd00:1:2::3]:75050", true),
            ("[fd00:1:2::3]75050", false),
            ("[fd00:1:2::3]::75050", false),
            ("[fd00:1:2::3%eth0]:75050", false),
            ("[fd00123123123]:75050", true),
            ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050", true),
            ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:750505", true),
            ("fd00:1:2::3:75050", false),
            // extra (not upstream)
            ("[2001:db8::1]", true),
            ("[2001:db8::1]:", false),
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(ANCHORED_DOMAIN.is_match(input), *ok, "domain {input:?}");
        }
    }

    /// Vectors from upstream regexp_test.go `TestFullNameRegexp`.
    #[test]
    fn anchored_name_vectors() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("", None),
            ("short", Some(("", "short"))),
            ("simple/name", Some(("simple", "name"))),
            ("library/ubuntu", Some(("library", "ubuntu"))),
            ("docker/stevvooe/app", Some(("docker", "stevvooe/app"))),
            (
                "aa/aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb",
                Some(("aa", "aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb")),
            ),
            ("aa/aa/bb/bb/bb", Some(("aa", "aa/bb/bb/bb"))),
            ("a/a/a/a", Some(("a", "a/a/a"))),
            ("a/a/a/a/", None),
            ("a//a/a", None),
            ("a", Some(("", "a"))),
            ("a/aa", Some(("a", "aa"))),
            ("a/aa/a", Some(("a", "aa/a"))),
            ("foo.com", Some(("", "foo.com"))),
            ("foo.com/", None),
            ("foo.com:8080/bar", Some(("foo.com:8080", "bar"))),
            ("foo.com:http/bar", None),
            ("foo.com/bar", Some(("foo.com", "bar"))),
            ("foo.com/bar/baz", Some(("foo.com", "bar/baz"))),
            ("localhost:8080/bar", Some(("localhost:8080", "bar"))),
            (
                "sub-dom1.foo.com/bar/baz/quux",
                Some(("sub-dom1.foo.com", "bar/baz/quux")),
            ),
            ("blog.foo.com/bar/baz", Some(("blog.foo.com", "bar/baz"))),
            ("a^a", None),
            ("aa/asdf$$^/aa", None),
            ("asdf$$^/aa", None),
            ("aa-a/a", Some(("aa-a", "a"))),
            ("a-/a/a/a", None),
            ("-foo/bar", None),
            ("foo/bar-", None),
            ("foo-/bar", None),
            ("foo/-bar", None),
            ("_foo/bar", None),
            ("foo_bar", Some(("", "foo_bar"))),
            ("foo_bar.com", Some(("", "foo_bar.com"))),
            ("foo_bar.com:8080", None),
            ("foo_bar.com:8080/app", None),
            ("foo.com/foo_bar", Some(("foo.com", "foo_bar"))),
            ("____/____", None),
            ("_docker/_docker", None),
            ("docker_/docker_", None),
            (
                "b.gcr.io/test.example.com/my-app",
                Some(("b.gcr.io", "test.example.com/my-app")),
            ),
            ("xn--n3h.com/myimage", Some(("xn--n3h.com", "myimage"))),
            ("xn--7o8h.com/myimage", Some(("xn--7o8h.com", "myimage"))),
            (
                "example.com/xn--7o8h.com/myimage",
                Some(("example.com", "xn--7o8h.com/myimage")),
            ),
            (
                "example.com/some_separator__underscore/myimage",
                Some(("example.com", "some_separator__underscore/myimage")),
            ),
            ("example.com/__underscore/myimage", None),
            ("example.com/..dots/myimage", None),
            ("example.com/.dots/myimage", None),
            ("example.com/nodouble..dots/myimage", None),
            ("docker./docker", None),
            (".docker/docker", None),
            ("docker-/docker", None),
            ("-docker/docker", None),
            ("do..cker/docker", None),
            ("do__cker:8080/docker", None),
            ("do__cker/docker", Some(("", "do__cker/docker"))),
            (
                "b.gcr.io/test.example.com/my-app",
                Some(("b.gcr.io", "test.example.com/my-app")),
            ),
            (
                "registry.io/foo/project--id.module--name.ver---sion--name",
                Some((
                    "registry.io",
                    "foo/project--id.module--name.ver---sion--name",
                )),
            ),
            ("Asdf.com/foo/bar", Some(("Asdf.com", "foo/bar"))),
            ("Foo/FarB", None),
            ("foo.com/a-/a/a", None),
            ("aa-a/a", Some(("aa-a", "a"))),
        ];
        for (input, want) in cases {
            let got = ANCHORED_NAME.captures(input).map(|c| {
                (
                    c.get(1).map_or("", |m| m.as_str()),
                    c.get(2).map_or("", |m| m.as_str()),
                )
            });
            assert_eq!(got, *want, "name {input:?}");
        }
    }

    /// Vectors from upstream regexp_test.go `TestReferenceRegexp`.
    #[test]
    fn reference_regexp_vectors() {
        type Subs<'a> = Option<(&'a str, &'a str, &'a str)>;
        let d = "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912";
        let cases: Vec<(String, Subs)> = vec![
            ("registry.com:8080/myapp:tag".into(), Some(("registry.com:8080/myapp", "tag", ""))),
            (format!("registry.com:8080/myapp@{d}"), Some(("registry.com:8080/myapp", "", d))),
            (format!("registry.com:8080/myapp:tag2@{d}"), Some(("registry.com:8080/myapp", "tag2", d))),
            ("registry.com:8080/myapp@sha256:badbadbadbad".into(), None),
            ("registry.com:8080/myapp:invalid~tag".into(), None),
            ("bad_hostname.com:8080/myapp:tag".into(), None),
            ("localhost:8080@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912".into(), Some(("localhost", "8080", "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912"))),
            ("localhost:8080/name@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912".into(), Some(("localhost:8080/name", "", "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912"))),
            ("localhost:http/name@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912".into(), None),
            ("localhost@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912".into(), Some(("localhost", "", "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912"))),
            ("registry.com:8080/myapp@bad".into(), None),
            ("registry.com:8080/myapp@2bad".into(), None),
            // extra (not upstream)
            ("[2001:db8::1]:8080/myapp:tag".into(), Some(("[2001:db8::1]:8080/myapp", "tag", ""))),
        ];
        for (input, want) in cases {
            let got = REFERENCE.captures(&input).map(|c| {
                (
                    c.get(1).map_or("", |m| m.as_str()),
                    c.get(2).map_or("", |m| m.as_str()),
                    c.get(3).map_or("", |m| m.as_str()),
                )
            });
            assert_eq!(got, want, "reference {input:?}");
        }
    }

    #[test]
    fn long_name_splits_first_component_as_domain() {
        let input = format!("{}a", "a/".repeat(128));
        let c = ANCHORED_NAME.captures(&input).unwrap();
        assert_eq!(&c[1], "a");
        assert_eq!(&c[2], format!("{}a", "a/".repeat(127)));
    }

    /// Vectors from upstream regexp_test.go `TestIdentifierRegexp`.
    #[test]
    fn identifier_regexp_vectors() {
        let cases = [
            (
                "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
                true,
            ),
            (
                "7EC43B381E5AEFE6E04EFB0B3F0693FF2A4A50652D64AEC573905F2DB5889A1C",
                false,
            ),
            (
                "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf",
                false,
            ),
            (
                "sha256:da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
                false,
            ),
            (
                "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf98218482",
                false,
            ),
        ];
        for (input, ok) in cases {
            assert_eq!(
                ANCHORED_IDENTIFIER.is_match(input),
                ok,
                "identifier {input:?}"
            );
        }
    }

    #[test]
    fn identifier_and_tag() {
        assert!(ANCHORED_IDENTIFIER.is_match(&"a".repeat(64)));
        assert!(!ANCHORED_IDENTIFIER.is_match(&"a".repeat(63)));
        assert!(!ANCHORED_IDENTIFIER.is_match(&"A".repeat(64)));
        assert!(ANCHORED_TAG.is_match("latest"));
        assert!(ANCHORED_TAG.is_match(&"t".repeat(128)));
        assert!(!ANCHORED_TAG.is_match(&"t".repeat(129)));
        assert!(!ANCHORED_TAG.is_match("-foo"));
        assert!(!ANCHORED_TAG.is_match(".foo"));
        assert!(ANCHORED_TAG.is_match("_foo"));
        assert!(!ANCHORED_TAG.is_match("caf\u{e9}"));
    }
}
