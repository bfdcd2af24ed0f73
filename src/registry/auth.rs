//! Pull credentials, `WWW-Authenticate` parsing and credential scoping.

use std::collections::HashMap;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::RegistryError;

/// Credentials passed by the kubelet (CRI `AuthConfig`). Empty string = unset.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PullAuth {
    pub username: String,
    pub password: String,
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
    pub server_address: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn red(s: &str) -> &'static str {
            if s.is_empty() {
                ""
            } else {
                "<redacted>"
            }
        }
        f.debug_struct("PullAuth")
            .field("username", &self.username)
            .field("password", &red(&self.password))
            .field("auth", &red(&self.auth))
            .field("identity_token", &red(&self.identity_token))
            .field("registry_token", &red(&self.registry_token))
            .field("server_address", &self.server_address)
            .finish()
    }
}

impl PullAuth {
    pub fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.auth.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
            && self.server_address.is_empty()
    }

    /// Stable, non-reversible key for single-flight grouping
    /// (sha256 of the length-prefixed fields, hex, first 16 chars).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for f in [
            &self.username,
            &self.password,
            &self.auth,
            &self.identity_token,
            &self.registry_token,
            &self.server_address,
        ] {
            h.update((f.len() as u64).to_be_bytes());
            h.update(f.as_bytes());
        }
        let mut s = hex::encode(h.finalize());
        s.truncate(16);
        s
    }

    /// Decode `auth` (base64 "user:pass") into username/password. Explicit
    /// username/password take precedence (as in containerd); `auth` is
    /// validated regardless and cleared in the result.
    pub fn normalized(&self) -> Result<PullAuth, RegistryError> {
        let mut out = self.clone();
        if !self.auth.is_empty() {
            let raw = self.auth.trim();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .or_else(|_| {
                    base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(raw.trim_end_matches('='))
                })
                .map_err(|_| {
                    RegistryError::BadCredentials("invalid auth: not valid base64".to_string())
                })?;
            let text = String::from_utf8(decoded).map_err(|_| {
                RegistryError::BadCredentials("invalid auth: not valid UTF-8".to_string())
            })?;
            let (user, pass) = text.split_once(':').ok_or_else(|| {
                RegistryError::BadCredentials(
                    "invalid auth: expected base64 of \"username:password\"".to_string(),
                )
            })?;
            if out.username.is_empty() {
                out.username = user.to_string();
                out.password = pass.trim_end_matches(['\n', '\r']).to_string();
            }
            out.auth.clear();
        }
        Ok(out)
    }

    pub(crate) fn has_basic(&self) -> bool {
        !self.username.is_empty()
    }

    pub(crate) fn basic_header(&self) -> String {
        let enc = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        format!("Basic {enc}")
    }
}

