//! `certs.d`-style `hosts.toml` parsing, mirroring containerd's
//! `remotes/docker/config` host configuration.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::RegistryError;

/// One endpoint to try for a registry domain, in order. The upstream
/// (`server`) endpoint is always the last entry of a host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndpoint {
    /// Endpoint URL (scheme://host[:port][/path]) without trailing slash.
    pub url: String,
    pub capabilities: Vec<String>,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub override_path: bool,
    pub headers: Vec<(String, String)>,
}

impl HostEndpoint {
    pub(crate) fn has_capability(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }

    /// `host[:port]` of the endpoint URL.
    pub(crate) fn host(&self) -> String {
        url_host(&self.url).unwrap_or_else(|| self.url.clone())
    }

    /// Explicitly configured as plain http.
    pub(crate) fn is_plain_http(&self) -> bool {
        self.url.starts_with("http://")
    }

    /// Base URL for API requests (`<url>/v2` unless `override_path`).
    pub(crate) fn api_base(&self) -> String {
        let base = self.url.trim_end_matches('/');
        if self.override_path || base.ends_with("/v2") {
            base.to_string()
        } else {
            format!("{base}/v2")
        }
    }
}

/// `host[:port]` from a URL string (port only when explicit).
pub(crate) fn url_host(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// Default upstream URL for a registry domain.
pub(crate) fn default_upstream(domain: &str) -> String {
    if domain == "docker.io" {
        "https://registry-1.docker.io".to_string()
    } else {
        format!("https://{domain}")
    }
}

const DEFAULT_HOST_CAPS: &[&str] = &["pull", "resolve"];
const DEFAULT_SERVER_CAPS: &[&str] = &["pull", "resolve", "push"];

#[derive(Debug, Deserialize, Default)]
struct RawHost {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<toml::Value>,
    client: Option<toml::Value>,
    override_path: Option<bool>,
    header: Option<toml::Table>,
}

#[derive(Debug, Deserialize, Default)]
struct RawFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<toml::Value>,
    client: Option<toml::Value>,
    override_path: Option<bool>,
    header: Option<toml::Table>,
    /// `[host."…"]` tables in file order (the `toml` crate's
    /// `preserve_order`): mirrors are tried in the order they are written.
    #[serde(default)]
    host: toml::Table,
}

fn validate_domain(domain: &str) -> Result<(), RegistryError> {
    if domain.is_empty()
        || domain == "."
        || domain == ".."
        || domain.starts_with('_')
        || domain.contains('/')
        || domain.contains('\\')
        || domain.contains('\0')
    {
        return Err(RegistryError::Protocol(format!(
            "invalid registry host name {domain:?}"
        )));
    }
    Ok(())
}

/// Load the host list for `domain` from `<config_path>/<domain>/hosts.toml`,
/// falling back to `<config_path>/_default/hosts.toml`, else defaults.
pub(crate) fn load_hosts(
    config_path: &Path,
    domain: &str,
) -> Result<Vec<HostEndpoint>, RegistryError> {
    validate_domain(domain)?;
    for dir in [config_path.join(domain), config_path.join("_default")] {
        let file = dir.join("hosts.toml");
        match std::fs::read_to_string(&file) {
            Ok(text) => return parse_hosts_toml(&text, &file, &dir, domain),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(e) => {
                return Err(RegistryError::Protocol(format!(
                    "reading {}: {e}",
                    file.display()
                )))
            }
        }
    }
    Ok(vec![default_server(domain)])
}

fn default_server(domain: &str) -> HostEndpoint {
    HostEndpoint {
        url: default_upstream(domain),
        capabilities: DEFAULT_SERVER_CAPS.iter().map(|s| s.to_string()).collect(),
        skip_verify: false,
        ca: vec![],
        client: vec![],
        override_path: false,
        headers: vec![],
    }
}

