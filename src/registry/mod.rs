//! OCI distribution client: pulls manifests and blobs from registries,
//! honouring containerd-style `certs.d/<host>/hosts.toml` configuration
//! (mirrors, TLS settings, headers), registry auth (Basic and Bearer token
//! flows), retries with backoff and mirror fall-through.
//!
//! Depends only on [`crate::manifest`], which owns media types, the document
//! size limit, media-type sniffing and digests.

mod auth;
mod client;
mod hosts;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{StatusCode, Url};

use crate::manifest::{self, MAX_DOCUMENT_BYTES};

pub use auth::PullAuth;
pub use hosts::HostEndpoint;

pub(crate) use client::DOCUMENT_DEADLINE;
use client::{error_chain, read_limited, BodyError, Target, Transport};

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

/// The `WWW-Authenticate` parser, for the fuzz tests (tests/fuzz_inputs.rs):
/// each challenge as (scheme, parameter names and values). The parser reads
/// registry-controlled input, so it must never panic.
#[doc(hidden)]
pub fn fuzz_www_authenticate(header: &str) -> Vec<(String, Vec<(String, String)>)> {
    auth::parse_www_authenticate(header)
        .into_iter()
        .map(|c| (c.scheme, c.params.into_iter().collect()))
        .collect()
}

/// The token server's JSON answer as `token()` reads it, for the fuzz targets
/// (fuzz/): (the token, `expires_in`), `token` winning over `access_token`.
#[doc(hidden)]
pub fn fuzz_token_response(body: &[u8]) -> Result<(String, Option<u64>), String> {
    let tr: client::TokenResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let tok = if !tr.token.is_empty() {
        tr.token
    } else {
        tr.access_token
    };
    Ok((tok, tr.expires_in))
}

/// One `hosts.toml` text for `domain`, for the fuzz targets (fuzz/): the
/// parser `Registries::hosts` runs, without the file system.
#[doc(hidden)]
pub fn fuzz_hosts_toml(text: &str, domain: &str) -> Result<Vec<HostEndpoint>, RegistryError> {
    let dir = std::path::Path::new("/etc/containerd/certs.d").join(domain);
    hosts::parse_hosts_toml(text, &dir.join("hosts.toml"), &dir, domain)
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

/// What the registry client counts for the metrics: retried requests (429,
/// 5xx, broken connections) and fall-throughs from one host to the next
/// (a mirror that failed or lacked the content). Monotonic.
#[derive(Debug, Default)]
pub struct RegistryCounters {
    pub retries: std::sync::atomic::AtomicU64,
    pub host_fallthroughs: std::sync::atomic::AtomicU64,
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

impl Registries {
    /// The counters of this client set (shared with its transport).
    pub fn counters(&self) -> Arc<RegistryCounters> {
        self.inner.transport.counters.clone()
    }
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
    // Not all unavailable: the first error that says more than that.
    let mut errors = errors.into_iter().map(|(_, e)| e);
    let first = errors.next();
    errors
        .find(|e| !matches!(e, RegistryError::Unavailable(_)))
        .into_iter()
        .chain(first)
        .find(|e| !matches!(e, RegistryError::Unavailable(_)))
        .unwrap_or_else(not_found)
}

fn schema1_error(domain: &str, repo: &str, reference: &str) -> RegistryError {
    RegistryError::Schema1(format!(
        "{domain}/{repo}:{reference} is a Docker schema 1 manifest; Docker schema 1 manifests are not supported, push the image with a current docker/buildah/skopeo"
    ))
}

/// One request that [`Registries::first_host`] tries host by host.
trait HostRequest {
    type Output;
    fn send_to_host(
        &self,
        registries: &Registries,
        t: &Target<'_>,
    ) -> impl std::future::Future<Output = HostOutcome<Self::Output>> + Send;
}

struct ManifestRequest<'r> {
    reference: &'r str,
    by_digest: bool,
}

impl HostRequest for ManifestRequest<'_> {
    type Output = Manifest;
    async fn send_to_host(&self, registries: &Registries, t: &Target<'_>) -> HostOutcome<Manifest> {
        registries
            .manifest_from(t, self.reference, self.by_digest)
            .await
    }
}

struct BlobRequest<'r> {
    digest: &'r str,
    offset: u64,
}

