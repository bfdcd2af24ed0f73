//! HTTP transport: TLS client cache, manual redirects, retries with backoff,
//! and the registry auth (Basic / Bearer token) flow.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::Rng as _;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::auth::{parse_www_authenticate, Challenge, PullAuth};
use super::hosts::HostEndpoint;
use super::RegistryError;

/// TCP + TLS connect to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// One read of a response body (the stall watchdog cancels slower pulls sooner).
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// A token server's answer is small; anything larger is refused.
const MAX_TOKEN_RESPONSE_BYTES: usize = 1 << 20;
/// A manifest, index or token must arrive whole within this time once its
/// response head is in: no trickle of bytes makes a document endless (4 MiB
/// in 30 s is 140 KiB/s; real documents are a few KiB).
pub(crate) const DOCUMENT_DEADLINE: Duration = Duration::from_secs(30);
pub(crate) const MAX_ATTEMPTS: u32 = 4;
pub(crate) const MAX_REDIRECTS: usize = 10;
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
const DEFAULT_TOKEN_TTL: u64 = 60;
const USER_AGENT: &str = concat!("cri-imaged/", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TlsKey {
    skip_verify: bool,
    ca: Vec<PathBuf>,
    client: Option<(PathBuf, Option<PathBuf>)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TokenKey {
    host: String,
    realm: String,
    service: String,
    scope: String,
    cred: String,
}

/// Per-request context for one endpoint.
pub(crate) struct Target<'a> {
    pub domain: &'a str,
    pub repo: &'a str,
    pub ep: &'a HostEndpoint,
    pub ep_host: String,
    /// Credentials that may be sent to this endpoint (already scoped).
    pub creds: Option<PullAuth>,
}

impl Target<'_> {
    fn cred_id(&self) -> String {
        match &self.creds {
            Some(c) => c.fingerprint(),
            None => "anonymous".to_string(),
        }
    }
}

pub(crate) struct Transport {
    clients: Mutex<HashMap<TlsKey, reqwest::Client>>,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
    /// Last auth challenge seen per (endpoint host, credential id), used to
    /// authorize subsequent requests up front.
    challenges: Mutex<HashMap<(String, String), Challenge>>,
    pub(crate) counters: std::sync::Arc<super::RegistryCounters>,
}

enum SendError {
    Net(reqwest::Error),
    Fatal(RegistryError),
}

struct Req<'a> {
    method: Method,
    url: Url,
    form: Option<Vec<(String, String)>>,
    /// Sent on every hop (Accept, Range).
    common: &'a HeaderMap,
    /// Sent only while on the original origin (hosts.toml `header`).
    origin_only: &'a HeaderMap,
    authz: Option<String>,
    /// Authorization may be sent over plain http (endpoint configured as http).
    allow_http_auth: bool,
}

fn origin(u: &Url) -> (String, Option<String>, Option<u16>) {
    (
        u.scheme().to_string(),
        u.host_str().map(|h| h.to_ascii_lowercase()),
        u.port_or_known_default(),
    )
}

/// Full error chain as one string (reqwest's Display hides the cause).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// The TLS failure behind a request error, found by walking its source chain
/// for rustls's error type (io::Error hides its inner error from `source()`,
/// so that is looked into too).
fn tls_failure<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // io::Error's source() skips the error it wraps: look inside.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = tls_failure(inner) {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

fn backoff(attempt: u32) -> Duration {
    let base = BASE_BACKOFF * 2u32.pow(attempt.saturating_sub(1).min(6));
    let jitter = rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 2);
    base + Duration::from_millis(jitter)
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: u64 = v.parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn status_retryable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 500 | 502 | 503 | 504)
}

#[derive(Deserialize)]
pub(super) struct TokenResponse {
    #[serde(default)]
    pub(super) token: String,
    #[serde(default)]
    pub(super) access_token: String,
    #[serde(default)]
    pub(super) expires_in: Option<u64>,
}

impl Transport {
    pub(crate) fn new() -> Transport {
        Transport {
            clients: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
            counters: Default::default(),
        }
    }

