//! Port of containerd/platforms compare.go (`Only`, `OnlyStrict`, `Ordered`,
//! `platformVector`) and platform_windows_compat.go (os.version matching).

use super::{Platform, PlatformError};

/// Largest fallback chain generated for numbered amd64/arm variants.
/// Deviation: upstream has no bound (a wanted `arm/v100000` would allocate a
/// 100k-long vector); real variants are single digits.
const MAX_NUMBERED_FALLBACKS: i64 = 64;

/// Matches image platforms against the wanted platforms in preference order.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// The wanted platforms as given (normalised), first preferred.
    wanted: Vec<Platform>,
    strict: bool,
    /// `wanted` expanded with fallbacks (or not, when strict), normalised,
    /// in preference order. The rank of a platform is the index of the first
    /// entry here that matches it.
    ordered: Vec<Platform>,
}

impl Matcher {
    /// `platforms` in preference order (first preferred); each expanded with
    /// its fallbacks as upstream `Only` does, unless `strict` (`OnlyStrict`).
    pub fn new(platforms: Vec<Platform>, strict: bool) -> Matcher {
        let wanted: Vec<Platform> = platforms.iter().map(Platform::normalize).collect();
        let ordered = wanted
            .iter()
            .flat_map(|p| {
                if strict {
                    vec![p.clone()]
                } else {
                    platform_vector(p).iter().map(Platform::normalize).collect()
                }
            })
            .collect();
        Matcher {
            wanted,
            strict,
            ordered,
        }
    }

    /// The default matcher of the running machine (upstream `Default()`).
    pub fn host() -> Matcher {
        Matcher::new(vec![Platform::host()], false)
    }

    /// Whether this matcher was built without fallbacks (`OnlyStrict`).
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    pub fn matches(&self, p: &Platform) -> bool {
        self.rank(p).is_some()
    }

    /// Position in preference order (0 = best); `None` = no match.
    /// Platforms whose os or architecture is "unknown" never match.
    pub fn rank(&self, p: &Platform) -> Option<usize> {
        if p.is_unknown() {
            return None;
        }
        let n = p.normalize();
        if n.is_unknown() {
            return None;
        }
        self.ordered.iter().position(|m| single_match(m, &n))
    }