/// Parse one `hosts.toml`. `file` is used for error messages, `dir` to
/// resolve relative `ca`/`client` paths.
pub(crate) fn parse_hosts_toml(
    text: &str,
    file: &Path,
    dir: &Path,
    domain: &str,
) -> Result<Vec<HostEndpoint>, RegistryError> {
    let perr = |msg: String| RegistryError::Protocol(format!("invalid {}: {msg}", file.display()));
    let raw: RawFile =
        toml::from_str(text).map_err(|e| perr(e.to_string().trim_end().to_string()))?;

    let mut hosts: Vec<(String, RawHost)> = Vec::with_capacity(raw.host.len());
    for (k, v) in raw.host {
        let h: RawHost = v.try_into().map_err(|e: toml::de::Error| {
            perr(format!("host {k:?}: {}", e.to_string().trim_end()))
        })?;
        hosts.push((k, h));
    }

    let mut out = Vec::with_capacity(hosts.len() + 1);
    for (key, h) in hosts {
        let url = normalize_url(&key).map_err(|m| perr(format!("host {key:?}: {m}")))?;
        out.push(HostEndpoint {
            url,
            capabilities: h
                .capabilities
                .unwrap_or_else(|| DEFAULT_HOST_CAPS.iter().map(|s| s.to_string()).collect()),
            skip_verify: h.skip_verify.unwrap_or(false),
            ca: parse_ca(h.ca.as_ref(), dir).map_err(|m| perr(format!("host {key:?}: {m}")))?,
            client: parse_client(h.client.as_ref(), dir)
                .map_err(|m| perr(format!("host {key:?}: {m}")))?,
            override_path: h.override_path.unwrap_or(false),
            headers: parse_headers(h.header.as_ref())
                .map_err(|m| perr(format!("host {key:?}: {m}")))?,
        });
    }

    let server_url = match raw.server.as_deref() {
        Some(s) if !s.trim().is_empty() => {
            normalize_url(s).map_err(|m| perr(format!("server: {m}")))?
        }
        _ => default_upstream(domain),
    };
    out.push(HostEndpoint {
        url: server_url,
        capabilities: raw
            .capabilities
            .unwrap_or_else(|| DEFAULT_SERVER_CAPS.iter().map(|s| s.to_string()).collect()),
        skip_verify: raw.skip_verify.unwrap_or(false),
        ca: parse_ca(raw.ca.as_ref(), dir).map_err(|m| perr(format!("ca: {m}")))?,
        client: parse_client(raw.client.as_ref(), dir).map_err(|m| perr(format!("client: {m}")))?,
        override_path: raw.override_path.unwrap_or(false),
        headers: parse_headers(raw.header.as_ref()).map_err(|m| perr(format!("header: {m}")))?,
    });
    Ok(out)
}

fn normalize_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let full = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let u = reqwest::Url::parse(&full).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!("unsupported scheme in {s:?} (want http or https)"));
    }
    if u.host_str().is_none() {
        return Err(format!("missing host in {s:?}"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "credentials are not allowed in host URLs ({})",
            u.host_str().unwrap_or("")
        ));
    }
    Ok(full.trim_end_matches('/').to_string())
}

fn abs_path(p: &str, dir: &Path) -> PathBuf {
    let pb = PathBuf::from(p);
    if pb.is_absolute() {
        pb
    } else {
        dir.join(pb)
    }
}

fn parse_ca(v: Option<&toml::Value>, dir: &Path) -> Result<Vec<PathBuf>, String> {
    match v {
        None => Ok(vec![]),
        Some(toml::Value::String(s)) => Ok(vec![abs_path(s, dir)]),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                toml::Value::String(s) => Ok(abs_path(s, dir)),
                other => Err(format!(
                    "ca entries must be strings, got {}",
                    other.type_str()
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "ca must be a string or list of strings, got {}",
            other.type_str()
        )),
    }
}

fn pair_from(items: &[toml::Value], dir: &Path) -> Result<(PathBuf, Option<PathBuf>), String> {
    let strs: Vec<&str> = items
        .iter()
        .map(|x| {
            x.as_str()
                .ok_or_else(|| "client entries must be strings".to_string())
        })
        .collect::<Result<_, _>>()?;
    match strs.as_slice() {
        [cert] if !cert.is_empty() => Ok((abs_path(cert, dir), None)),
        [cert, key] if !cert.is_empty() => Ok((
            abs_path(cert, dir),
            if key.is_empty() {
                None
            } else {
                Some(abs_path(key, dir))
            },
        )),
        _ => Err("client pair must be [cert] or [cert, key]".to_string()),
    }
}