impl HostRequest for BlobRequest<'_> {
    type Output = Blob;
    async fn send_to_host(&self, registries: &Registries, t: &Target<'_>) -> HostOutcome<Blob> {
        registries.blob_from(t, self.digest, self.offset).await
    }
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
        let by_digest = is_digest(reference);
        let cap = if by_digest { "pull" } else { "resolve" };
        let what = ("manifest", format!("{domain}/{repo}:{reference}"));
        let req = ManifestRequest {
            reference,
            by_digest,
        };
        self.first_host(domain, repo, cap, &auth, &what, &req).await
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
        common.insert(ACCEPT, HeaderValue::from_static(manifest::MANIFEST_ACCEPT));
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
        let bytes = match read_limited(resp, MAX_DOCUMENT_BYTES as usize, DOCUMENT_DEADLINE).await {
            Ok(b) => b,
            Err(e) => return HostOutcome::Failed(manifest_body_error(t, reference, e)),
        };

        // Digest verification.
        let digest = if by_digest {
            let algo = reference.split(':').next().unwrap_or("");
            match manifest::digest_of(algo, &bytes) {
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
            match manifest::digest_of(algo, &bytes) {
                Some(d) if d == h => d,
                Some(d) => {
                    return HostOutcome::Failed(RegistryError::DigestMismatch(format!(
                        "manifest {domain}/{repo}:{reference} from {}: Docker-Content-Digest {h} does not match content digest {d}",
                        t.ep_host
                    )))
                }
                // Unknown algorithm in the header: fall back to our own digest.
                None => manifest::sha256_digest(&bytes),
            }
        } else {
            manifest::sha256_digest(&bytes)
        };

        let media_type = manifest::sniff_media_type(&content_type, &bytes);
        if manifest::is_schema1(&media_type) {
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
        let what = ("blob", format!("{domain}/{repo}@{digest}"));
        let req = BlobRequest { digest, offset };
        self.first_host(domain, repo, "pull", &auth, &what, &req)
            .await
    }

    /// Count moving on from `t` to a next host (none after the last one).
    fn fell_through(&self, t: &Target<'_>, targets: &[Target<'_>]) {
        if targets.last().is_some_and(|last| !std::ptr::eq(last, t)) {
            self.inner
                .transport
                .counters
                .host_fallthroughs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Try `attempt` on each host of `domain` that has `cap`, in order (mirrors
    /// first, then the upstream): the first result wins; a 404 moves on; an
    /// error moves on too unless it is one no other host can fix (too large,
    /// schema 1). No result: the most telling error, or not found.
    async fn first_host<R: HostRequest>(
        &self,
        domain: &str,
        repo: &str,
        cap: &str,
        auth: &PullAuth,
        (kind, name): &(&str, String),
        req: &R,
    ) -> Result<R::Output, RegistryError> {
        let hosts = self.hosts(domain)?;
        let targets = self.targets(domain, repo, &hosts, cap, auth);
        if targets.is_empty() {
            return Err(RegistryError::Protocol(format!(
                "no host configured for {domain} has the {cap:?} capability"
            )));
        }
        let mut errors = vec![];
        for t in &targets {
            match req.send_to_host(self, t).await {
                HostOutcome::Done(v) => return Ok(v),
                HostOutcome::NotFound => {
                    tracing::debug!(host = %t.ep_host, %name, "{kind} not found on host");
                    self.fell_through(t, &targets);
                }
                HostOutcome::Failed(e) => {
                    tracing::warn!(host = %t.ep_host, %name, error = %e, "{kind} fetch failed on host");
                    if matches!(e, RegistryError::TooLarge(_) | RegistryError::Schema1(_)) {
                        return Err(e);
                    }
                    errors.push((t.ep_host.clone(), e));
                    self.fell_through(t, &targets);
                }
            }
        }
        let host_list = targets
            .iter()
            .map(|t| t.ep_host.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Err(combine_errors(errors, || {
            RegistryError::NotFound(format!("{kind} unknown: {name} not found in {host_list}"))
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
            // Digits and ASCII only: always a valid header value.
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                common.insert(RANGE, v);
            }
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
            // Asked for the rest of a blob the manifest says is longer.
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                return HostOutcome::Failed(RegistryError::DigestMismatch(format!(
                    "blob {domain}/{repo}@{digest} from {} ends before byte {offset}: it is shorter than the manifest declares",
                    t.ep_host
                )))
            }
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

/// A manifest body that could not be read, for the node operator.
fn manifest_body_error(t: &Target<'_>, reference: &str, e: BodyError) -> RegistryError {
    let (domain, repo, host) = (t.domain, t.repo, &t.ep_host);
    match e {
        BodyError::TooLarge(_) => RegistryError::TooLarge(format!(
            "manifest {domain}/{repo}:{reference} from {host} exceeds the {MAX_DOCUMENT_BYTES} byte limit"
        )),
        BodyError::TooSlow(got) => RegistryError::Unavailable(format!(
            "{host}: manifest {domain}/{repo}:{reference} did not arrive whole within {} ({got} bytes received): the registry is too slow or sends an endless body",
            humantime::format_duration(DOCUMENT_DEADLINE)
        )),
        BodyError::Read(m) => RegistryError::Unavailable(format!("{host}: reading manifest: {m}")),
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