    /// The wanted platforms joined for messages, e.g. "linux/amd64".
    pub fn describe(&self) -> String {
        self.wanted
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Upstream `matcher.Match` with `m` and `n` already normalised.
fn single_match(m: &Platform, n: &Platform) -> bool {
    m.os == n.os
        && m.architecture == n.architecture
        && m.variant == n.variant
        && (m.os != "windows"
            || windows_version_match(m.os_version.as_deref(), n.os_version.as_deref()))
}

/// Choose the best entry of an index. `entries[i]` is the platform of index
/// entry i (`None` when unknown). Returns the index of the lowest-ranked
/// match, ties broken by the earliest entry.
pub fn select(matcher: &Matcher, entries: &[Option<Platform>]) -> Result<usize, PlatformError> {
    let mut best: Option<(usize, usize)> = None; // (rank, index)
    for (i, entry) in entries.iter().enumerate() {
        let Some(p) = entry else { continue };
        if let Some(r) = matcher.rank(p) {
            if best.is_none_or(|(br, _)| r < br) {
                best = Some((r, i));
            }
        }
    }
    if let Some((_, i)) = best {
        return Ok(i);
    }
    let mut offered: Vec<String> = Vec::new();
    for e in entries {
        let s = match e {
            Some(p) => p.to_string(),
            None => "(no platform)".to_string(),
        };
        if !offered.contains(&s) {
            offered.push(s);
        }
    }
    let offered = if offered.is_empty() {
        "nothing".to_string()
    } else {
        offered.join(", ")
    };
    Err(PlatformError::NoMatch {
        wanted: matcher.describe(),
        offered,
    })
}

/// Go `strconv.Atoi(strings.TrimPrefix(variant, "v"))`.
fn variant_number(variant: Option<&str>) -> Option<i64> {
    let v = variant.unwrap_or("");
    v.strip_prefix('v').unwrap_or(v).parse().ok()
}

fn with_variant(p: &Platform, arch: &str, variant: Option<String>) -> Platform {
    Platform {
        os: p.os.clone(),
        architecture: arch.to_string(),
        variant,
        os_version: p.os_version.clone(),
    }
}

/// arm64 variant → (major versions, highest minor for each), upstream
/// `arm64variantToVersion`.
fn arm64_versions(variant: &str) -> Option<(&'static [i64], &'static [i64])> {
    Some(match variant {
        "v8" | "v8.0" => (&[8], &[0]),
        "v8.1" => (&[8], &[1]),
        "v8.2" => (&[8], &[2]),
        "v8.3" => (&[8], &[3]),
        "v8.4" => (&[8], &[4]),
        "v8.5" => (&[8], &[5]),
        "v8.6" => (&[8], &[6]),
        "v8.7" => (&[8], &[7]),
        "v8.8" => (&[8], &[8]),
        "v8.9" => (&[8], &[9]),
        "v9" | "v9.0" => (&[9, 8], &[0, 5]),
        "v9.1" => (&[9, 8], &[1, 6]),
        "v9.2" => (&[9, 8], &[2, 7]),
        "v9.3" => (&[9, 8], &[3, 8]),
        "v9.4" => (&[9, 8], &[4, 9]),
        "v9.5" => (&[9, 8], &[5, 9]),
        "v9.6" => (&[9, 8], &[6, 9]),
        "v9.7" => (&[9, 8], &[7, 9]),
        _ => return None,
    })
}

/// Upstream `platformVector`: the platform followed by the platforms it can
/// also run, in preference order. `p` must be normalised.
pub(crate) fn platform_vector(p: &Platform) -> Vec<Platform> {
    let mut vector = vec![p.clone()];
    match p.architecture.as_str() {
        "amd64" => {
            if let Some(n) = variant_number(p.variant.as_deref()) {
                if n > 1 && n <= MAX_NUMBERED_FALLBACKS {
                    for v in (1..n).rev() {
                        vector.push(with_variant(p, "amd64", Some(format!("v{v}"))));
                    }
                }
            }
            vector.push(with_variant(p, "386", None));
        }
        "arm" => {
            if let Some(n) = variant_number(p.variant.as_deref()) {
                if n > 5 && n <= MAX_NUMBERED_FALLBACKS {
                    for v in (5..n).rev() {
                        vector.push(with_variant(p, "arm", Some(format!("v{v}"))));
                    }
                }
            }
        }
        "arm64" => {
            let variant = p.variant.clone().unwrap_or_else(|| "v8".to_string());
            vector.clear();
            // As upstream: an unrecognised arm64 variant yields an empty
            // vector (matches nothing).
            let Some((majors, minors)) = arm64_versions(&variant) else {
                return vector;
            };
            for (major, &top_minor) in majors.iter().zip(minors) {
                for minor in (0..=top_minor).rev() {
                    let v = if minor == 0 {
                        format!("v{major}")
                    } else {
                        format!("v{major}.{minor}")
                    };
                    vector.push(with_variant(p, "arm64", Some(v)));
                }
            }
            // Every arm64 variant in the table starts with v8 or v9.
            vector.extend(platform_vector(&with_variant(
                p,
                "arm",
                Some("v8".to_string()),
            )));
        }
        _ => {}
    }
    vector
}

// ---------------------------------------------------------------------------
// platform_windows_compat.go

const LTSC2022: u16 = 20348;
const LTSC2025: u16 = 26100;
const COMPAT_LTSC_RELEASES: [u16; 2] = [LTSC2022, LTSC2025];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WindowsOsVersion {
    major: u8,
    minor: u8,
    build: u16,
}

fn windows_os_version(prefix: &str) -> WindowsOsVersion {
    if prefix.matches('.').count() < 2 {
        return WindowsOsVersion::default();
    }
    let mut it = prefix.split('.');
    let (Some(major), Some(minor), Some(build)) = (it.next(), it.next(), it.next()) else {
        return WindowsOsVersion::default();
    };
    // Go's ParseUint rejects signs; Rust's accepts a leading '+'.
    let num_ok = |s: &str| !s.starts_with('+');
    match (
        major.parse::<u8>().ok().filter(|_| num_ok(major)),
        minor.parse::<u8>().ok().filter(|_| num_ok(minor)),
        build.parse::<u16>().ok().filter(|_| num_ok(build)),
    ) {
        (Some(major), Some(minor), Some(build)) => WindowsOsVersion {
            major,
            minor,
            build,
        },
        _ => WindowsOsVersion::default(),
    }
}

fn windows_compatible(host: WindowsOsVersion, ctr: WindowsOsVersion) -> bool {
    if host.major != ctr.major || host.minor != ctr.minor {
        return false;
    }
    if host.build < LTSC2022 {
        return host.build == ctr.build;
    }
    let mut supported = LTSC2022;
    for &r in COMPAT_LTSC_RELEASES.iter().rev() {
        if host.build > r {
            supported = r;
            break;
        }
    }
    supported <= ctr.build && ctr.build <= host.build
}

/// Upstream `windowsVersionMatcher.Match`.
fn windows_version_match(wanted: Option<&str>, candidate: Option<&str>) -> bool {
    let w = windows_os_version(wanted.unwrap_or(""));
    let c = candidate.unwrap_or("");
    if w == WindowsOsVersion::default() || c.is_empty() {
        return true;
    }
    windows_compatible(w, windows_os_version(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn check(strict: bool, platform: &str, yes: &[&str], no: &[&str]) {
        let m = Matcher::new(vec![p(platform)], strict);
        for s in yes {
            assert!(
                m.matches(&p(s)),
                "Only(strict={strict})({platform}) should match {s}"
            );
        }
        for s in no {
            assert!(
                !m.matches(&p(s)),
                "Only(strict={strict})({platform}) should NOT match {s}"
            );
        }
    }

    /// compare_test.go TestOnly.
    #[test]
    fn only_vectors() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "linux/amd64",
                &["linux/amd64", "linux/386"],
                &[
                    "linux/amd64/v2",
                    "linux/arm/v7",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/amd64/v2",
                &[
                    "linux/amd64",
                    "linux/amd64/v1",
                    "linux/amd64/v2",
                    "linux/386",
                ],
                &[
                    "linux/amd64/v3",
                    "linux/amd64/v4",
                    "linux/arm/v7",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/386",
                &["linux/386"],
                &[
                    "linux/amd64",
                    "linux/arm/v7",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "windows/amd64",
                &["windows/amd64", "windows(10.0.17763)/amd64"],
                &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
            ),
            (
                "linux/arm/v8",
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                ],
                &[
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm/v7",
                &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
                &[
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm/v8",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm/v6",
                &["linux/arm/v5", "linux/arm/v6"],
                &[
                    "linux/amd64",
                    "linux/arm",
                    "linux/arm/v4",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm/v5",
                &["linux/arm/v5"],
                &[
                    "linux/amd64",
                    "linux/arm",
                    "linux/arm/v4",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm/v4",
                &["linux/arm/v4"],
                &[
                    "linux/amd64",
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm64/v9.6",
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "linux/arm64/v8",
                    "linux/arm64/v8.1",
                    "linux/arm64/v8.2",
                    "linux/arm64/v8.3",
                    "linux/arm64/v8.4",
                    "linux/arm64/v8.5",
                    "linux/arm64/v8.6",
                    "linux/arm64/v8.7",
                    "linux/arm64/v8.8",
                    "linux/arm64/v8.9",
                    "linux/arm64/v9",
                    "linux/arm64/v9.0",
                    "linux/arm64/v9.1",
                    "linux/arm64/v9.2",
                    "linux/arm64/v9.3",
                    "linux/arm64/v9.4",
                    "linux/arm64/v9.5",
                    "linux/arm64/v9.6",
                ],
                &[
                    "linux/amd64",
                    "linux/arm/v4",
                    "windows/amd64",
                    "windows/arm",
                    "linux/arm64/v8.10",
                ],
            ),
            (
                "linux/arm64/v9",
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "linux/arm64/v8",
                    "linux/arm64/v8.1",
                    "linux/arm64/v8.2",
                    "linux/arm64/v8.3",
                    "linux/arm64/v8.4",
                    "linux/arm64/v8.5",
                    "linux/arm64/v9",
                    "linux/arm64/v9.0",
                ],
                &[
                    "linux/amd64",
                    "linux/arm/v4",
                    "windows/amd64",
                    "windows/arm",
                    "linux/arm64/v8.6",
                ],
            ),
            (
                "linux/arm64/v8.1",
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "linux/arm64/v8",
                    "linux/arm64/v8.1",
                ],
                &[
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm/v9",
                    "linux/arm64/v9",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm64",
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "linux/arm64/v8",
                ],
                &[
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm/v9",
                    "linux/arm64/v9",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
        ];
        for (platform, yes, no) in cases {
            check(false, platform, yes, no);
        }
    }

    /// compare_test.go TestOnlyStrict.
    #[test]
    fn only_strict_vectors() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "linux/amd64",
                &["linux/amd64"],
                &[
                    "linux/386",
                    "linux/arm/v7",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/386",
                &["linux/386"],
                &[
                    "linux/amd64",
                    "linux/arm/v7",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "windows/amd64",
                &["windows/amd64", "windows(10.0.17763)/amd64"],
                &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
            ),
            (
                "windows(10.0.17763)/amd64",
                &["windows/amd64", "windows(10.0.17763)/amd64"],
                &["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/arm"],
            ),
            (
                "linux/arm/v8",
                &["linux/arm/v8"],
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm/v7",
                &["linux/arm", "linux/arm/v7"],
                &[
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm/v8",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm/v6",
                &["linux/arm/v6"],
                &[
                    "linux/arm/v5",
                    "linux/amd64",
                    "linux/arm",
                    "linux/arm/v4",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm/v5",
                &["linux/arm/v5"],
                &[
                    "linux/amd64",
                    "linux/arm",
                    "linux/arm/v4",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm/v4",
                &["linux/arm/v4"],
                &[
                    "linux/amd64",
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm64/v9.5",
                &["linux/arm64/v9.5"],
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm64/v8",
                    "linux/arm64/v8.1",
                    "linux/arm64/v9",
                    "linux/arm64/v9.1",
                    "linux/arm64/v9.4",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm64/v9",
                &["linux/arm64/v9", "linux/arm64/v9.0"],
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm/v9",
                    "linux/arm64/v8",
                    "linux/arm64/v8.1",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm64/v8.1",
                &["linux/arm64/v8.1"],
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm/v9",
                    "linux/arm64/v8",
                    "linux/arm64/v9",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/arm64",
                &["linux/arm64", "linux/arm64/v8"],
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm/v9",
                    "linux/arm64/v9",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
        ];
        for (platform, yes, no) in cases {
            check(true, platform, yes, no);
        }
    }

    #[test]
    fn unknown_never_matches() {
        let unknown = Platform::new("unknown", "unknown", None);
        for strict in [false, true] {
            let m = Matcher::new(vec![unknown.clone()], strict);
            assert!(!m.matches(&unknown));
            let m = Matcher::new(vec![p("linux/amd64")], strict);
            assert!(!m.matches(&unknown));
            assert!(!m.matches(&Platform::new("linux", "unknown", None)));
            assert!(!m.matches(&Platform::new("Unknown", "amd64", None)));
        }
    }

    fn rank(m: &Matcher, s: &str) -> Option<usize> {
        m.rank(&p(s))
    }

    #[test]
    fn ordering_amd64_prefers_amd64_over_386() {
        let m = Matcher::new(vec![p("linux/amd64")], false);
        assert_eq!(rank(&m, "linux/amd64"), Some(0));
        assert_eq!(rank(&m, "linux/x86_64"), Some(0));
        assert!(rank(&m, "linux/386").unwrap() > 0);
        let entries = vec![Some(p("linux/386")), Some(p("linux/amd64"))];
        assert_eq!(select(&m, &entries), Ok(1));
        // Only 386 offered: the fallback is taken.
        assert_eq!(select(&m, &[Some(p("linux/386"))]), Ok(0));
        // strict: no fallback
        let strict = Matcher::new(vec![p("linux/amd64")], true);
        assert!(select(&strict, &[Some(p("linux/386"))]).is_err());
    }

    #[test]
    fn ordering_arm_v7_node() {
        let m = Matcher::new(vec![p("linux/arm/v7")], false);
        let r7 = rank(&m, "linux/arm/v7").unwrap();
        let r6 = rank(&m, "linux/arm/v6").unwrap();
        let r5 = rank(&m, "linux/arm/v5").unwrap();
        assert!(r7 < r6 && r6 < r5, "{r7} {r6} {r5}");
        assert_eq!(rank(&m, "linux/arm"), Some(r7));
        let idx = |v: &[&str]| v.iter().map(|s| Some(p(s))).collect::<Vec<_>>();
        assert_eq!(
            select(&m, &idx(&["linux/arm/v5", "linux/arm/v6", "linux/arm/v7"])),
            Ok(2)
        );
        assert_eq!(select(&m, &idx(&["linux/arm/v5", "linux/arm/v6"])), Ok(1));
        assert_eq!(select(&m, &idx(&["linux/arm/v5", "linux/arm64"])), Ok(0));
    }

    #[test]
    fn ordering_arm_v6_node() {
        let m = Matcher::new(vec![p("linux/arm/v6")], false);
        let entries: Vec<_> = ["linux/arm/v5", "linux/arm/v6", "linux/arm/v7"]
            .iter()
            .map(|s| Some(p(s)))
            .collect();
        assert_eq!(select(&m, &entries), Ok(1));
        assert!(rank(&m, "linux/arm/v7").is_none());
    }

    #[test]
    fn ordering_arm64_equiv_v8() {
        let m = Matcher::new(vec![p("linux/arm64")], false);
        assert_eq!(rank(&m, "linux/arm64"), Some(0));
        assert_eq!(rank(&m, "linux/arm64/v8"), Some(0));
        assert_eq!(rank(&m, "linux/aarch64"), Some(0));
        let m8 = Matcher::new(vec![p("linux/arm64/v8")], false);
        assert_eq!(rank(&m8, "linux/arm64"), Some(0));
        // arm64 node prefers arm64 over arm/v8 over arm/v7 ...
        let order = [
            "linux/arm64",
            "linux/arm/v8",
            "linux/arm/v7",
            "linux/arm/v6",
            "linux/arm/v5",
        ];
        let ranks: Vec<usize> = order.iter().map(|s| rank(&m, s).unwrap()).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        // first-listed entry wins between arm64 and arm64/v8 (same rank)
        let entries = vec![
            Some(p("linux/arm/v7")),
            Some(p("linux/arm64/v8")),
            Some(p("linux/arm64")),
        ];
        assert_eq!(select(&m, &entries), Ok(1));
    }

    #[test]
    fn ordering_arm64_v9_prefers_newest() {
        let m = Matcher::new(vec![p("linux/arm64/v9.2")], false);
        let order = [
            "linux/arm64/v9.2",
            "linux/arm64/v9.1",
            "linux/arm64/v9",
            "linux/arm64/v8.7",
            "linux/arm64/v8.1",
            "linux/arm64",
            "linux/arm/v8",
            "linux/arm/v5",
        ];
        let ranks: Vec<usize> = order.iter().map(|s| rank(&m, s).unwrap()).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        assert!(rank(&m, "linux/arm64/v8.8").is_none());
    }

    #[test]
    fn unknown_arm64_variant_matches_nothing_like_upstream() {
        let m = Matcher::new(vec![p("linux/arm64/v10")], false);
        assert!(!m.matches(&p("linux/arm64/v10")));
        assert!(!m.matches(&p("linux/arm64")));
        // strict matches itself
        let m = Matcher::new(vec![p("linux/arm64/v10")], true);
        assert!(m.matches(&p("linux/arm64/v10")));
    }

    #[test]
    fn multiple_wanted_in_preference_order() {
        let m = Matcher::new(vec![p("linux/arm64"), p("linux/amd64")], false);
        let entries = vec![
            Some(p("linux/amd64")),
            Some(p("linux/arm/v7")),
            Some(p("linux/arm64")),
        ];
        assert_eq!(select(&m, &entries), Ok(2));
        // arm64's fallbacks (arm) rank before amd64
        assert_eq!(select(&m, &entries[..2]), Ok(1));
        assert_eq!(m.describe(), "linux/arm64, linux/amd64");
        let s = Matcher::new(vec![p("linux/arm64"), p("linux/amd64")], true);
        assert_eq!(select(&s, &entries[..2]), Ok(0));
    }

    fn multi_arch() -> Vec<Option<Platform>> {
        vec![
            Some(p("linux/amd64")),
            Some(p("linux/arm64/v8")),
            Some(p("linux/arm/v7")),
            Some(Platform::new("unknown", "unknown", None)),
            Some(Platform::new("unknown", "unknown", None)),
        ]
    }

    #[test]
    fn select_multi_arch() {
        let entries = multi_arch();
        let node = |s: &str| Matcher::new(vec![p(s)], false);
        assert_eq!(select(&node("linux/amd64"), &entries), Ok(0));
        assert_eq!(select(&node("linux/x86_64"), &entries), Ok(0));
        assert_eq!(select(&node("linux/arm64"), &entries), Ok(1));
        assert_eq!(select(&node("linux/aarch64"), &entries), Ok(1));
        assert_eq!(select(&node("linux/arm/v7"), &entries), Ok(2));
        assert_eq!(select(&node("linux/armhf"), &entries), Ok(2));
        assert_eq!(select(&node("linux/arm/v8"), &entries), Ok(2));
        assert!(matches!(
            select(&node("linux/arm/v6"), &entries),
            Err(PlatformError::NoMatch { .. })
        ));
        assert!(matches!(
            select(&node("windows/amd64"), &entries),
            Err(PlatformError::NoMatch { .. })
        ));
        // The host matcher picks something when the host is one of these.
        let host = Platform::host();
        if ["amd64", "arm64"].contains(&host.architecture.as_str()) && host.os == "linux" {
            assert!(select(&Matcher::host(), &entries).is_ok());
        }
    }

    #[test]
    fn select_no_match_message() {
        let m = Matcher::new(vec![p("linux/amd64")], false);
        let entries = vec![
            Some(p("linux/arm64")),
            Some(Platform::new("unknown", "unknown", None)),
            None,
            Some(p("linux/arm64")),
        ];
        let err = select(&m, &entries).unwrap_err();
        assert_eq!(
            err,
            PlatformError::NoMatch {
                wanted: "linux/amd64".into(),
                offered: "linux/arm64, unknown/unknown, (no platform)".into()
            }
        );
        let msg = err.to_string();
        for needle in [
            "linux/amd64",
            "linux/arm64",
            "unknown/unknown",
            "(no platform)",
        ] {
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn select_skips_none_entries() {
        let m = Matcher::new(vec![p("linux/amd64")], false);
        assert_eq!(select(&m, &[None, Some(p("linux/amd64"))]), Ok(1));
        assert!(select(&m, &[None, None]).is_err());
        let err = select(&m, &[]).unwrap_err();
        assert!(err.to_string().contains("linux/amd64"));
    }

    #[test]
    fn platform_vector_shapes() {
        let fmt = |v: Vec<Platform>| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(
            fmt(platform_vector(&p("linux/amd64").normalize())),
            ["linux/amd64", "linux/386"]
        );
        assert_eq!(
            fmt(platform_vector(&p("linux/amd64/v3").normalize())),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64/v1",
                "linux/386"
            ]
        );
        assert_eq!(
            fmt(platform_vector(&p("linux/arm/v7").normalize())),
            ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(
            fmt(platform_vector(&p("linux/arm64").normalize())),
            [
                "linux/arm64/v8",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
    }

    #[test]
    fn windows_versions() {
        let m = Matcher::new(vec![p("windows(10.0.17763)/amd64")], false);
        let win = |v: &str| Platform {
            os_version: Some(v.into()),
            ..p("windows/amd64")
        };
        assert!(m.matches(&win("10.0.17763.1234")));
        assert!(!m.matches(&win("10.0.20348.1")));
        assert!(m.matches(&p("windows/amd64")));
        let m = Matcher::new(vec![p("windows(10.0.26100)/amd64")], false);
        assert!(m.matches(&win("10.0.20348.1")));
        assert!(m.matches(&win("10.0.26100.5")));
        assert!(!m.matches(&win("10.0.17763.1")));
        // wanted without version accepts any
        let m = Matcher::new(vec![p("windows/amd64")], true);
        assert!(m.matches(&win("10.0.17763.1")));
        // linux ignores os.version
        let m = Matcher::new(vec![p("linux/amd64")], true);
        assert!(m.matches(&Platform {
            os_version: Some("whatever".into()),
            ..p("linux/amd64")
        }));
    }

    #[test]
    fn describe_and_host() {
        let m = Matcher::new(vec![p("linux/arm")], false);
        assert_eq!(m.describe(), "linux/arm/v7");
        let m = Matcher::new(vec![p("linux/amd64")], true);
        assert_eq!(m.describe(), "linux/amd64");
        assert!(m.is_strict());
        assert_eq!(Matcher::host().describe(), Platform::host().to_string());
    }
}