/// Canonical registry host for comparisons: lower-case host[:port] without
/// scheme/path; Docker Hub aliases collapse to `docker.io`.
pub(crate) fn canonical_host(s: &str) -> String {
    let s = s.trim();
    let rest = match s.find("://") {
        Some(i) => &s[i + 3..],
        None => s,
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// Whether credentials for `domain` may be sent to the endpoint `ep_host`.
/// `is_upstream`: the endpoint is the domain's `server` (last host entry).
pub(crate) fn creds_allowed(
    auth: &PullAuth,
    domain: &str,
    ep_host: &str,
    is_upstream: bool,
) -> bool {
    let d = canonical_host(domain);
    let e = canonical_host(ep_host);
    let for_registry = is_upstream || e == d;
    if auth.server_address.is_empty() {
        return for_registry;
    }
    let sa = canonical_host(&auth.server_address);
    sa == e || (sa == d && for_registry)
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lower-cased scheme ("bearer", "basic", ...).
    pub scheme: String,
    /// Parameters with lower-cased names.
    pub params: HashMap<String, String>,
}

/// Challenges kept from one `WWW-Authenticate` header; the rest are ignored.
pub(crate) const MAX_CHALLENGES: usize = 16;
/// Parameters kept per challenge (realm, service, scope, error… are a
/// handful); the rest are ignored, so a cached challenge stays small.
pub(crate) const MAX_CHALLENGE_PARAMS: usize = 32;

/// Parse a `WWW-Authenticate` header value (RFC 7235): one or more
/// challenges, parameters may be quoted strings containing commas. At most
/// [`MAX_CHALLENGES`] challenges of [`MAX_CHALLENGE_PARAMS`] parameters each
/// (the first ones) are kept.
pub(crate) fn parse_www_authenticate(header: &str) -> Vec<Challenge> {
    let b = header.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = vec![];
    let is_tok_end = |c: u8| c == b',' || c == b'=' || c.is_ascii_whitespace();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1
        }
    };
    while i < b.len() {
        // skip separators
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !is_tok_end(b[i]) {
            i += 1;
        }
        let tok = &header[start..i];
        let mut j = i;
        skip_ws(&mut j);
        if j < b.len() && b[j] == b'=' && !tok.is_empty() {
            // auth-param
            j += 1;
            skip_ws(&mut j);
            let value = if j < b.len() && b[j] == b'"' {
                j += 1;
                let mut v = Vec::new();
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        j += 1;
                    }
                    v.push(b[j]);
                    j += 1;
                }
                j += 1; // closing quote
                String::from_utf8_lossy(&v).into_owned()
            } else {
                let vs = j;
                while j < b.len() && b[j] != b',' && !b[j].is_ascii_whitespace() {
                    j += 1;
                }
                header[vs..j].to_string()
            };
            i = j;
            if let Some(c) = out
                .last_mut()
                .filter(|c| c.params.len() < MAX_CHALLENGE_PARAMS)
            {
                c.params.insert(tok.to_ascii_lowercase(), value);
            }
        } else if tok.is_empty() {
            i += 1; // stray '='
        } else {
            // new challenge scheme; a token68 (e.g. "abc==") after it is skipped
            if out.len() == MAX_CHALLENGES {
                break;
            }
            out.push(Challenge {
                scheme: tok.to_ascii_lowercase(),
                params: HashMap::new(),
            });
            i = j;
            // token68: token followed by '=' padding then comma/end
            let ts = i;
            while i < b.len() && !is_tok_end(b[i]) {
                i += 1;
            }
            let mut k = i;
            while k < b.len() && b[k] == b'=' {
                k += 1;
            }
            let mut k2 = k;
            skip_ws(&mut k2);
            if i > ts && k > i && (k2 >= b.len() || b[k2] == b',') {
                i = k; // token68 consumed
            } else {
                i = ts; // re-parse as param
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn www_authenticate_parsing() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:samalba/my-app:pull,push");

        let c = parse_www_authenticate(
            r#"Basic realm="test, with comma", Bearer realm=https://x/t , error="invalid_token""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "test, with comma");
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].params["realm"], "https://x/t");
        assert_eq!(c[1].params["error"], "invalid_token");

        let c = parse_www_authenticate(r#"Basic realm="a \"quoted\" realm""#);
        assert_eq!(c[0].params["realm"], r#"a "quoted" realm"#);

        let c = parse_www_authenticate("Negotiate abc123==, Basic realm=x");
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].scheme, "basic");
        assert_eq!(c[1].params["realm"], "x");
        assert!(parse_www_authenticate("").is_empty());
        let c = parse_www_authenticate("Basic");
        assert_eq!(c.len(), 1);
        assert!(c[0].params.is_empty());
    }

    #[test]
    fn www_authenticate_keeps_few_challenges_and_params() {
        let params: Vec<String> = (0..10_000).map(|i| format!("p{i}=\"{i}\"")).collect();
        let h = format!("Bearer realm=\"r\",service=s,{}", params.join(","));
        let t = std::time::Instant::now();
        let c = parse_www_authenticate(&h);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].params.len(), MAX_CHALLENGE_PARAMS);
        assert_eq!(
            (
                c[0].params["realm"].as_str(),
                c[0].params["service"].as_str()
            ),
            ("r", "s")
        );
        let h = vec!["Basic realm=x"; 10_000].join(", ");
        let c = parse_www_authenticate(&h);
        assert_eq!(c.len(), MAX_CHALLENGES);
        assert!(c.iter().all(|c| c.params["realm"] == "x"));
    }

    #[test]
    fn normalization() {
        let a = PullAuth {
            auth: "dXNlcjpwYXNzOndvcmQ=".into(),
            ..Default::default()
        };
        let n = a.normalized().unwrap();
        assert_eq!(n.username, "user");
        assert_eq!(n.password, "pass:word");
        assert!(n.auth.is_empty());
        // explicit username wins
        let a = PullAuth {
            username: "u".into(),
            password: "p".into(),
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        let n = a.normalized().unwrap();
        assert_eq!((n.username.as_str(), n.password.as_str()), ("u", "p"));
        for bad in [
            "!!!notbase64",
            "dXNlcnBhc3M=", /* userpass */
            "/w==",         /* 0xff */
        ] {
            let a = PullAuth {
                auth: bad.into(),
                ..Default::default()
            };
            assert!(
                matches!(a.normalized(), Err(RegistryError::BadCredentials(_))),
                "{bad}"
            );
        }
        assert!(PullAuth::default().is_empty());
        assert!(!a_with_user().is_empty());
    }

    fn a_with_user() -> PullAuth {
        PullAuth {
            username: "u".into(),
            ..Default::default()
        }
    }

    #[test]
    fn debug_redacts_and_fingerprint() {
        let a = PullAuth {
            username: "alice".into(),
            password: "s3cret-pw".into(),
            auth: "YWxpY2U6czNjcmV0LXB3".into(),
            identity_token: "idtok-xyz".into(),
            registry_token: "regtok-abc".into(),
            server_address: "https://r.example".into(),
        };
        let d = format!("{a:?}");
        for s in [
            "s3cret-pw",
            "YWxpY2U6czNjcmV0LXB3",
            "idtok-xyz",
            "regtok-abc",
        ] {
            assert!(!d.contains(s), "{d}");
        }
        assert!(d.contains("alice") && d.contains("<redacted>"));
        let f = a.fingerprint();
        assert_eq!(f.len(), 16);
        assert_eq!(f, a.clone().fingerprint());
        assert_ne!(f, PullAuth::default().fingerprint());
        assert!(!f.contains("s3cret"));
        // field boundaries matter
        let x = PullAuth {
            username: "ab".into(),
            password: "c".into(),
            ..Default::default()
        };
        let y = PullAuth {
            username: "a".into(),
            password: "bc".into(),
            ..Default::default()
        };
        assert_ne!(x.fingerprint(), y.fingerprint());
    }

    #[test]
    fn server_address_matching() {
        let none = PullAuth {
            username: "u".into(),
            ..Default::default()
        };
        assert!(creds_allowed(
            &none,
            "docker.io",
            "registry-1.docker.io",
            true
        ));
        assert!(creds_allowed(
            &none,
            "r.example:5000",
            "r.example:5000",
            false
        ));
        assert!(!creds_allowed(&none, "docker.io", "mirror.local", false));
        let sa = |s: &str| PullAuth {
            username: "u".into(),
            server_address: s.into(),
            ..Default::default()
        };
        assert!(creds_allowed(
            &sa("r.example:5000"),
            "r.example:5000",
            "r.example:5000",
            true
        ));
        assert!(creds_allowed(
            &sa("https://r.example:5000"),
            "r.example:5000",
            "r.example:5000",
            true
        ));
        assert!(creds_allowed(
            &sa("https://index.docker.io/v1/"),
            "docker.io",
            "registry-1.docker.io",
            true
        ));
        assert!(!creds_allowed(
            &sa("other.example"),
            "r.example",
            "r.example",
            true
        ));
        assert!(!creds_allowed(
            &sa("r.example"),
            "r.example",
            "mirror.local",
            false
        ));
        assert!(creds_allowed(
            &sa("mirror.local"),
            "r.example",
            "mirror.local",
            false
        ));
        assert!(!creds_allowed(
            &sa("r.example:5000"),
            "r.example",
            "r.example",
            true
        ));
        assert_eq!(
            canonical_host("HTTPS://Foo.Example:443/v2/"),
            "foo.example:443"
        );
    }
}
