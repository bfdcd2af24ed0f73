//! A fault-injecting HTTP/1.1 proxy in front of a registry (tokio, raw TCP).
//!
//! cri-imaged talks to the proxy as if it were the registry (configure
//! `certs.d/<proxy addr>/hosts.toml` with `server = "http://<proxy addr>"`);
//! the proxy forwards each request to the upstream registry with reqwest
//! (headers incl. `Range` and `Authorization` kept, redirects not followed),
//! buffers the response and sends it back — unless a [`Rule`] matching the
//! request injects a fault instead.
//!
//! A stalling registry (blob GETs of one digest hang after some bytes, as
//! long as the rule stays) is [`Rule::stall_blob`]; [`FaultProxy::stalls`]
//! counts the responses held. The proxy runs on its own runtime thread, so it
//! works from sync and async tests alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to do to a matching response.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status (and an empty JSON body) instead of forwarding.
    /// 429 and 503 carry `Retry-After: 0`.
    Status(u16),
    /// Send the headers (full Content-Length) and this many body bytes, then
    /// reset the connection (SO_LINGER 0 → RST).
    ResetAfter(usize),
    /// Send the headers (full Content-Length) and this many body bytes, then
    /// close the connection cleanly (FIN): a truncated body.
    TruncateAfter(usize),
    /// Send the headers and this many body bytes, then send nothing more
    /// (the connection stays open until the proxy drops).
    StallAfter(usize),
    /// Flip bits in the body (same length) — corrupted bytes.
    Corrupt,
    /// Send the body at about this many bytes per second.
    Trickle(usize),
    /// Answer `307` with `Location` pointing at the same path plus a counter:
    /// an endless redirect loop.
    RedirectLoop,
    /// Answer 200 with this body and content type (e.g. a huge manifest).
    Replace {
        body: Arc<Vec<u8>>,
        content_type: String,
    },
    /// Answer with this status, these headers and this body, without asking
    /// upstream (e.g. a 401 with a huge `WWW-Authenticate`, a 10 MB token).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Arc<Vec<u8>>,
    },
    /// The upstream body plus this many extra bytes (Content-Length counts
    /// them): a blob longer than its descriptor says.
    Extend(usize),
    /// Only the first this-many body bytes, with a matching Content-Length:
    /// a complete-looking response shorter than the descriptor says.
    Cut(usize),
    /// 200 without Content-Length (the body ends when the connection does):
    /// `prefix`, then spaces forever, all at about `rate` bytes per second —
    /// an endless trickle.
    Endless {
        rate: usize,
        prefix: Arc<Vec<u8>>,
        content_type: String,
    },
    /// Answer `307` with `Location: <base><request path>`, e.g.
    /// `http://127.0.0.1:PORT` — a redirect to another host.
    RedirectTo(String),
}

/// A fault applied to requests whose method matches (empty = any) and whose
/// path contains `path_contains`, the first `times` times it matches.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: String,
    pub path_contains: String,
    pub fault: Fault,
    pub times: usize,
}

impl Rule {
    /// Every GET of `/blobs/<digest>` gets its headers and `after_bytes` body
    /// bytes, then nothing more (the connection stays open), until the rule
    /// is removed with [`FaultProxy::clear_rules`]. Connections already
    /// stalled stay stalled.
    pub fn stall_blob(digest: &str, after_bytes: usize) -> Rule {
        Rule::new(
            &format!("/blobs/{digest}"),
            Fault::StallAfter(after_bytes),
            usize::MAX,
        )
    }

    pub fn new(path_contains: &str, fault: Fault, times: usize) -> Rule {
        Rule {
            method: "GET".into(),
            path_contains: path_contains.into(),
            fault,
            times,
        }
    }
}

/// One served request, for assertions.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
    /// Body bytes actually written to the client.
    pub body_bytes: usize,
    /// Name of the injected fault, if any.
    pub fault: Option<String>,
}

struct RuleState {
    rule: Rule,
    used: usize,
}

struct Shared {
    upstream: String,
    rules: Mutex<Vec<RuleState>>,
    log: Mutex<Vec<LogEntry>>,
    faults_injected: AtomicUsize,
    stalls: AtomicUsize,
    client: reqwest::Client,
}

pub struct FaultProxy {
    /// "127.0.0.1:PORT"
    pub addr: String,
    shared: Arc<Shared>,
    _server: crate::loopback::LoopbackServer,
}

