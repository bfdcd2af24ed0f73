//! A private `docker-registry` (distribution 2.8) per test: plain http by
//! default, with htpasswd basic auth and/or TLS (a private CA made with
//! openssl, optionally requiring client certificates) on request.
use crate::{free_port, sha256_digest, tail_file, wait_for, Pusher};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Registry {
    /// "127.0.0.1:PORT"
    pub addr: String,
    pub port: u16,
    pub dir: PathBuf,
    /// Process stdout+stderr: debug log + access log lines.
    pub log: PathBuf,
    /// (user, password) when started with auth.
    pub auth: Option<(String, String)>,
    /// The certificates when serving TLS.
    pub pki: Option<Pki>,
    child: Option<Child>,
    config: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Options for [`Registry::start_with`]. `Default` = plain http, no auth,
/// storage in the registry's temp dir.
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// htpasswd (bcrypt) basic auth (user, password).
    pub auth: Option<(String, String)>,
    /// Serve https with a certificate from a private CA ([`Registry::pki`]).
    pub tls: bool,
    /// With `tls`: refuse clients without a certificate signed by the CA.
    pub require_client_cert: bool,
    /// Storage root directory (e.g. another registry's `dir/data`, to serve
    /// the same content); default `<dir>/data`.
    pub storage: Option<PathBuf>,
}

