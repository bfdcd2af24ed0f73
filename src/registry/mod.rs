//! OCI distribution client: pulls manifests and blobs from registries,
//! honouring containerd-style `certs.d/<host>/hosts.toml` configuration
//! (mirrors, TLS settings, headers), registry auth (Basic and Bearer token
//! flows), retries with backoff and mirror fall-through.
//!
//! Self-contained: depends on no other module of the crate.

mod auth;
mod client;
mod hosts;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256, Sha512};

pub use auth::PullAuth;
pub use hosts::HostEndpoint;

use client::{error_chain, Target, Transport};

/// Maximum accepted manifest size.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const MEDIA_TYPE_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, application/vnd.docker.distribution.manifest.v1+json;q=0.5";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// "manifest unknown: <domain>/<repo>:<ref> not found in <host list>"
    #[error("{0}")]
    NotFound(String),
    /// 401 after an auth attempt.
    #[error("{0}")]
    Unauthorized(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// Connection refused / DNS / TLS handshake / 5xx after retries.
    #[error("RegistryUnavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Schema1(String),
    #[error("{0}")]
    DigestMismatch(String),
    #[error("{0}")]
    BadCredentials(String),
    /// Bad response, too many redirects, bad hosts.toml.
    #[error("{0}")]
    Protocol(String),
    /// Certificate verification failure.
    #[error("{0}")]
    Tls(String),
}

/// A manifest (or index) exactly as served.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub digest: String,
    pub bytes: bytes::Bytes,
    /// Endpoint host (host[:port]) that served it.
    pub host: String,
}

/// A blob body stream starting at `offset`.
pub struct Blob {
    /// Offset of the first streamed byte (0 when the server ignored Range).
    pub offset: u64,
    /// Total blob size when known.
    pub total: Option<u64>,
    pub stream: Pin<Box<dyn Stream<Item = Result<bytes::Bytes, RegistryError>> + Send>>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("offset", &self.offset)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// Registry client set. Cheap to clone.
#[derive(Clone)]
pub struct Registries {
    inner: Arc<Inner>,
}

struct Inner {
    config_path: PathBuf,
    transport: Transport,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registries")
            .field("config_path", &self.inner.config_path)
            .finish_non_exhaustive()
    }
}

/// Is `s` a digest reference ("algo:hex")?
fn is_digest(s: &str) -> bool {
    match s.split_once(':') {
        Some((algo, hex)) => {
            !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
                && !hex.is_empty()
                && hex
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '=' || c == '_' || c == '-')
        }
        None => false,
    }
}

/// Compute `algo:hex` of `data` for sha256 / sha512; None for others.
fn digest_of(algo: &str, data: &[u8]) -> Option<String> {
    match algo {
        "sha256" => Some(format!("sha256:{}", hex::encode(Sha256::digest(data)))),
        "sha512" => Some(format!("sha512:{}", hex::encode(Sha512::digest(data)))),
        _ => None,
    }
}

fn validate_path_component(what: &str, s: &str) -> Result<(), RegistryError> {
    let bad = s.is_empty()
        || s.starts_with('/')
        || s.ends_with('/')
        || s.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "?#%\\".contains(c));
    if bad {
        return Err(RegistryError::Protocol(format!("invalid {what} {s:?}")));
    }
    Ok(())
}

fn validate_reference(reference: &str) -> Result<(), RegistryError> {
    let ok = !reference.is_empty()
        && reference.len() <= 256
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:+=".contains(c));
    if !ok {
        return Err(RegistryError::Protocol(format!(
            "invalid reference {reference:?}"
        )));
    }
    Ok(())
}