fn parse_client(
    v: Option<&toml::Value>,
    dir: &Path,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    match v {
        None => Ok(vec![]),
        Some(toml::Value::String(s)) if s.is_empty() => Ok(vec![]),
        Some(toml::Value::String(s)) => Ok(vec![(abs_path(s, dir), None)]),
        Some(toml::Value::Array(a)) if a.is_empty() => Ok(vec![]),
        Some(toml::Value::Array(a)) => {
            if a.iter().all(|x| x.is_str()) {
                // client = ["cert", "key"] (or ["cert"])
                Ok(vec![pair_from(a, dir)?])
            } else {
                a.iter()
                    .map(|x| match x {
                        toml::Value::Array(p) => pair_from(p, dir),
                        toml::Value::String(s) if !s.is_empty() => Ok((abs_path(s, dir), None)),
                        _ => Err(
                            "client must be a path, a [cert, key] pair or a list of pairs"
                                .to_string(),
                        ),
                    })
                    .collect()
            }
        }
        Some(other) => Err(format!(
            "client must be a path, a [cert, key] pair or a list of pairs, got {}",
            other.type_str()
        )),
    }
}

fn parse_headers(t: Option<&toml::Table>) -> Result<Vec<(String, String)>, String> {
    let mut out = vec![];
    let Some(t) = t else { return Ok(out) };
    for (k, v) in t {
        reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let mut push = |s: &str| -> Result<(), String> {
            reqwest::header::HeaderValue::from_str(s)
                .map_err(|_| format!("invalid value for header {k:?}"))?;
            out.push((k.clone(), s.to_string()));
            Ok(())
        };
        match v {
            toml::Value::String(s) => push(s)?,
            toml::Value::Array(a) => {
                for x in a {
                    push(
                        x.as_str()
                            .ok_or_else(|| format!("header {k:?} values must be strings"))?,
                    )?
                }
            }
            _ => return Err(format!("header {k:?} must be a string or list of strings")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, domain: &str) -> Result<Vec<HostEndpoint>, RegistryError> {
        parse_hosts_toml(
            text,
            Path::new("/etc/certs.d/x/hosts.toml"),
            Path::new("/etc/certs.d/x"),
            domain,
        )
    }

    #[test]
    fn order_preserved_and_defaults() {
        let text = r#"
server = "https://registry.example.com"

[host."https://zzz.mirror:5000"]
  capabilities = ["pull"]

[host."http://127.0.0.1:5000"]
  skip_verify = true

[host."https://aaa.mirror"]
  override_path = true
  [host."https://aaa.mirror".header]
    x-custom = "1"
    x-multi = ["a", "b"]
"#;
        let h = parse(text, "example.com").unwrap();
        let urls: Vec<_> = h.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            vec![
                "https://zzz.mirror:5000",
                "http://127.0.0.1:5000",
                "https://aaa.mirror",
                "https://registry.example.com"
            ]
        );
        assert_eq!(h[0].capabilities, vec!["pull"]);
        assert_eq!(h[1].capabilities, vec!["pull", "resolve"]);
        assert!(h[1].skip_verify);
        assert!(h[1].is_plain_http());
        assert!(h[2].override_path);
        assert_eq!(h[2].api_base(), "https://aaa.mirror");
        assert_eq!(h[1].api_base(), "http://127.0.0.1:5000/v2");
        assert_eq!(
            h[2].headers,
            vec![
                ("x-custom".to_string(), "1".to_string()),
                ("x-multi".to_string(), "a".to_string()),
                ("x-multi".to_string(), "b".to_string())
            ]
        );
        assert_eq!(h[3].capabilities, vec!["pull", "resolve", "push"]);
        assert_eq!(h[0].host(), "zzz.mirror:5000");
    }

    #[test]
    fn implicit_and_inline_host_tables() {
        let text = r#"
unknown_key = 1
[host."https://b.example".header]
  x-a = "1"
[host."https://a.example"]
"#;
        let h = parse(text, "x").unwrap();
        let urls: Vec<_> = h.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            vec!["https://b.example", "https://a.example", "https://x"]
        );
        let text = "host.\"https://z\" = { capabilities = [\"pull\"] }\nhost.\"https://a\" = {}\n";
        let h = parse(text, "x").unwrap();
        let urls: Vec<_> = h.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, vec!["https://z", "https://a", "https://x"]);
        // bare host key without scheme → https
        let h = parse("[host.\"mirror.local:5000\"]\n", "x").unwrap();
        assert_eq!(h[0].url, "https://mirror.local:5000");
    }

    #[test]
    fn server_default() {
        let h = parse("[host.\"https://m\"]\n", "docker.io").unwrap();
        assert_eq!(h.last().unwrap().url, "https://registry-1.docker.io");
        let h = parse("", "quay.io").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].url, "https://quay.io");
        let h = parse("capabilities = [\"pull\"]\n", "localhost:5000").unwrap();
        assert_eq!(h[0].url, "https://localhost:5000");
        assert_eq!(h[0].capabilities, vec!["pull"]);
    }

    #[test]
    fn ca_and_client_forms() {
        let text = r#"
ca = "/etc/ca.pem"
client = "/etc/client.pem"
[host."https://a"]
  ca = ["/a.pem", "rel.pem"]
  client = ["/c.cert", "/c.key"]
[host."https://b"]
  client = [["/c1.cert", "/c1.key"], ["/c2.pem", ""]]
"#;
        let h = parse(text, "x").unwrap();
        assert_eq!(
            h[0].ca,
            vec![
                PathBuf::from("/a.pem"),
                PathBuf::from("/etc/certs.d/x/rel.pem")
            ]
        );
        assert_eq!(
            h[0].client,
            vec![(PathBuf::from("/c.cert"), Some(PathBuf::from("/c.key")))]
        );
        assert_eq!(
            h[1].client,
            vec![
                (PathBuf::from("/c1.cert"), Some(PathBuf::from("/c1.key"))),
                (PathBuf::from("/c2.pem"), None)
            ]
        );
        assert_eq!(h[2].ca, vec![PathBuf::from("/etc/ca.pem")]);
        assert_eq!(h[2].client, vec![(PathBuf::from("/etc/client.pem"), None)]);
        assert!(parse("ca = 5\n", "x").is_err());
        assert!(parse("client = [[\"a\",\"b\",\"c\"]]\n", "x").is_err());
    }

    #[test]
    fn invalid_toml_names_file() {
        let err = parse("server = \n[[[", "x").unwrap_err();
        match err {
            RegistryError::Protocol(m) => {
                assert!(m.contains("/etc/certs.d/x/hosts.toml"), "{m}");
                assert!(m.contains("line"), "{m}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = parse("[host.\"ftp://x\"]\n", "x").unwrap_err();
        assert!(matches!(err, RegistryError::Protocol(_)));
    }

    #[test]
    fn load_with_default_fallback() {
        let dir = tempfile::tempdir().unwrap();
        // no config at all
        let h = load_hosts(dir.path(), "docker.io").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].url, "https://registry-1.docker.io");
        // _default
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://127.0.0.1:1\"]\n",
        )
        .unwrap();
        let h = load_hosts(dir.path(), "ghcr.io").unwrap();
        assert_eq!(
            h.iter().map(|e| e.url.as_str()).collect::<Vec<_>>(),
            vec!["http://127.0.0.1:1", "https://ghcr.io"]
        );
        // specific host dir (host:port) wins
        std::fs::create_dir_all(dir.path().join("localhost:5000")).unwrap();
        std::fs::write(
            dir.path().join("localhost:5000/hosts.toml"),
            "server = \"http://localhost:5000\"\n",
        )
        .unwrap();
        let h = load_hosts(dir.path(), "localhost:5000").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].url, "http://localhost:5000");
        assert!(load_hosts(dir.path(), "../etc").is_err());
    }
}
