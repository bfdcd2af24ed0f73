//! Malformed CRI requests against a live daemon, and security properties:
//! socket mode, TLS verification, where credentials go and where they never
//! appear (logs, metrics, error messages).
//!
//!   cargo test --test bad_input -- --nocapture

use cri_imaged_test_rig::*;

use bytes::{Buf, BufMut};
use k8s_cri::v1 as cri;
use std::path::Path;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------------------
// raw gRPC: send hand-made protobuf bytes

#[derive(Clone, Default)]
struct RawCodec;
struct RawEnc;
struct RawDec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

impl Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

async fn channel(socket: &Path) -> Channel {
    cri_imaged::health::unix_channel(socket)
        .await
        .expect("connect")
}

async fn raw_call(socket: &Path, method: &str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut g = tonic::client::Grpc::new(channel(socket).await);
    g.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
        "/runtime.v1.ImageService/{method}"
    ))
    .unwrap();
    g.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// Protobuf length-delimited field.
fn field(n: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    varint(&mut v, ((n << 3) | 2) as u64);
    varint(&mut v, data.len() as u64);
    v.extend_from_slice(data);
    v
}

fn varint(v: &mut Vec<u8>, mut x: u64) {
    loop {
        let b = (x & 0x7f) as u8;
        x >>= 7;
        if x == 0 {
            v.push(b);
            return;
        }
        v.push(b | 0x80);
    }
}

async fn assert_alive(d: &CriImaged) {
    let mut c = d.client().await;
    c.list_images(cri::ListImagesRequest { filter: None })
        .await
        .expect("server must stay up");
    c.image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("server must stay up");
}