    /// One cached reqwest client per distinct TLS setting.
    pub(crate) fn client_for(&self, ep: &HostEndpoint) -> Result<reqwest::Client, RegistryError> {
        let key = TlsKey {
            skip_verify: ep.skip_verify,
            ca: ep.ca.clone(),
            client: ep.client.first().cloned(),
        };
        if let Some(c) = self.clients.lock().get(&key) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT);
        if key.skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        for ca in &key.ca {
            let pem = std::fs::read(ca).map_err(|e| {
                RegistryError::Tls(format!(
                    "reading CA file {} (hosts.toml `ca`): {e}",
                    ca.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Tls(format!(
                    "parsing CA file {} (hosts.toml `ca`): {e}",
                    ca.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(RegistryError::Tls(format!(
                    "CA file {} contains no PEM certificates",
                    ca.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some((cert, key_path)) = &key.client {
            let mut pem = std::fs::read(cert).map_err(|e| {
                RegistryError::Tls(format!(
                    "reading client certificate {} (hosts.toml `client`): {e}",
                    cert.display()
                ))
            })?;
            if let Some(k) = key_path {
                let kb = std::fs::read(k).map_err(|e| {
                    RegistryError::Tls(format!(
                        "reading client key {} (hosts.toml `client`): {e}",
                        k.display()
                    ))
                })?;
                pem.push(b'\n');
                pem.extend_from_slice(&kb);
            }
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                RegistryError::Tls(format!(
                    "loading client certificate {} (hosts.toml `client`): {e}",
                    cert.display()
                ))
            })?;
            b = b.identity(id);
        }
        let client = b.build().map_err(|e| {
            RegistryError::Tls(format!("building HTTP client: {}", error_chain(&e)))
        })?;
        self.clients.lock().insert(key, client.clone());
        Ok(client)
    }

    /// Send one request, following redirects manually. Authorization and
    /// origin-only headers are dropped once the request leaves the original
    /// origin, and Authorization is never sent over plain http unless allowed.
    async fn send_follow(
        &self,
        client: &reqwest::Client,
        req: &Req<'_>,
    ) -> Result<reqwest::Response, SendError> {
        let first = origin(&req.url);
        let mut url = req.url.clone();
        let mut on_origin = true;
        for hop in 0..=MAX_REDIRECTS {
            let mut rb = client
                .request(req.method.clone(), url.clone())
                .headers(req.common.clone());
            if on_origin {
                rb = rb.headers(req.origin_only.clone());
                if let Some(a) = &req.authz {
                    if url.scheme() == "https" || req.allow_http_auth {
                        rb = rb.header(AUTHORIZATION, a.as_str());
                    }
                }
            }
            if let Some(f) = &req.form {
                rb = rb.form(f);
            }
            let resp = rb.send().await.map_err(SendError::Net)?;
            let st = resp.status();
            if st.is_redirection() && req.method == Method::GET {
                if let Some(loc) = resp.headers().get(LOCATION) {
                    if hop == MAX_REDIRECTS {
                        break;
                    }
                    let loc = loc.to_str().map_err(|_| {
                        SendError::Fatal(RegistryError::Protocol(format!(
                            "invalid redirect Location from {}",
                            url.host_str().unwrap_or("")
                        )))
                    })?;
                    let next = url.join(loc).map_err(|e| {
                        SendError::Fatal(RegistryError::Protocol(format!(
                            "invalid redirect Location from {}: {e}",
                            url.host_str().unwrap_or("")
                        )))
                    })?;
                    if next.scheme() != "http" && next.scheme() != "https" {
                        return Err(SendError::Fatal(RegistryError::Protocol(format!(
                            "redirect to unsupported scheme {}",
                            next.scheme()
                        ))));
                    }
                    if origin(&next) != first {
                        on_origin = false;
                    }
                    tracing::debug!(from = %url.host_str().unwrap_or(""), to = %next.host_str().unwrap_or(""), "following redirect");
                    url = next;
                    continue;
                }
            }
            return Ok(resp);
        }
        Err(SendError::Fatal(RegistryError::Protocol(format!(
            "too many redirects (more than {MAX_REDIRECTS}) fetching {}",
            req.url.path()
        ))))
    }

    /// `send_follow` with retries on 429/5xx and connection errors.
    async fn send_retry(
        &self,
        client: &reqwest::Client,
        req: &Req<'_>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = req.url.host_str().unwrap_or("").to_string();
        let hostport = match req.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let delay;
            match self.send_follow(client, req).await {
                Ok(resp) if status_retryable(resp.status()) => {
                    last = format!("HTTP {}", resp.status());
                    delay = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                }
                Ok(resp) => return Ok(resp),
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Net(e)) => {
                    // Certificate problems and a server refusing our handshake are
                    // configuration errors, final; anything else TLS says (e.g. a
                    // plain-http server answering) is a network error like others.
                    if let Some(tls) = tls_failure(&e).filter(|t| {
                        matches!(
                            t,
                            rustls::Error::InvalidCertificate(_)
                                | rustls::Error::NoCertificatesPresented
                                | rustls::Error::AlertReceived(_)
                        )
                    }) {
                        let chain = error_chain(&e);
                        let msg = if matches!(tls, rustls::Error::AlertReceived(_)) {
                            format!(
                                "TLS handshake with {hostport} rejected by the server: {chain}; if the registry requires a client certificate set `client` in hosts.toml (and `ca` / `skip_verify` for its server certificate)"
                            )
                        } else {
                            format!(
                                "TLS certificate verification failed for {hostport}: {chain}; configure the registry CA with `ca` (or `skip_verify = true`) in hosts.toml"
                            )
                        };
                        return Err(RegistryError::Tls(msg));
                    }
                    last = error_chain(&e);
                    delay = backoff(attempt);
                }
            }
            if attempt < MAX_ATTEMPTS {
                self.counters
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(host = %hostport, attempt, error = %last, delay_ms = delay.as_millis() as u64, "{what}: retrying");
                tokio::time::sleep(delay).await;
            }
        }
        Err(RegistryError::Unavailable(format!(
            "{hostport}: {last} (after {MAX_ATTEMPTS} attempts)"
        )))
    }

    fn unauthorized(t: &Target<'_>) -> RegistryError {
        if t.creds.is_some() {
            RegistryError::Unauthorized(format!(
                "pulling {}/{}: 401 Unauthorized: check the credentials (host {})",
                t.domain, t.repo, t.ep_host
            ))
        } else {
            RegistryError::Unauthorized(format!(
                "pulling {}/{}: 401 Unauthorized: the registry requires authentication and no credentials apply to host {}",
                t.domain, t.repo, t.ep_host
            ))
        }
    }

    /// Fetch (or reuse) a bearer token for `scope`.
    async fn token(
        &self,
        client: &reqwest::Client,
        t: &Target<'_>,
        ch: &Challenge,
        scope: &str,
    ) -> Result<(String, TokenKey), RegistryError> {
        let realm = ch.params.get("realm").ok_or_else(|| {
            RegistryError::Protocol(format!("{}: bearer challenge without realm", t.ep_host))
        })?;
        let service = ch.params.get("service").cloned().unwrap_or_default();
        let key = TokenKey {
            host: t.ep_host.clone(),
            realm: realm.clone(),
            service: service.clone(),
            scope: scope.to_string(),
            cred: t.cred_id(),
        };
        {
            let mut toks = self.tokens.lock();
            let now = Instant::now();
            if let Some((tok, exp)) = toks.get(&key) {
                if *exp > now {
                    return Ok((tok.clone(), key));
                }
            }
            toks.retain(|_, (_, exp)| *exp > now);
        }
        let mut url = Url::parse(realm).map_err(|e| {
            RegistryError::Protocol(format!("{}: invalid token realm: {e}", t.ep_host))
        })?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(RegistryError::Protocol(format!(
                "{}: unsupported token realm scheme",
                t.ep_host
            )));
        }
        // Credentials go to an http realm only when the endpoint itself was
        // explicitly configured as plain http.
        let allow_http_auth = t.ep.is_plain_http();
        let creds = t
            .creds
            .as_ref()
            .filter(|_| url.scheme() == "https" || allow_http_auth);
        let empty = HeaderMap::new();
        let mut common = HeaderMap::new();
        common.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
        let req = match creds {
            Some(c) if !c.identity_token.is_empty() => {
                let mut form = vec![
                    ("grant_type".to_string(), "refresh_token".to_string()),
                    ("refresh_token".to_string(), c.identity_token.clone()),
                    ("service".to_string(), service.clone()),
                    ("client_id".to_string(), "cri-imaged".to_string()),
                ];
                form.push(("scope".to_string(), scopes.join(" ")));
                Req {
                    method: Method::POST,
                    url,
                    form: Some(form),
                    common: &common,
                    origin_only: &empty,
                    authz: None,
                    allow_http_auth,
                }
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if !service.is_empty() {
                        q.append_pair("service", &service);
                    }
                    for s in &scopes {
                        q.append_pair("scope", s);
                    }
                }
                let authz = creds.filter(|c| c.has_basic()).map(|c| c.basic_header());
                Req {
                    method: Method::GET,
                    url,
                    form: None,
                    common: &common,
                    origin_only: &empty,
                    authz,
                    allow_http_auth,
                }
            }
        };
        let realm_host = match (req.url.host_str().unwrap_or(""), req.url.port()) {
            (h, Some(p)) => format!("{h}:{p}"),
            (h, None) => h.to_string(),
        };
        tracing::debug!(host = %t.ep_host, realm = %realm_host, scope = %scope, "requesting registry token");
        let resp = self
            .send_retry(client, &req, "token request")
            .await
            .map_err(|e| match e {
                RegistryError::Unavailable(m) => {
                    RegistryError::Unavailable(format!("token server {m}"))
                }
                other => other,
            })?;
        let st = resp.status();
        if st == StatusCode::UNAUTHORIZED
            || st == StatusCode::FORBIDDEN
            || st == StatusCode::BAD_REQUEST && creds.is_some()
        {
            return Err(Self::unauthorized(t));
        }
        if !st.is_success() {
            return Err(RegistryError::Protocol(format!(
                "token server {realm_host} returned {st}"
            )));
        }
        let body = read_limited(resp, MAX_TOKEN_RESPONSE_BYTES, DOCUMENT_DEADLINE)
            .await
            .map_err(|e| token_body_error(&realm_host, e))?;
        let tr: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Protocol(format!(
                "token server {realm_host}: invalid JSON response: {e}"
            ))
        })?;
        let tok = if !tr.token.is_empty() {
            tr.token
        } else {
            tr.access_token
        };
        if tok.is_empty() {
            return Err(RegistryError::Protocol(format!(
                "token server {realm_host}: response has no token"
            )));
        }
        let ttl = tr
            .expires_in
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_TOKEN_TTL);
        self.tokens.lock().insert(
            key.clone(),
            (tok.clone(), Instant::now() + Duration::from_secs(ttl)),
        );
        Ok((tok, key))
    }

