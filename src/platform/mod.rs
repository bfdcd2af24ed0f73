//! OCI platform handling: parsing, normalisation, formatting and matching of
//! `os/arch[/variant]` platforms.
//!
//! This is a port of `github.com/containerd/platforms` (platforms.go,
//! database.go, compare.go, defaults_unix.go, cpuinfo_linux.go and
//! platform_windows_compat.go). Behaviour and test vectors follow upstream;
//! the few places where this module deliberately differs are marked
//! "Deviation" in the comments.

mod compare;
mod cpuinfo;

pub use compare::{select, Matcher};

use std::fmt;

/// An OCI image platform (the `platform` object of an image index entry).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, Default)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PlatformError {
    #[error("invalid platform {0:?}: {1}")]
    Invalid(String, String),
    #[error("no manifest for platform {wanted} in the index (it offers: {offered})")]
    NoMatch { wanted: String, offered: String },
}

impl Platform {
    /// Build a platform as given (no normalisation). An empty variant is
    /// stored as `None`.
    pub fn new(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
            os_version: None,
        }
    }

    /// Parse a platform specifier like upstream `platforms.Parse`:
    /// "linux/arm/v7", "linux/amd64", "arm64" (os defaults to the host os),
    /// "linux" (arch defaults to the host arch), "windows(10.0.17763)/amd64".
    ///
    /// As upstream, the result is *partially* normalised: `linux/arm` and
    /// `linux/arm/v7` parse to arm without / with variant v7, `linux/arm64/v8`
    /// keeps its "v8". Matching always normalises, so these are equivalent.
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        parse_specifier(s)
    }

    /// Normalise like upstream `platforms.Normalize`: lower-case os and
    /// arch/variant, map arch aliases, default the variant of arm to v7, drop
    /// the implied arm64 v8 / amd64 v1 variants. An empty os becomes the host
    /// os.
    pub fn normalize(&self) -> Platform {
        let (arch, variant) =
            normalize_arch(&self.architecture, self.variant.as_deref().unwrap_or(""));
        Platform {
            os: normalize_os(&self.os),
            architecture: arch,
            variant: if variant.is_empty() {
                None
            } else {
                Some(variant)
            },
            os_version: self.os_version.clone().filter(|v| !v.is_empty()),
        }
    }

    /// Platform of the running machine (upstream `DefaultSpec`, normalised).
    pub fn host() -> Platform {
        cpuinfo::host_platform().clone()
    }

    /// True for the placeholder platform `unknown/unknown` that buildkit puts
    /// on attestation manifests (either field being "unknown" counts).
    pub(crate) fn is_unknown(&self) -> bool {
        self.os.eq_ignore_ascii_case("unknown") || self.architecture.eq_ignore_ascii_case("unknown")
    }
}

/// Upstream `Format`: `path.Join(os, arch, variant)`, "unknown" for an empty os.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.os.is_empty() {
            return f.write_str("unknown");
        }
        f.write_str(&self.os)?;
        for part in [Some(self.architecture.as_str()), self.variant.as_deref()]
            .into_iter()
            .flatten()
        {
            if !part.is_empty() {
                write!(f, "/{part}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// database.go

fn is_known_os(os: &str) -> bool {
    matches!(
        os,
        "aix"
            | "android"
            | "darwin"
            | "dragonfly"
            | "freebsd"
            | "hurd"
            | "illumos"
            | "ios"
            | "js"
            | "linux"
            | "nacl"
            | "netbsd"
            | "openbsd"
            | "plan9"
            | "solaris"
            | "windows"
            | "zos"
    )
}

fn is_known_arch(arch: &str) -> bool {
    matches!(
        arch,
        "386"
            | "amd64"
            | "amd64p32"
            | "arm"
            | "armbe"
            | "arm64"
            | "arm64be"
            | "ppc64"
            | "ppc64le"
            | "loong64"
            | "mips"
            | "mipsle"
            | "mips64"
            | "mips64le"
            | "mips64p32"
            | "mips64p32le"
            | "ppc"
            | "riscv"
            | "riscv64"
            | "s390"
            | "s390x"
            | "sparc"
            | "sparc64"
            | "wasm"
    )
}

fn normalize_os(os: &str) -> String {
    if os.is_empty() {
        return cpuinfo::host_os();
    }
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_string(),
        _ => os,
    }
}

/// Upstream `normalizeArch`. Returns (arch, variant) with "" for no variant.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let mut variant = variant.to_ascii_lowercase();
    let arch = match arch.as_str() {
        // Deviation: upstream only knows "i386"; the other x86-32 spellings
        // are accepted here too (contract of this project).
        "i386" | "i486" | "i586" | "i686" => {
            variant.clear();
            "386".to_string()
        }
        "x86_64" | "x86-64" | "amd64" => {
            if variant == "v1" {
                variant.clear();
            }
            "amd64".to_string()
        }
        "aarch64" | "arm64" => {
            match variant.as_str() {
                "8" | "v8" | "v8.0" => variant.clear(),
                "9" | "9.0" | "v9.0" => variant = "v9".to_string(),
                _ => {}
            }
            "arm64".to_string()
        }
        "armhf" => {
            variant = "v7".to_string();
            "arm".to_string()
        }
        "armel" => {
            variant = "v6".to_string();
            "arm".to_string()
        }
        "arm" => {
            match variant.as_str() {
                "" | "7" => variant = "v7".to_string(),
                "5" | "6" | "8" => variant = format!("v{variant}"),
                _ => {}
            }
            arch
        }
        _ => arch,
    };
    (arch, variant)
}

// ---------------------------------------------------------------------------
// platforms.go: Parse

fn is_specifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_os_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

fn is_os_option_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '%' | '-')
}

