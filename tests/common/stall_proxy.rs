//! A TCP proxy in front of a registry that, for `GET .../blobs/<digest>` of one
//! chosen digest, forwards the response headers and the first `after_bytes`
//! body bytes, then stops sending (the connection stays open, nothing more is
//! read from upstream). Everything else is forwarded untouched.
//!
//! The proxy runs on its own tokio runtime thread, so it works from sync and
//! async tests alike. Stalling can be switched off at runtime
//! ([`StallProxy::set_enabled`]); connections already stalled stay stalled.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Shared {
    upstream: String,
    needle: String,
    after_bytes: usize,
    enabled: AtomicBool,
    stalls: AtomicUsize,
    /// Stalled connections are parked here (kept open) until the proxy drops.
    parked: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

pub struct StallProxy {
    /// "127.0.0.1:PORT"
    pub addr: String,
    shared: Arc<Shared>,
    _server: crate::common::loopback::LoopbackServer,
}

impl StallProxy {
    /// Proxy to `upstream` ("127.0.0.1:PORT"), stalling blob GETs of `digest`
    /// after `after_bytes` body bytes.
    pub fn start(upstream: &str, digest: &str, after_bytes: usize) -> StallProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            needle: format!("/blobs/{digest}"),
            after_bytes,
            enabled: AtomicBool::new(true),
            stalls: AtomicUsize::new(0),
            parked: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let server = crate::common::loopback::LoopbackServer::start(move |sock| {
            let sh = sh.clone();
            async move {
                let _ = handle(sock, sh).await;
            }
        });
        StallProxy {
            addr: server.addr(),
            shared,
            _server: server,
        }
    }

    /// How many responses were stalled so far.
    pub fn stalls(&self) -> usize {
        self.shared.stalls.load(Ordering::SeqCst)
    }

    /// Turn stalling on/off for requests that start from now on.
    #[allow(dead_code)] // used by some test binaries only
    pub fn set_enabled(&self, on: bool) {
        self.shared.enabled.store(on, Ordering::SeqCst);
    }
}

async fn handle(client: TcpStream, sh: Arc<Shared>) -> std::io::Result<()> {
    let upstream = TcpStream::connect(&sh.upstream).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    // Set by the request direction before it forwards a request to stall the
    // response of; the response direction takes it when the response starts.
    let stall_next = Arc::new(AtomicBool::new(false));

    let sn = stall_next.clone();
    let sh2 = sh.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        // Request lines can span reads; keep a small tail to search across.
        let mut window: Vec<u8> = Vec::new();
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            window.extend_from_slice(&buf[..n]);
            if sh2.enabled.load(Ordering::SeqCst) {
                let text = String::from_utf8_lossy(&window);
                for line in text.split("\r\n") {
                    if line.starts_with("GET ") && line.contains(&sh2.needle) {
                        sn.store(true, Ordering::SeqCst);
                    }
                }
            }
            if window.len() > 4096 {
                let cut = window.len() - 1024;
                window.drain(..cut);
            }
            // Only complete request heads matter; drop what was matched.
            if let Some(p) = window.windows(4).rposition(|w| w == b"\r\n\r\n") {
                window.drain(..p + 4);
            }
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = uw.shutdown().await;
    });

    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match ur.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stall_next.swap(false, Ordering::SeqCst) {
            // This read starts the response to stall: forward the head and
            // `after_bytes` of body, then hold the connection.
            let mut pending = buf[..n].to_vec();
            let mut head_end = None;
            loop {
                if head_end.is_none() {
                    head_end = pending
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| p + 4);
                }
                if let Some(h) = head_end {
                    if pending.len() >= h + sh.after_bytes {
                        break;
                    }
                }
                let n = match ur.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
            }
            let upto = match head_end {
                Some(h) => (h + sh.after_bytes).min(pending.len()),
                None => pending.len(),
            };
            cw.write_all(&pending[..upto]).await?;
            cw.flush().await?;
            sh.stalls.fetch_add(1, Ordering::SeqCst);
            // Park: keep both halves alive, send nothing more.
            let hold = tokio::spawn(async move {
                let _keep = (cw, ur);
                std::future::pending::<()>().await;
            });
            sh.parked.lock().unwrap().push(hold);
            up.abort();
            return Ok(());
        }
        cw.write_all(&buf[..n]).await?;
    }
    let _ = cw.shutdown().await;
    up.abort();
    Ok(())
}