impl FaultProxy {
    /// Proxy to `upstream` ("127.0.0.1:PORT", plain http).
    pub fn start(upstream: &str) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            faults_injected: AtomicUsize::new(0),
            stalls: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .unwrap(),
        });
        let sh = shared.clone();
        let server = crate::loopback::LoopbackServer::start(move |sock| {
            let sh = sh.clone();
            async move {
                let _ = serve_conn(sh, sock).await;
            }
        });
        FaultProxy {
            addr: server.addr(),
            shared,
            _server: server,
        }
    }

    /// Add a rule (rules are checked in insertion order; the first one with
    /// uses left applies).
    pub fn add(&self, rule: Rule) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .push(RuleState { rule, used: 0 });
    }

    pub fn clear_rules(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn faults_injected(&self) -> usize {
        self.shared.faults_injected.load(Ordering::SeqCst)
    }

    /// Start a proxy to `upstream` that stalls blob GETs of `digest` after
    /// `after_bytes` body bytes ([`Rule::stall_blob`]).
    pub fn stalling(upstream: &str, digest: &str, after_bytes: usize) -> FaultProxy {
        let p = FaultProxy::start(upstream);
        p.add(Rule::stall_blob(digest, after_bytes));
        p
    }

    /// How many responses were stalled ([`Fault::StallAfter`]) so far.
    pub fn stalls(&self) -> usize {
        self.shared.stalls.load(Ordering::SeqCst)
    }

    /// Requests whose path ends with `/blobs/<digest>`.
    pub fn blob_requests(&self, digest: &str) -> Vec<LogEntry> {
        let suffix = format!("/blobs/{digest}");
        self.log()
            .into_iter()
            .filter(|e| e.path.split('?').next().unwrap_or("").ends_with(&suffix))
            .collect()
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

/// Read one request head (GET/HEAD only carry no body; other bodies are read
/// by Content-Length). Returns None at EOF.
async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(Request, Vec<u8>)>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let first = lines.next().unwrap_or("");
            let mut parts = first.split(' ');
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("/").to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                let mut tmp = [0u8; 8192];
                let n = sock.read(&mut tmp).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body: Vec<u8> = buf.drain(..len).collect();
            return Ok(Some((
                Request {
                    method,
                    path,
                    headers,
                },
                body,
            )));
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn head_bytes(status: u16, headers: &[(String, String)], content_length: usize) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!("Content-Length: {content_length}\r\n\r\n"));
    s.into_bytes()
}