/// How one host's attempt ended when it did not produce a result.
fn combine_errors(
    errors: Vec<(String, RegistryError)>,
    not_found: impl FnOnce() -> RegistryError,
) -> RegistryError {
    if errors.is_empty() {
        return not_found();
    }
    if errors
        .iter()
        .all(|(_, e)| matches!(e, RegistryError::Unavailable(_)))
    {
        let parts: Vec<String> = errors
            .into_iter()
            .map(|(_, e)| match e {
                RegistryError::Unavailable(m) => m,
                _ => unreachable!(),
            })
            .collect();
        return RegistryError::Unavailable(parts.join("; "));
    }
    errors
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| !matches!(e, RegistryError::Unavailable(_)))
        .expect("non-empty")
}

fn generic_content_type(ct: &str) -> bool {
    matches!(
        ct,
        "" | "application/json" | "text/plain" | "application/octet-stream" | "binary/octet-stream"
    )
}

fn schema1_error(domain: &str, repo: &str, reference: &str) -> RegistryError {
    RegistryError::Schema1(format!(
        "{domain}/{repo}:{reference} is a Docker schema 1 manifest; Docker schema 1 manifests are not supported, push the image with a current docker/buildah/skopeo"
    ))
}

/// Detect the media type of a manifest body.
fn detect_media_type(content_type: &str, body: &[u8]) -> (String, Option<serde_json::Value>) {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !generic_content_type(&ct) {
        return (ct, json);
    }
    let from_json = json.as_ref().and_then(|j| {
        if let Some(mt) = j
            .get("mediaType")
            .and_then(|m| m.as_str())
            .filter(|m| !m.is_empty())
        {
            return Some(mt.to_string());
        }
        if j.get("schemaVersion").and_then(|v| v.as_i64()) == Some(1) {
            return Some(if j.get("signatures").is_some() {
                MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED.to_string()
            } else {
                MEDIA_TYPE_DOCKER_SCHEMA1.to_string()
            });
        }
        if j.get("manifests").is_some() {
            return Some(MEDIA_TYPE_OCI_INDEX.to_string());
        }
        if j.get("config").is_some() || j.get("layers").is_some() {
            return Some(MEDIA_TYPE_OCI_MANIFEST.to_string());
        }
        None
    });
    (from_json.unwrap_or(ct), json)
}

enum HostOutcome<T> {
    Done(T),
    /// 404: try the next host.
    NotFound,
    /// Failed on this host; record and try the next host.
    Failed(RegistryError),
}

impl Registries {
    pub fn new(config_path: impl Into<PathBuf>) -> Registries {
        Registries {
            inner: Arc::new(Inner {
                config_path: config_path.into(),
                transport: Transport::new(),
            }),
        }
    }

    /// Parsed host list for a domain (re-read from disk on every call).
    pub fn hosts(&self, domain: &str) -> Result<Vec<HostEndpoint>, RegistryError> {
        hosts::load_hosts(&self.inner.config_path, domain)
    }