/// Upstream `decodeOSOption` (`url.PathUnescape` when a '%' is present).
fn decode_os_option(v: &str) -> Result<String, String> {
    if !v.contains('%') {
        return Ok(v.to_string());
    }
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| format!("invalid URL escape in {v:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{v:?} does not decode to UTF-8"))
}

/// Match the upstream OS regexp
/// `^([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?$`
/// returning (name, os version, features).
fn split_os_component(part: &str) -> Option<(&str, &str, Vec<&str>)> {
    let name_end = part.find(|c| !is_os_name_char(c)).unwrap_or(part.len());
    if name_end == 0 {
        return None;
    }
    let (name, rest) = part.split_at(name_end);
    if rest.is_empty() {
        return Some((name, "", Vec::new()));
    }
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    let mut pieces = inner.split('+');
    let version = pieces.next().unwrap_or("");
    if !version.chars().all(is_os_option_char) {
        return None;
    }
    let mut features = Vec::new();
    for f in pieces {
        if f.is_empty() || !f.chars().all(is_os_option_char) {
            return None;
        }
        features.push(f);
    }
    Some((name, version, features))
}

fn parse_specifier(specifier: &str) -> Result<Platform, PlatformError> {
    let invalid = |reason: String| PlatformError::Invalid(specifier.to_string(), reason);

    if specifier.contains('*') {
        return Err(invalid("wildcards not yet supported".into()));
    }
    let parts: Vec<&str> = specifier.splitn(4, '/').collect();

    let mut p = Platform::default();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let (name, version, features) = split_os_component(part).ok_or_else(|| {
                invalid(format!(
                    "{part:?} is an invalid OS component: it must look like \
                     os or os(version+feature...) using [A-Za-z0-9_-]"
                ))
            })?;
            p.os = normalize_os(name);
            let version = decode_os_option(version)
                .map_err(|e| invalid(format!("invalid OS version: {e}")))?;
            p.os_version = Some(version).filter(|v| !v.is_empty());
            // Deviation: OS features are validated but dropped, as this
            // Platform type has no os.features field.
            for f in features {
                decode_os_option(f).map_err(|e| invalid(format!("invalid OS feature: {e}")))?;
            }
        } else if part.is_empty() || !part.chars().all(is_specifier_char) {
            return Err(invalid(format!(
                "{part:?} is an invalid component: it must match [A-Za-z0-9_.-]+"
            )));
        }
    }

    let some = |v: String| if v.is_empty() { None } else { Some(v) };
    match parts.len() {
        1 => {
            if is_known_os(&p.os) {
                let host = Platform::host();
                p.architecture = host.architecture;
                if p.architecture == "arm" && host.variant.as_deref() != Some("v7") {
                    p.variant = host.variant;
                }
                return Ok(p);
            }
            let (arch, mut variant) = normalize_arch(parts[0], "");
            if arch == "arm" && variant == "v7" {
                variant.clear();
            }
            if is_known_arch(&arch) {
                return Ok(Platform {
                    os: cpuinfo::host_os(),
                    architecture: arch,
                    variant: some(variant),
                    os_version: p.os_version,
                });
            }
            Err(invalid("unknown operating system or architecture".into()))
        }
        2 => {
            let (arch, mut variant) = normalize_arch(parts[1], "");
            if arch == "arm" && variant == "v7" {
                variant.clear();
            }
            p.architecture = arch;
            p.variant = some(variant);
            Ok(p)
        }
        3 => {
            let (arch, mut variant) = normalize_arch(parts[1], parts[2]);
            if arch == "arm64" && variant.is_empty() {
                variant = "v8".to_string();
            }
            p.architecture = arch;
            p.variant = some(variant);
            Ok(p)
        }
        _ => Err(invalid(
            "cannot parse platform specifier: too many components".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plat(os: &str, arch: &str, variant: &str) -> Platform {
        Platform::new(os, arch, Some(variant))
    }

    fn host_os() -> String {
        Platform::host().os
    }

    /// Upstream defaultVariant in TestParseSelector.
    fn default_variant() -> String {
        let h = Platform::host();
        match (h.architecture.as_str(), h.variant.as_deref()) {
            ("arm", Some(v)) if v != "v7" => v.to_string(),
            _ => String::new(),
        }
    }

    fn join(parts: &[&str]) -> String {
        parts
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join("/")
    }

    /// platforms_test.go TestParseSelector (non-skipped, non-features cases),
    /// plus the extra aliases of this project's contract.
    #[test]
    fn parse_selector_vectors() {
        let os = host_os();
        let arch = Platform::host().architecture;
        let dv = default_variant();
        // (input, expected, formatted, also-matches)
        let cases: Vec<(&str, Platform, String, Vec<Platform>)> = vec![
            (
                "linux/arm64",
                plat("linux", "arm64", ""),
                "linux/arm64".into(),
                vec![
                    plat("linux", "aarch64", ""),
                    plat("linux", "aarch64", "v8"),
                    plat("linux", "arm64", "v8"),
                ],
            ),
            (
                "linux/arm64/v8",
                plat("linux", "arm64", "v8"),
                "linux/arm64/v8".into(),
                vec![
                    plat("linux", "aarch64", ""),
                    plat("linux", "aarch64", "v8"),
                    plat("linux", "arm64", ""),
                ],
            ),
            (
                "linux/arm",
                plat("linux", "arm", ""),
                "linux/arm".into(),
                vec![
                    plat("linux", "arm", "v7"),
                    plat("linux", "armhf", ""),
                    plat("linux", "arm", "7"),
                ],
            ),
            (
                "linux/arm/v6",
                plat("linux", "arm", "v6"),
                "linux/arm/v6".into(),
                vec![plat("linux", "armel", "")],
            ),
            (
                "linux/arm/v7",
                plat("linux", "arm", "v7"),
                "linux/arm/v7".into(),
                vec![plat("linux", "arm", ""), plat("linux", "armhf", "")],
            ),
            ("arm", plat(&os, "arm", ""), join(&[&os, "arm"]), vec![]),
            (
                "armel",
                plat(&os, "arm", "v6"),
                join(&[&os, "arm/v6"]),
                vec![],
            ),
            ("armhf", plat(&os, "arm", ""), join(&[&os, "arm"]), vec![]),
            (
                "Aarch64",
                plat(&os, "arm64", ""),
                join(&[&os, "arm64"]),
                vec![],
            ),
            (
                "x86_64",
                plat(&os, "amd64", ""),
                join(&[&os, "amd64"]),
                vec![],
            ),
            (
                "Linux/x86_64",
                plat("linux", "amd64", ""),
                "linux/amd64".into(),
                vec![],
            ),
            ("i386", plat(&os, "386", ""), join(&[&os, "386"]), vec![]),
            (
                "linux",
                plat("linux", &arch, &dv),
                join(&["linux", &arch, &dv]),
                vec![],
            ),
            (
                "s390x",
                plat(&os, "s390x", ""),
                join(&[&os, "s390x"]),
                vec![],
            ),
            (
                "linux/s390x",
                plat("linux", "s390x", ""),
                "linux/s390x".into(),
                vec![],
            ),
            (
                "macOS",
                plat("darwin", &arch, &dv),
                join(&["darwin", &arch, &dv]),
                vec![],
            ),
            (
                "windows",
                plat("windows", &arch, &dv),
                join(&["windows", &arch, &dv]),
                vec![],
            ),
            (
                "windows()",
                plat("windows", &arch, &dv),
                join(&["windows", &arch, &dv]),
                vec![],
            ),
            // contract extras
            (
                "linux/x86-64",
                plat("linux", "amd64", ""),
                "linux/amd64".into(),
                vec![],
            ),
            (
                "linux/amd64/v1",
                plat("linux", "amd64", ""),
                "linux/amd64".into(),
                vec![plat("linux", "amd64", "")],
            ),
            (
                "linux/i686",
                plat("linux", "386", ""),
                "linux/386".into(),
                vec![plat("linux", "i386", "")],
            ),
            (
                "linux/i586",
                plat("linux", "386", ""),
                "linux/386".into(),
                vec![],
            ),
            (
                "linux/i486",
                plat("linux", "386", ""),
                "linux/386".into(),
                vec![],
            ),
            (
                "linux/386",
                plat("linux", "386", ""),
                "linux/386".into(),
                vec![plat("linux", "i686", "")],
            ),
            (
                "linux/armhf",
                plat("linux", "arm", ""),
                "linux/arm".into(),
                vec![plat("linux", "arm", "v7")],
            ),
            (
                "linux/armel",
                plat("linux", "arm", "v6"),
                "linux/arm/v6".into(),
                vec![plat("linux", "arm", "6")],
            ),
            (
                "linux/arm/5",
                plat("linux", "arm", "v5"),
                "linux/arm/v5".into(),
                vec![],
            ),
            (
                "linux/aarch64/8",
                plat("linux", "arm64", "v8"),
                "linux/arm64/v8".into(),
                vec![plat("linux", "arm64", "")],
            ),
            (
                "linux/arm64/9",
                plat("linux", "arm64", "v9"),
                "linux/arm64/v9".into(),
                vec![plat("linux", "arm64", "v9.0")],
            ),
            (
                "MacOS/arm64",
                plat("darwin", "arm64", ""),
                "darwin/arm64".into(),
                vec![],
            ),
            (
                "windows/amd64",
                plat("windows", "amd64", ""),
                "windows/amd64".into(),
                vec![],
            ),
            (
                "unknown/unknown",
                plat("unknown", "unknown", ""),
                "unknown/unknown".into(),
                vec![],
            ),
        ];
        assert!(cases.len() >= 30);
        for (input, expected, formatted, matches) in cases {
            let p = Platform::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p, expected, "parse({input:?})");
            let m = Matcher::new(vec![p.clone()], true);
            if !expected.is_unknown() {
                assert!(m.matches(&expected), "{input} matches {expected:?}");
            }
            for mc in &matches {
                assert!(m.matches(mc), "{input} should match {mc:?}");
            }
            assert_eq!(p.to_string(), formatted, "format({input:?})");
            let reparsed = Platform::parse(&formatted).unwrap();
            assert_eq!(reparsed.to_string(), formatted, "round trip of {input:?}");
        }
    }

    #[test]
    fn parse_os_version() {
        let arch = Platform::host().architecture;
        let cases = [
            ("windows(10.0.17763)", "10.0.17763"),
            ("windows(10.0.17763+win32k)", "10.0.17763"),
            ("windows(10.0.17763%2Bbuild.42)", "10.0.17763+build.42"),
            (
                "windows(10.0.17763%2Bbuild.42+win32k)",
                "10.0.17763+build.42",
            ),
            ("windows(50%25done)", "50%done"),
            ("windows(10.0.20348)/amd64", "10.0.20348"),
        ];
        for (input, version) in cases {
            let p = Platform::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.os, "windows");
            assert_eq!(p.os_version.as_deref(), Some(version), "{input}");
            if !input.contains('/') {
                assert_eq!(p.architecture, arch);
            }
        }
        let p = Platform::parse("linux(+gpu+simd)/amd64").unwrap();
        assert_eq!(p, plat("linux", "amd64", ""));
    }

    /// platforms_test.go TestParseSelectorInvalid + extras.
    #[test]
    fn parse_invalid() {
        for input in [
            "",
            "/linux/arm",
            "linux/arm/",
            "linux /arm",
            "linux/&arm",
            "linux/arm/foo/bar",
            "*",
            "linux/*",
            "*/arm64",
            "notanos",
            "linux(",
            "linux(1.0",
            "linux(1.0)x/amd64",
            "linux(+)/amd64",
            "linux(1+2++3)/amd64",
            "windows(%zz)/amd64",
            "windows(%4)/amd64",
            "linux//arm",
            "lin.ux/amd64",
        ] {
            match Platform::parse(input) {
                Err(PlatformError::Invalid(s, _)) => assert_eq!(s, input),
                other => panic!("{input:?} should be invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn normalize_table() {
        let cases = [
            (("Linux", "x86_64", ""), ("linux", "amd64", "")),
            (("linux", "x86-64", ""), ("linux", "amd64", "")),
            (("linux", "amd64", "v1"), ("linux", "amd64", "")),
            (("linux", "amd64", "v3"), ("linux", "amd64", "v3")),
            (("linux", "aarch64", ""), ("linux", "arm64", "")),
            (("linux", "arm64", "v8"), ("linux", "arm64", "")),
            (("linux", "arm64", "8"), ("linux", "arm64", "")),
            (("linux", "arm64", "v8.0"), ("linux", "arm64", "")),
            (("linux", "arm64", "9.0"), ("linux", "arm64", "v9")),
            (("linux", "arm64", "v8.2"), ("linux", "arm64", "v8.2")),
            (("linux", "armhf", ""), ("linux", "arm", "v7")),
            (("linux", "armel", ""), ("linux", "arm", "v6")),
            (("linux", "arm", ""), ("linux", "arm", "v7")),
            (("linux", "arm", "7"), ("linux", "arm", "v7")),
            (("linux", "arm", "6"), ("linux", "arm", "v6")),
            (("linux", "ARM", "V5"), ("linux", "arm", "v5")),
            (("linux", "i386", "x"), ("linux", "386", "")),
            (("linux", "i686", ""), ("linux", "386", "")),
            (("linux", "386", ""), ("linux", "386", "")),
            (("macos", "arm64", ""), ("darwin", "arm64", "")),
            (("Windows", "AMD64", ""), ("windows", "amd64", "")),
            (("linux", "riscv64", ""), ("linux", "riscv64", "")),
        ];
        for ((os, a, v), (eos, ea, ev)) in cases {
            let n = plat(os, a, v).normalize();
            assert_eq!(n, plat(eos, ea, ev), "normalize {os}/{a}/{v}");
            assert_eq!(n.normalize(), n);
        }
        assert_eq!(plat("", "amd64", "").normalize().os, host_os());
    }

    #[test]
    fn display() {
        assert_eq!(plat("linux", "arm", "v7").to_string(), "linux/arm/v7");
        assert_eq!(plat("linux", "amd64", "").to_string(), "linux/amd64");
        assert_eq!(plat("", "amd64", "").to_string(), "unknown");
        assert_eq!(plat("linux", "", "").to_string(), "linux");
    }

    #[test]
    fn serde_roundtrip() {
        let json = r#"{"architecture":"arm","os":"linux","variant":"v7"}"#;
        let p: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(p, plat("linux", "arm", "v7"));
        let json = r#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1"}"#;
        let p: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(p.os_version.as_deref(), Some("10.0.17763.1"));
        assert_eq!(
            serde_json::to_string(&plat("linux", "amd64", "")).unwrap(),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
    }

    fn arb_platform() -> impl Strategy<Value = Platform> {
        let os = prop_oneof![
            Just("linux".to_string()),
            Just("Linux".to_string()),
            Just("windows".to_string()),
            Just("macos".to_string()),
            Just("darwin".to_string()),
            "[A-Za-z0-9_-]{1,8}",
        ];
        let arch = prop_oneof![
            Just("amd64".to_string()),
            Just("x86_64".to_string()),
            Just("x86-64".to_string()),
            Just("aarch64".to_string()),
            Just("arm64".to_string()),
            Just("arm".to_string()),
            Just("armhf".to_string()),
            Just("armel".to_string()),
            Just("i386".to_string()),
            Just("i686".to_string()),
            Just("386".to_string()),
            "[A-Za-z0-9_.-]{1,8}",
        ];
        let variant = prop_oneof![
            Just(None),
            Just(Some("v1".to_string())),
            Just(Some("7".to_string())),
            Just(Some("v8".to_string())),
            Just(Some("9.0".to_string())),
            proptest::option::of("[A-Za-z0-9_.-]{1,6}"),
        ];
        (os, arch, variant).prop_map(|(os, arch, variant)| Platform {
            os,
            architecture: arch,
            variant,
            os_version: None,
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Platform::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_likely_shapes(s in "[a-zA-Z0-9()%+/._*-]{0,30}") {
            let _ = Platform::parse(&s);
        }

        #[test]
        fn normalize_idempotent(p in arb_platform()) {
            let n = p.normalize();
            prop_assert_eq!(n.normalize(), n.clone());
        }

        #[test]
        fn parse_format_roundtrip(p in arb_platform()) {
            let n = p.normalize();
            let parsed = Platform::parse(&n.to_string());
            prop_assert_eq!(parsed, Ok(n));
        }
    }
}