async fn serve_conn(sh: Arc<Shared>, mut sock: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some((req, body)) = read_request(&mut sock, &mut buf).await? {
        let fault = {
            let mut rules = sh.rules.lock().unwrap();
            rules
                .iter_mut()
                .find(|r| {
                    r.used < r.rule.times
                        && (r.rule.method.is_empty()
                            || r.rule.method.eq_ignore_ascii_case(&req.method))
                        && req.path.contains(&r.rule.path_contains)
                })
                .map(|r| {
                    r.used += 1;
                    r.rule.fault.clone()
                })
        };
        if fault.is_some() {
            sh.faults_injected.fetch_add(1, Ordering::SeqCst);
        }
        let mut entry = LogEntry {
            method: req.method.clone(),
            path: req.path.clone(),
            range: header(&req, "range").map(str::to_string),
            authorization: header(&req, "authorization").map(str::to_string),
            status: 0,
            body_bytes: 0,
            fault: fault
                .as_ref()
                .map(|f| format!("{f:?}").chars().take(40).collect()),
        };
        // Faults that answer without asking upstream.
        match &fault {
            Some(Fault::Status(code)) => {
                let mut h = vec![("Content-Type".to_string(), "application/json".to_string())];
                if *code == 429 || *code == 503 {
                    h.push(("Retry-After".into(), "0".into()));
                }
                let b = br#"{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}"#;
                sock.write_all(&head_bytes(*code, &h, b.len())).await?;
                sock.write_all(b).await?;
                entry.status = *code;
                entry.body_bytes = b.len();
                sh.log.lock().unwrap().push(entry);
                continue;
            }
            Some(Fault::RedirectLoop) => {
                let base = req.path.split('?').next().unwrap_or("/");
                let n = rand_u32();
                let h = vec![("Location".to_string(), format!("{base}?loop={n}"))];
                sock.write_all(&head_bytes(307, &h, 0)).await?;
                entry.status = 307;
                sh.log.lock().unwrap().push(entry);
                continue;
            }
            Some(Fault::Respond {
                status,
                headers,
                body,
            }) => {
                sock.write_all(&head_bytes(*status, headers, body.len()))
                    .await?;
                if req.method != "HEAD" {
                    sock.write_all(body).await?;
                    entry.body_bytes = body.len();
                }
                entry.status = *status;
                sh.log.lock().unwrap().push(entry);
                continue;
            }
            Some(Fault::RedirectTo(base)) => {
                let h = vec![("Location".to_string(), format!("{base}{}", req.path))];
                sock.write_all(&head_bytes(307, &h, 0)).await?;
                entry.status = 307;
                sh.log.lock().unwrap().push(entry);
                continue;
            }
            Some(Fault::Endless {
                rate,
                prefix,
                content_type,
            }) => {
                sh.log.lock().unwrap().push(LogEntry {
                    status: 200,
                    ..entry
                });
                return endless(&mut sock, *rate, prefix, content_type).await;
            }
            Some(Fault::Replace { body, content_type }) => {
                let h = vec![
                    ("Content-Type".to_string(), content_type.clone()),
                    ("Docker-Content-Digest".to_string(), sha256(body)),
                ];
                sock.write_all(&head_bytes(200, &h, body.len())).await?;
                if req.method != "HEAD" {
                    sock.write_all(body).await?;
                    entry.body_bytes = body.len();
                }
                entry.status = 200;
                sh.log.lock().unwrap().push(entry);
                continue;
            }
            _ => {}
        }
        // Forward upstream.
        let url = format!("http://{}{}", sh.upstream, req.path);
        let method =
            reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut rb = sh.client.request(method, &url);
        for (k, v) in &req.headers {
            let lk = k.to_ascii_lowercase();
            if matches!(
                lk.as_str(),
                "host" | "connection" | "content-length" | "transfer-encoding" | "accept-encoding"
            ) {
                continue;
            }
            rb = rb.header(k.as_str(), v.as_str());
        }
        if !body.is_empty() {
            rb = rb.body(body);
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(_) => {
                let b = b"upstream unreachable";
                sock.write_all(&head_bytes(502, &[], b.len())).await?;
                sock.write_all(b).await?;
                entry.status = 502;
                sh.log.lock().unwrap().push(entry);
                continue;
            }
        };
        let status = resp.status().as_u16();
        let upstream_cl: usize = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "content-length" | "transfer-encoding" | "connection" | "keep-alive"
                )
            })
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut data: Vec<u8> = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        if req.method == "HEAD" {
            // Keep the upstream Content-Length for HEAD.
            sock.write_all(head_bytes(status, &headers, upstream_cl).as_slice())
                .await?;
            entry.status = status;
            sh.log.lock().unwrap().push(entry);
            continue;
        }
        entry.status = status;
        let ok = status == 200 || status == 206;
        match (&fault, ok) {
            (Some(Fault::Corrupt), true) => {
                for i in (0..data.len()).step_by(97) {
                    data[i] ^= 0x5a;
                }
                sock.write_all(&head_bytes(status, &headers, data.len()))
                    .await?;
                sock.write_all(&data).await?;
                entry.body_bytes = data.len();
            }
            (Some(Fault::ResetAfter(n)), true)
            | (Some(Fault::TruncateAfter(n)), true)
            | (Some(Fault::StallAfter(n)), true) => {
                let n = (*n).min(data.len());
                sock.write_all(&head_bytes(status, &headers, data.len()))
                    .await?;
                sock.write_all(&data[..n]).await?;
                sock.flush().await?;
                entry.body_bytes = n;
                let f = fault.clone().unwrap();
                sh.log.lock().unwrap().push(entry);
                match f {
                    Fault::ResetAfter(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        #[allow(deprecated)]
                        let _ = sock.set_linger(Some(Duration::ZERO));
                        drop(sock);
                    }
                    Fault::TruncateAfter(_) => {
                        let _ = sock.shutdown().await;
                    }
                    _ => {
                        // Stall: keep the socket open, send nothing.
                        sh.stalls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
                return Ok(());
            }
            (Some(Fault::Extend(n)), true) => {
                data.extend(std::iter::repeat_n(0x5a, *n));
                sock.write_all(&head_bytes(status, &headers, data.len()))
                    .await?;
                sock.write_all(&data).await?;
                entry.body_bytes = data.len();
            }
            (Some(Fault::Cut(n)), true) => {
                data.truncate(*n);
                sock.write_all(&head_bytes(status, &headers, data.len()))
                    .await?;
                sock.write_all(&data).await?;
                entry.body_bytes = data.len();
            }
            (Some(Fault::Trickle(rate)), true) => {
                sock.write_all(&head_bytes(status, &headers, data.len()))
                    .await?;
                let chunk = (*rate / 10).max(1);
                for c in data.chunks(chunk) {
                    sock.write_all(c).await?;
                    sock.flush().await?;
                    entry.body_bytes += c.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            _ => {
                sock.write_all(&head_bytes(status, &headers, data.len()))
                    .await?;
                sock.write_all(&data).await?;
                entry.body_bytes = data.len();
            }
        }
        sh.log.lock().unwrap().push(entry);
    }
    Ok(())
}

/// [`Fault::Endless`]: headers without Content-Length, then `prefix` and
/// spaces forever at about `rate` bytes per second, until the client goes.
async fn endless(
    sock: &mut TcpStream,
    rate: usize,
    prefix: &[u8],
    content_type: &str,
) -> std::io::Result<()> {
    let head =
        format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n");
    sock.write_all(head.as_bytes()).await?;
    let chunk = (rate / 10).max(1);
    let pad = vec![b' '; chunk];
    let mut body = prefix.chunks(chunk);
    loop {
        sock.write_all(body.next().unwrap_or(&pad)).await?;
        sock.flush().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

fn rand_u32() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