    /// Authorization to send up front, from a challenge seen earlier.
    async fn preauthorize(
        &self,
        client: &reqwest::Client,
        t: &Target<'_>,
        scope: &str,
    ) -> Result<(Option<String>, Option<TokenKey>), RegistryError> {
        if let Some(c) = &t.creds {
            if !c.registry_token.is_empty() {
                return Ok((Some(format!("Bearer {}", c.registry_token)), None));
            }
        }
        let ch = self
            .challenges
            .lock()
            .get(&(t.ep_host.clone(), t.cred_id()))
            .cloned();
        match ch {
            Some(ch) if ch.scheme == "bearer" => {
                let (tok, key) = self.token(client, t, &ch, scope).await?;
                Ok((Some(format!("Bearer {tok}")), Some(key)))
            }
            Some(ch) if ch.scheme == "basic" => Ok((
                t.creds
                    .as_ref()
                    .filter(|c| c.has_basic())
                    .map(|c| c.basic_header()),
                None,
            )),
            _ => Ok((None, None)),
        }
    }

    /// Authenticated GET against one endpoint (retries, redirects, auth).
    /// Returns the final response for any status except 401 (→ Unauthorized)
    /// and retryable statuses that persisted (→ Unavailable).
    pub(crate) async fn get(
        &self,
        t: &Target<'_>,
        url: Url,
        common: HeaderMap,
    ) -> Result<reqwest::Response, RegistryError> {
        let client = self.client_for(t.ep)?;
        let mut origin_only = HeaderMap::new();
        for (k, v) in &t.ep.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                origin_only.append(k, v);
            }
        }
        let scope = format!("repository:{}:pull", t.repo);
        let (mut authz, mut token_key) = self.preauthorize(&client, t, &scope).await?;
        let allow_http_auth = t.ep.is_plain_http();
        let mut challenged = false;
        loop {
            let req = Req {
                method: Method::GET,
                url: url.clone(),
                form: None,
                common: &common,
                origin_only: &origin_only,
                authz: authz.clone(),
                allow_http_auth,
            };
            let resp = self.send_retry(&client, &req, "registry request").await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                // A token obtained for the challenge's scope was accepted:
                // remember it under this repository's pull scope too, so the
                // next request can be authorized up front.
                if let Some(k) = token_key.filter(|k| k.scope != scope) {
                    let mut toks = self.tokens.lock();
                    if let Some(v) = toks.get(&k).cloned() {
                        toks.insert(
                            TokenKey {
                                scope: scope.clone(),
                                ..k
                            },
                            v,
                        );
                    }
                }
                return Ok(resp);
            }
            if let Some(k) = token_key.take() {
                self.tokens.lock().remove(&k);
            }
            if challenged {
                return Err(Self::unauthorized(t));
            }
            challenged = true;
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_www_authenticate)
                .collect();
            if let Some(c) = &t.creds {
                if !c.registry_token.is_empty() {
                    // Already sent the registry token; it was rejected.
                    return Err(Self::unauthorized(t));
                }
            }
            let cache_key = (t.ep_host.clone(), t.cred_id());
            {
                let mut chs = self.challenges.lock();
                if chs.len() > 4096 {
                    chs.clear();
                }
            }
            if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
                self.challenges.lock().insert(cache_key, b.clone());
                let sc = b
                    .params
                    .get("scope")
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .unwrap_or_else(|| scope.clone());
                let (tok, key) = self.token(&client, t, b, &sc).await?;
                authz = Some(format!("Bearer {tok}"));
                token_key = Some(key);
                continue;
            }
            if let Some(b) = challenges.iter().find(|c| c.scheme == "basic") {
                self.challenges.lock().insert(cache_key, b.clone());
                match t.creds.as_ref().filter(|c| c.has_basic()) {
                    Some(c) => {
                        authz = Some(c.basic_header());
                        continue;
                    }
                    None => return Err(Self::unauthorized(t)),
                }
            }
            return Err(Self::unauthorized(t));
        }
    }
}