    fn targets<'a>(
        &self,
        domain: &'a str,
        repo: &'a str,
        hosts: &'a [HostEndpoint],
        cap: &str,
        auth: &PullAuth,
    ) -> Vec<Target<'a>> {
        let n = hosts.len();
        hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.has_capability(cap))
            .map(|(i, ep)| {
                let ep_host = ep.host();
                let allowed =
                    !auth.is_empty() && auth::creds_allowed(auth, domain, &ep_host, i + 1 == n);
                Target {
                    domain,
                    repo,
                    ep,
                    ep_host,
                    creds: if allowed { Some(auth.clone()) } else { None },
                }
            })
            .collect()
    }

    /// Fetch a manifest or index by tag or digest.
    pub async fn get_manifest(
        &self,
        domain: &str,
        repo: &str,
        reference: &str,
        auth: &PullAuth,
    ) -> Result<Manifest, RegistryError> {
        validate_path_component("repository", repo)?;
        validate_reference(reference)?;
        let auth = auth.normalized()?;
        let hosts = self.hosts(domain)?;
        let by_digest = is_digest(reference);
        let cap = if by_digest { "pull" } else { "resolve" };
        let targets = self.targets(domain, repo, &hosts, cap, &auth);
        let host_list = targets
            .iter()
            .map(|t| t.ep_host.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if targets.is_empty() {
            return Err(RegistryError::Protocol(format!(
                "no host configured for {domain} has the {cap:?} capability"
            )));
        }
        let mut errors = vec![];
        for t in &targets {
            match self.manifest_from(t, reference, by_digest).await {
                HostOutcome::Done(m) => return Ok(m),
                HostOutcome::NotFound => {
                    tracing::debug!(host = %t.ep_host, %domain, %repo, %reference, "manifest not found on host");
                }
                HostOutcome::Failed(e) => {
                    tracing::warn!(host = %t.ep_host, %domain, %repo, %reference, error = %e, "manifest fetch failed on host");
                    let fatal = matches!(e, RegistryError::TooLarge(_) | RegistryError::Schema1(_));
                    if fatal {
                        return Err(e);
                    }
                    errors.push((t.ep_host.clone(), e));
                }
            }
        }
        Err(combine_errors(errors, || {
            RegistryError::NotFound(format!(
                "manifest unknown: {domain}/{repo}:{reference} not found in {host_list}"
            ))
        }))
    }

    async fn manifest_from(
        &self,
        t: &Target<'_>,
        reference: &str,
        by_digest: bool,
    ) -> HostOutcome<Manifest> {
        let url = match Url::parse(&format!(
            "{}/{}/manifests/{}",
            t.ep.api_base(),
            t.repo,
            reference
        )) {
            Ok(u) => u,
            Err(e) => {
                return HostOutcome::Failed(RegistryError::Protocol(format!(
                    "{}: bad URL: {e}",
                    t.ep_host
                )))
            }
        };
        let mut common = HeaderMap::new();
        common.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = match self.inner.transport.get(t, url, common).await {
            Ok(r) => r,
            Err(e) => return HostOutcome::Failed(e),
        };
        let st = resp.status();
        let (domain, repo) = (t.domain, t.repo);
        match st {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return HostOutcome::NotFound,
            StatusCode::FORBIDDEN => {
                return HostOutcome::Failed(RegistryError::Forbidden(format!(
                    "pulling {domain}/{repo}: 403 Forbidden from {}",
                    t.ep_host
                )))
            }
            other => {
                return HostOutcome::Failed(RegistryError::Protocol(format!(
                    "pulling {domain}/{repo}:{reference}: unexpected status {other} from {}",
                    t.ep_host
                )))
            }
        }
        let too_large = || {
            RegistryError::TooLarge(format!(
                "manifest {domain}/{repo}:{reference} from {} exceeds the {MAX_MANIFEST_BYTES} byte limit",
                t.ep_host
            ))
        };
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST_BYTES as u64)
        {
            return HostOutcome::Failed(too_large());
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let mut resp = resp;
        let mut buf = bytes::BytesMut::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if buf.len() + c.len() > MAX_MANIFEST_BYTES {
                        return HostOutcome::Failed(too_large());
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    return HostOutcome::Failed(RegistryError::Unavailable(format!(
                        "{}: reading manifest: {}",
                        t.ep_host,
                        error_chain(&e)
                    )))
                }
            }
        }
        let bytes = buf.freeze();

        // Digest verification.
        let digest = if by_digest {
            let algo = reference.split(':').next().unwrap_or("");
            match digest_of(algo, &bytes) {
                Some(d) if d == reference => d,
                Some(d) => {
                    return HostOutcome::Failed(RegistryError::DigestMismatch(format!(
                        "manifest {domain}/{repo}@{reference} from {}: content digest is {d}",
                        t.ep_host
                    )))
                }
                None => {
                    return HostOutcome::Failed(RegistryError::Protocol(format!(
                        "unsupported digest algorithm in {reference}"
                    )))
                }
            }
        } else if let Some(h) = header_digest {
            let algo = h.split(':').next().unwrap_or("");
            match digest_of(algo, &bytes) {
                Some(d) if d == h => d,
                Some(d) => {
                    return HostOutcome::Failed(RegistryError::DigestMismatch(format!(
                        "manifest {domain}/{repo}:{reference} from {}: Docker-Content-Digest {h} does not match content digest {d}",
                        t.ep_host
                    )))
                }
                // Unknown algorithm in the header: fall back to our own digest.
                None => digest_of("sha256", &bytes).expect("sha256"),
            }
        } else {
            digest_of("sha256", &bytes).expect("sha256")
        };

        let (media_type, json) = detect_media_type(&content_type, &bytes);
        let schema1 = media_type == MEDIA_TYPE_DOCKER_SCHEMA1
            || media_type == MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED
            || json
                .as_ref()
                .and_then(|j| j.get("schemaVersion"))
                .and_then(|v| v.as_i64())
                == Some(1);
        if schema1 {
            return HostOutcome::Failed(schema1_error(domain, repo, reference));
        }
        tracing::debug!(host = %t.ep_host, %domain, %repo, %reference, %digest, %media_type, size = bytes.len(), "fetched manifest");
        HostOutcome::Done(Manifest {
            media_type,
            digest,
            bytes,
            host: t.ep_host.clone(),
        })
    }

    /// Stream a blob, from `offset` when > 0 (see [`Blob::offset`]).
    pub async fn get_blob(
        &self,
        domain: &str,
        repo: &str,
        digest: &str,
        offset: u64,
        auth: &PullAuth,
    ) -> Result<Blob, RegistryError> {
        validate_path_component("repository", repo)?;
        if !is_digest(digest) {
            return Err(RegistryError::Protocol(format!(
                "invalid blob digest {digest:?}"
            )));
        }
        let auth = auth.normalized()?;
        let hosts = self.hosts(domain)?;
        let targets = self.targets(domain, repo, &hosts, "pull", &auth);
        if targets.is_empty() {
            return Err(RegistryError::Protocol(format!(
                "no host configured for {domain} has the \"pull\" capability"
            )));
        }
        let host_list = targets
            .iter()
            .map(|t| t.ep_host.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut errors = vec![];
        for t in &targets {
            match self.blob_from(t, digest, offset).await {
                HostOutcome::Done(b) => return Ok(b),
                HostOutcome::NotFound => {
                    tracing::debug!(host = %t.ep_host, %domain, %repo, %digest, "blob not found on host");
                }
                HostOutcome::Failed(e) => {
                    tracing::warn!(host = %t.ep_host, %domain, %repo, %digest, error = %e, "blob fetch failed on host");
                    errors.push((t.ep_host.clone(), e));
                }
            }
        }
        Err(combine_errors(errors, || {
            RegistryError::NotFound(format!(
                "blob unknown: {domain}/{repo}@{digest} not found in {host_list}"
            ))
        }))
    }

    async fn blob_from(&self, t: &Target<'_>, digest: &str, offset: u64) -> HostOutcome<Blob> {
        let url = match Url::parse(&format!("{}/{}/blobs/{}", t.ep.api_base(), t.repo, digest)) {
            Ok(u) => u,
            Err(e) => {
                return HostOutcome::Failed(RegistryError::Protocol(format!(
                    "{}: bad URL: {e}",
                    t.ep_host
                )))
            }
        };
        let mut common = HeaderMap::new();
        common.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if offset > 0 {
            common.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).expect("valid header"),
            );
        }
        let resp = match self.inner.transport.get(t, url, common).await {
            Ok(r) => r,
            Err(e) => return HostOutcome::Failed(e),
        };
        let (domain, repo) = (t.domain, t.repo);
        let st = resp.status();
        let (start, total) = match st {
            StatusCode::OK => (0, resp.content_length()),
            StatusCode::PARTIAL_CONTENT => {
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .map(parse_content_range);
                match cr {
                    Some(Some((s, tot))) => (s, tot),
                    Some(None) => {
                        return HostOutcome::Failed(RegistryError::Protocol(format!(
                            "{}: invalid Content-Range for blob {digest}",
                            t.ep_host
                        )))
                    }
                    None => (offset, resp.content_length().map(|l| l + offset)),
                }
            }
            StatusCode::NOT_FOUND => return HostOutcome::NotFound,
            StatusCode::FORBIDDEN => {
                return HostOutcome::Failed(RegistryError::Forbidden(format!(
                    "pulling {domain}/{repo}: 403 Forbidden from {} for blob {digest}",
                    t.ep_host
                )))
            }
            other => {
                return HostOutcome::Failed(RegistryError::Protocol(format!(
                    "pulling {domain}/{repo}@{digest}: unexpected status {other} from {}",
                    t.ep_host
                )))
            }
        };
        if offset > 0 && start != 0 && start != offset {
            return HostOutcome::Failed(RegistryError::Protocol(format!(
                "{}: requested blob range from {offset} but got {start}",
                t.ep_host
            )));
        }
        let host = t.ep_host.clone();
        let d = digest.to_string();
        let stream = resp.bytes_stream().map(move |r| {
            r.map_err(|e| {
                RegistryError::Unavailable(format!("{host}: reading blob {d}: {}", error_chain(&e)))
            })
        });
        HostOutcome::Done(Blob {
            offset: start,
            total,
            stream: Box::pin(stream),
        })
    }
}