// ---------------------------------------------------------------------------
// malformed requests

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_invalid_argument() {
    let env = TestEnv::start();
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let mut n = 0;

    // Empty image spec: missing and empty string, for every RPC taking one.
    for s in [None, spec("")] {
        n += assert_invalid_everywhere(&mut c, s).await;
    }

    // A 1 MB reference.
    let huge = format!("{}/{}:v1", env.registry_addr(), "a".repeat(1 << 20));
    let e = pull(&mut c, &huge).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.code());
    assert!(
        e.message().len() < 2048,
        "error message echoes the huge reference ({} bytes)",
        e.message().len()
    );
    let e = c
        .image_status(cri::ImageStatusRequest {
            image: spec(&huge),
            verbose: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = remove(&mut c, &huge).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Huge ListImages filter.
    let e = c
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter { image: spec(&huge) }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "huge filter: {e:?}");
    n += 4;

    // Garbage references.
    for bad in [
        "UPPER/Case:tag",
        "a:b:c:d",
        "x@sha256:zz",
        "::",
        "a/../b",
        "-leading/dash",
        "\u{0}",
        "repo:tag with space",
    ] {
        let e = pull(&mut c, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        n += 1;
    }

    // Invalid UTF-8 in AuthConfig.username, as raw protobuf.
    let image = field(
        1,
        field(1, env.image_ref("x/y", "v1").as_bytes()).as_slice(),
    );
    let auth = field(
        2,
        &[
            field(1, b"us\xff\xfeer").as_slice(),
            field(2, b"pw").as_slice(),
        ]
        .concat(),
    );
    let body = [image.clone(), auth].concat();
    let e = raw_call(&d.socket, "PullImage", body).await.unwrap_err();
    println!(
        "bad input: invalid UTF-8 username -> {:?} {}",
        e.code(),
        e.message()
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Invalid UTF-8 in the image itself, for each RPC.
    let bad_spec = field(1, field(1, b"busy\xffbox").as_slice());
    for m in ["PullImage", "ImageStatus", "RemoveImage"] {
        let e = raw_call(&d.socket, m, bad_spec.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{m}: {e:?}");
    }
    // Truncated / garbage protobuf.
    for garbage in [
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0xff; 16],
        vec![0x0a, 0x05, 0x0a],
    ] {
        let e = raw_call(&d.socket, "PullImage", garbage.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{garbage:?}: {e:?}");
    }
    n += 7;
    // A 16 MiB request: refused (size limit), not a crash.
    let big = field(1, field(1, &vec![b'a'; 16 << 20]).as_slice());
    let e = raw_call(&d.socket, "ImageStatus", big).await.unwrap_err();
    println!("bad input: 16 MiB request -> {:?}", e.code());
    assert!(
        matches!(
            e.code(),
            Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
        ),
        "{e:?}"
    );
    n += 1;

    assert_alive(&d).await;
    println!("bad input: {n} malformed requests rejected, server still up");
}

// ---------------------------------------------------------------------------
// security

#[tokio::test(flavor = "multi_thread")]
async fn socket_mode_is_applied() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::start();
    let d = cri_imaged!()
        .config(|c| c.socket_mode = "0600".into())
        .start(&env.containerd);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_verified_unless_configured() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(Layer::random(16 << 10, 1), Compression::Gzip)
        .build();
    env.push("sec/tls", Some("v1"), &img).await;
    // A second registry serving the same storage over https.
    let tls = Registry::start_with(RegistryOpts {
        tls: true,
        storage: Some(env.registry.dir.join("data")),
        ..Default::default()
    });
    let hosts_dir = env.containerd.certs_d.join(&tls.addr);
    std::fs::create_dir_all(&hosts_dir).unwrap();
    let write = |extra: &str| {
        std::fs::write(
            hosts_dir.join("hosts.toml"),
            format!(
                "server = \"https://{a}\"\n\n[host.\"https://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{extra}",
                a = tls.addr
            ),
        )
        .unwrap();
    };
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = format!("{}/sec/tls:v1", tls.addr);

    // Default: verification on, the self-signed certificate is refused.
    write("");
    let e = pull(&mut c, &r)
        .await
        .expect_err("self-signed registry must be refused by default");
    println!("tls: default -> {:?} {}", e.code(), e.message());
    assert!(
        e.message().to_lowercase().contains("certificate"),
        "{}",
        e.message()
    );
    assert!(status(&mut c, &r).await.is_none());

    // With its CA configured: works.
    write(&format!("  ca = \"{}\"\n", tls.ca().display()));
    assert_eq!(
        pull(&mut c, &r).await.expect("pull with ca"),
        img.config_digest
    );
    remove(&mut c, &r).await.unwrap();

    // skip_verify = true: works.
    write("  skip_verify = true\n");
    assert_eq!(
        pull(&mut c, &r).await.expect("pull with skip_verify"),
        img.config_digest
    );
}

const USER: &str = "sec-user";
const PASS: &str = "Sup3r-S3cret-Pa55word";
const WRONG: &str = "Wr0ng-S3cret-Pa55word";

#[tokio::test(flavor = "multi_thread")]
async fn credentials_stay_where_they_belong() {
    use base64::Engine;
    let env = TestEnv::start_with(ContainerdOpts::default(), Some((USER, PASS)));
    let img = ImageBuilder::new()
        .layer(Layer::random(16 << 10, 2), Compression::Gzip)
        .build();
    env.push("sec/creds", Some("v1"), &img).await;
    // Domain = the upstream proxy; a plain-http mirror (another host) is tried first.
    let upstream = FaultProxy::start(env.registry_addr());
    let mirror = FaultProxy::start(env.registry_addr());
    let dir = env.containerd.certs_d.join(&upstream.addr);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{u}\"\n\n[host.\"http://{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{u}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            u = upstream.addr,
            m = mirror.addr
        ),
    )
    .unwrap();
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = format!("{}/sec/creds:v1", upstream.addr);
    let auth = |p: &str| cri::AuthConfig {
        username: USER.into(),
        password: p.into(),
        ..Default::default()
    };

    // Wrong password: a clean error that does not contain it.
    let e = pull_auth(&mut c, &r, auth(WRONG))
        .await
        .expect_err("wrong password");
    println!("creds: wrong password -> {:?} {}", e.code(), e.message());
    assert!(!e.message().contains(WRONG));

    // Right password: works; the mirror (another host) never saw credentials.
    let id = pull_auth(&mut c, &r, auth(PASS))
        .await
        .expect("pull with credentials");
    assert_eq!(id, img.config_digest);
    assert!(
        mirror.log().iter().all(|e| e.authorization.is_none()),
        "credentials sent to the mirror: {:?}",
        mirror.log()
    );
    assert!(!mirror.log().is_empty(), "the mirror was never tried");
    assert!(
        upstream.log().iter().any(|e| e.authorization.is_some()),
        "upstream never got credentials"
    );

    // server_address for another host: credentials are not sent anywhere.
    remove(&mut c, &r).await.unwrap();
    let before = upstream.log().len();
    let other = cri::AuthConfig {
        server_address: "registry.example.com".into(),
        ..auth(PASS)
    };
    let e = pull_auth(&mut c, &r, other)
        .await
        .expect_err("creds for another server must not be used");
    println!(
        "creds: other server_address -> {:?} {}",
        e.code(),
        e.message()
    );
    assert!(
        upstream.log()[before..]
            .iter()
            .all(|e| e.authorization.is_none()),
        "credentials for another server were sent"
    );

    // Nowhere in the log, the metrics or error messages.
    let b64 = |p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{p}"));
    let (st, metrics) = d.http_get("/metrics").await;
    assert_eq!(st, 200);
    let log = d.log_text();
    for secret in [PASS.to_string(), WRONG.to_string(), b64(PASS), b64(WRONG)] {
        assert!(!log.contains(&secret), "credential in the daemon log");
        assert!(!metrics.contains(&secret), "credential in /metrics");
    }
    println!(
        "creds: no credential in {} log bytes / {} metrics bytes",
        log.len(),
        metrics.len()
    );
}