/// A token response that could not be read, for the node operator.
fn token_body_error(realm_host: &str, e: BodyError) -> RegistryError {
    match e {
        BodyError::TooLarge(len) => RegistryError::TooLarge(format!(
            "token server {realm_host} sent a token response{} larger than the {} KiB allowed (tokens are a few KiB): the registry's token service is misbehaving",
            len.map_or(String::new(), |l| format!(" of {l} bytes")),
            MAX_TOKEN_RESPONSE_BYTES >> 10
        )),
        BodyError::TooSlow(got) => RegistryError::Unavailable(format!(
            "token server {realm_host}: the token response did not arrive whole within {} ({got} bytes received)",
            humantime::format_duration(DOCUMENT_DEADLINE)
        )),
        BodyError::Read(m) => RegistryError::Protocol(format!("token server {realm_host}: {m}")),
    }
}

/// Why [`read_limited`] gave up on a body.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Longer than the limit; its length when the response declared one.
    TooLarge(Option<u64>),
    /// Not whole within the deadline; the bytes received by then.
    TooSlow(usize),
    /// The connection failed.
    Read(String),
}

/// Read a whole response body (a manifest, an index, a token), refusing
/// more than `limit` bytes or a body still arriving after `deadline`.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    deadline: Duration,
) -> Result<bytes::Bytes, BodyError> {
    if let Some(len) = resp.content_length().filter(|l| *l > limit as u64) {
        return Err(BodyError::TooLarge(Some(len)));
    }
    let mut buf = bytes::BytesMut::new();
    match tokio::time::timeout(deadline, read_into(&mut resp, &mut buf, limit)).await {
        Ok(r) => r.map(|()| buf.freeze()),
        Err(_) => Err(BodyError::TooSlow(buf.len())),
    }
}

async fn read_into(
    resp: &mut reqwest::Response,
    buf: &mut bytes::BytesMut,
    limit: usize,
) -> Result<(), BodyError> {
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(format!("reading response: {}", error_chain(&e))))?
    {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(None));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(())
}