/// Parse `bytes <start>-<end>/<total|*>` → (start, total).
fn parse_content_range(s: &str) -> Option<(u64, Option<u64>)> {
    let rest = s.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, None)));
        assert_eq!(parse_content_range("bytes x-99/100"), None);
    }

    #[test]
    fn digest_refs() {
        assert!(is_digest("sha256:abcd"));
        assert!(!is_digest("latest"));
        assert!(!is_digest("v1.0"));
        assert_eq!(
            digest_of("sha256", b"").unwrap(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn media_type_detection() {
        let (mt, _) = detect_media_type(
            "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
            b"{}",
        );
        assert_eq!(mt, MEDIA_TYPE_OCI_MANIFEST);
        let (mt, _) = detect_media_type(
            "application/json",
            br#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json"}"#,
        );
        assert_eq!(mt, MEDIA_TYPE_DOCKER_LIST);
        let (mt, _) = detect_media_type("text/plain", br#"{"schemaVersion":1,"signatures":[]}"#);
        assert_eq!(mt, MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED);
        let (mt, _) = detect_media_type("", br#"{"schemaVersion":2,"manifests":[]}"#);
        assert_eq!(mt, MEDIA_TYPE_OCI_INDEX);
    }

    #[test]
    fn error_combination() {
        let e = combine_errors(
            vec![
                ("a".into(), RegistryError::Unavailable("a: refused".into())),
                ("b".into(), RegistryError::Unavailable("b: HTTP 503".into())),
            ],
            || RegistryError::NotFound("nf".into()),
        );
        assert_eq!(
            e.to_string(),
            "RegistryUnavailable: a: refused; b: HTTP 503"
        );
        let e = combine_errors(
            vec![
                ("a".into(), RegistryError::Unavailable("a".into())),
                ("b".into(), RegistryError::Forbidden("b".into())),
            ],
            || RegistryError::NotFound("nf".into()),
        );
        assert!(matches!(e, RegistryError::Forbidden(_)));
        assert!(matches!(
            combine_errors(vec![], || RegistryError::NotFound("x".into())),
            RegistryError::NotFound(_)
        ));
    }

    #[test]
    fn input_validation() {
        assert!(validate_path_component("repository", "library/busybox").is_ok());
        assert!(validate_path_component("repository", "../x").is_err());
        assert!(validate_path_component("repository", "a//b").is_err());
        assert!(validate_reference("latest").is_ok());
        assert!(validate_reference("sha256:abc").is_ok());
        assert!(validate_reference("a/b").is_err());
    }
}