/// A private CA (`ca.pem`), a server certificate for 127.0.0.1 and localhost
/// (`server.pem`/`server.key`) and a client certificate (`client.pem`/
/// `client.key`), all EC P-256, in `dir`.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Make the CA and both certificates with `openssl` in `dir`.
    pub fn generate(dir: &Path) -> Pki {
        let sh = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(dir.join("leaf.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
        std::fs::write(dir.join("client.ext"), "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n").unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rig test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        sh(&ca);
        // A leaf signed by the CA (webpki refuses a CA certificate used as
        // the server's own).
        for (name, ext) in [("server", "leaf.ext"), ("client", "client.ext")] {
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subj = format!("/CN={name}");
            let mut req = vec!["req"];
            req.extend_from_slice(&ec);
            req.extend_from_slice(&[
                "-keyout",
                key.as_str(),
                "-out",
                csr.as_str(),
                "-subj",
                subj.as_str(),
            ]);
            sh(&req);
            sh(&[
                "x509",
                "-req",
                "-in",
                csr.as_str(),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                pem.as_str(),
                "-days",
                "2",
                "-extfile",
                ext,
            ]);
        }
        Pki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(RegistryOpts::default())
    }

    /// htpasswd (bcrypt) basic auth; unauthenticated requests get 401 with a Basic challenge.
    pub fn start_with_auth(user: &str, pass: &str) -> Registry {
        Self::start_with(RegistryOpts {
            auth: Some((user.to_string(), pass.to_string())),
            ..Default::default()
        })
    }

    /// https with a private CA; see [`RegistryOpts`].
    pub fn start_with(opts: RegistryOpts) -> Registry {
        let RegistryOpts {
            auth,
            tls,
            require_client_cert,
            storage,
        } = opts;
        let tmp = tempfile::Builder::new()
            .prefix("reg-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let storage = storage.unwrap_or_else(|| dir.join("data"));
        let pki = tls.then(|| {
            let d = dir.join("pki");
            std::fs::create_dir_all(&d).unwrap();
            Pki::generate(&d)
        });
        let tls_cfg = match &pki {
            Some(p) => {
                let mut t = format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    p.server_cert.display(),
                    p.server_key.display()
                );
                if require_client_cert {
                    t.push_str(&format!("    clientcas:\n      - {}\n", p.ca.display()));
                }
                t
            }
            None => String::new(),
        };
        let auth_cfg = if let Some((u, p)) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: rig-realm\n    path: {}\n",
                dir.join("htpasswd").display()
            )
        } else {
            String::new()
        };
        let log = dir.join("registry.log");
        let config = dir.join("config.yml");
        let mut reg = Registry {
            addr: String::new(),
            port: 0,
            dir: dir.clone(),
            log,
            auth,
            pki,
            child: None,
            config: config.clone(),
            _tmp: tmp,
        };
        // free_port() is racy: retry a few times if the registry can't bind.
        for attempt in 0..5 {
            let port = free_port();
            let cfg = format!(
                "version: 0.1\nlog:\n  level: debug\n  accesslog:\n    disabled: false\n  fields:\n    service: registry\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  redirect:\n    disable: true\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: rig-secret\n{tls_cfg}{auth_cfg}",
                data = storage.display(),
            );
            std::fs::write(&config, cfg).unwrap();
            reg.port = port;
            reg.addr = format!("127.0.0.1:{port}");
            reg.spawn();
            if reg.try_wait_ready(Duration::from_secs(15)) {
                return reg;
            }
            reg.kill();
            if attempt == 4 {
                panic!(
                    "docker-registry did not start; log:\n{}",
                    tail_file(&reg.log, 30)
                );
            }
        }
        unreachable!()
    }

    fn spawn(&mut self) {
        let logf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .process_group(0)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop the registry (e.g. to simulate it going away). Storage is kept.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Start it again on the same port with the same storage.
    pub fn start_again(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn try_wait_ready(&mut self, t: Duration) -> bool {
        let addr = self.addr.clone();
        let tls = self.pki.is_some();
        let child = self.child.as_mut().unwrap();
        wait_for(
            || {
                if let Ok(Some(_)) = child.try_wait() {
                    return true; // exited: fail fast
                }
                if tls {
                    return TcpStream::connect(&addr).is_ok();
                }
                matches!(http_status(&addr, "GET", "/v2/"), Some(200) | Some(401))
            },
            t,
        ) && matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// Poll GET /v2/ until 200 or 401 (15 s timeout).
    pub fn wait_ready(&mut self) {
        if !self.try_wait_ready(Duration::from_secs(15)) {
            panic!("registry not ready; log:\n{}", tail_file(&self.log, 30));
        }
    }

    /// "127.0.0.1:PORT/<repo>:<tag>"
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{}:{}", self.addr, repo, tag)
    }

    /// The CA that signed the server certificate (panics unless TLS).
    pub fn ca(&self) -> &Path {
        &self.pki.as_ref().expect("registry started without TLS").ca
    }

    /// "127.0.0.1:PORT" (same as [`Registry::addr`]).
    pub fn host(&self) -> String {
        self.addr.clone()
    }

    /// A [`Pusher`] for this registry, with its credentials if any.
    pub fn pusher(&self) -> Pusher {
        let p = Pusher::new(&self.addr);
        match &self.auth {
            Some((u, pw)) => p.with_auth(u, pw),
            None => p,
        }
    }

    /// Upload `data` as a blob of `repo`; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        self.pusher()
            .push_blob(repo, &digest, data)
            .await
            .expect("push blob");
        digest
    }

    /// Push a tiny fixed image (config + one 5000-byte layer, OCI manifest) under
    /// `tag`; returns (manifest bytes, manifest digest, layer bytes, layer digest).
    pub async fn push_sample_image(
        &self,
        repo: &str,
        tag: &str,
    ) -> (Vec<u8>, String, Vec<u8>, String) {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let cd = self.push_blob(repo, &config).await;
        let ld = self.push_blob(repo, &layer).await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ld}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        )
        .into_bytes();
        self.pusher()
            .put_manifest(repo, tag, &manifest, crate::image::OCI_MANIFEST)
            .await
            .expect("put manifest");
        let md = sha256_digest(&manifest);
        (manifest, md, layer, ld)
    }

    /// Access-log request lines: (method, path, status).
    pub fn access_log(&self) -> Vec<(String, String, u16)> {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.lines()
            .filter_map(|l| {
                // 127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 157 "" "ua"
                if l.starts_with("time=") {
                    return None;
                }
                let q1 = l.find('"')?;
                let rest = &l[q1 + 1..];
                let q2 = rest.find('"')?;
                let req = &rest[..q2];
                let mut parts = req.split(' ');
                let method = parts.next()?.to_string();
                let path = parts.next()?.to_string();
                let status: u16 = rest[q2 + 1..].split_whitespace().next()?.parse().ok()?;
                Some((method, path, status))
            })
            .collect()
    }

    /// Number of successful (200/206/307) GETs of `/v2/<any repo>/blobs/<digest>`.
    /// Note: the access log line is written when the response completes.
    pub fn blob_get_count(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.access_log()
            .iter()
            .filter(|(m, p, s)| {
                m == "GET"
                    && p.split('?').next().unwrap_or("").ends_with(&suffix)
                    && matches!(s, 200 | 206 | 307)
            })
            .count()
    }

    /// Number of successful GETs (200) of `/v2/<repo>/manifests/<reference>`, with
    /// `reference` a tag or digest; `None` counts all manifest GETs.
    pub fn manifest_get_count(&self, reference: Option<&str>) -> usize {
        self.access_log()
            .iter()
            .filter(|(m, p, s)| {
                m == "GET"
                    && *s == 200
                    && p.contains("/manifests/")
                    && match reference {
                        Some(r) => p.ends_with(&format!("/manifests/{r}")),
                        None => true,
                    }
            })
            .count()
    }

    /// Count access-log lines whose method matches and path contains `needle`.
    pub fn request_count(&self, method: &str, needle: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|(m, p, _)| m == method && p.contains(needle))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal blocking HTTP/1.0 request; returns the status code.
pub fn http_status(addr: &str, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}
