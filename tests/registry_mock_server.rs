use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cri_imaged::registry::{PullAuth, Registries, RegistryError};
use cri_imaged_test_rig::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest_body() -> Vec<u8> {
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:aa","size":1},"layers":[]}"#.to_vec()
}

fn cfg_for(domain: &str, text: &str) -> (tempfile::TempDir, Registries) {
    let d = tempfile::tempdir().unwrap();
    write_hosts(d.path(), domain, text);
    let r = Registries::new(d.path());
    (d, r)
}

#[tokio::test]
async fn bearer_token_flow_and_cache() {
    let tok = Mock::start(Arc::new(|req: &SeenRequest| {
        if req.method == "POST" {
            assert!(req.body.contains("grant_type=refresh_token"));
            assert!(req.body.contains("refresh_token=idtok"));
            assert!(req.body.contains("client_id=cri-imaged"));
            return MockResponse::new(200)
                .body(r#"{"access_token":"tok-from-refresh","expires_in":300}"#);
        }
        match req.headers.get("authorization").map(|s| s.as_str()) {
            // user:pass
            Some("Basic dXNlcjpwYXNz") => {
                MockResponse::new(200).body(r#"{"token":"tok-user","expires_in":300}"#)
            }
            Some(_) => MockResponse::new(401),
            None => MockResponse::new(200).body(r#"{"token":"tok-anon"}"#),
        }
    }))
    .await;
    let realm = format!("http://127.0.0.1:{}/token", tok.port);
    let body = manifest_body();
    let reg = Mock::start(Arc::new(move |req: &SeenRequest| {
        let auth = req.headers.get("authorization").cloned().unwrap_or_default();
        let ok = match req.path.as_str() {
            p if p.starts_with("/v2/private/") => auth == "Bearer tok-user" || auth == "Bearer tok-from-refresh",
            _ => auth == "Bearer tok-anon",
        };
        if !ok {
            return MockResponse::new(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="mock registry",scope="repository:x/y:pull,push""#),
            );
        }
        MockResponse::new(200).header("Content-Type", OCI).body(body.clone())
    }))
    .await;
    let h = format!("127.0.0.1:{}", reg.port);
    let (_d, r) = cfg_for(&h, &format!("server = \"http://{h}\"\n"));

    // anonymous token
    let m = r
        .get_manifest(&h, "public/app", "latest", &PullAuth::default())
        .await
        .unwrap();
    assert_eq!(m.media_type, OCI);
    let treqs = tok.requests();
    assert_eq!(treqs.len(), 1);
    assert!(
        treqs[0].path.contains("service=mock+registry"),
        "{}",
        treqs[0].path
    );
    assert!(
        treqs[0]
            .path
            .contains("scope=repository%3Ax%2Fy%3Apull%2Cpush"),
        "{}",
        treqs[0].path
    );
    assert!(!treqs[0].headers.contains_key("authorization"));

    // user/pass token; second call reuses cached token (no new token request, no 401)
    let user = PullAuth {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    r.get_manifest(&h, "private/app", "latest", &user)
        .await
        .unwrap();
    let n_tok = tok.requests().len();
    let n_reg = reg.requests().len();
    r.get_manifest(&h, "private/app", "latest", &user)
        .await
        .unwrap();
    assert_eq!(tok.requests().len(), n_tok);
    assert_eq!(reg.requests().len(), n_reg + 1, "pre-authorized request");

    // identity token → refresh_token POST
    let idt = PullAuth {
        identity_token: "idtok".into(),
        ..Default::default()
    };
    r.get_manifest(&h, "private/app", "latest", &idt)
        .await
        .unwrap();
    assert!(tok.requests().iter().any(|q| q.method == "POST"));

    // wrong password → Unauthorized, secret not in message
    let bad = PullAuth {
        username: "user".into(),
        password: "hunter2".into(),
        ..Default::default()
    };
    let e = r
        .get_manifest(&h, "private/app", "latest", &bad)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized(_)), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("hunter2"));
}

#[tokio::test]
async fn registry_token_sent_directly() {
    let reg = Mock::start(Arc::new(|req: &SeenRequest| {
        if req.headers.get("authorization").map(|s| s.as_str()) == Some("Bearer rt-123") {
            MockResponse::new(200)
                .header("Content-Type", OCI)
                .body(manifest_body())
        } else {
            MockResponse::new(401).header("WWW-Authenticate", "Basic realm=x")
        }
    }))
    .await;
    let h = format!("127.0.0.1:{}", reg.port);
    let (_d, r) = cfg_for(&h, &format!("server = \"http://{h}\"\n"));
    let a = PullAuth {
        registry_token: "rt-123".into(),
        ..Default::default()
    };
    r.get_manifest(&h, "a/b", "latest", &a).await.unwrap();
    assert_eq!(reg.requests().len(), 1);
}

#[tokio::test]
async fn redirects_drop_auth_on_host_change_and_loop_errors() {
    let cdn = Mock::start(Arc::new(|req: &SeenRequest| {
        assert!(
            !req.headers.contains_key("authorization"),
            "auth leaked to CDN"
        );
        assert!(
            !req.headers.contains_key("x-mirror-header"),
            "origin header leaked"
        );
        let mut r = MockResponse::new(206)
            .header("Content-Range", "bytes 3-9/10")
            .body(b"3456789".to_vec());
        if req.headers.get("range").map(|s| s.as_str()) != Some("bytes=3-") {
            r = MockResponse::new(200).body(b"0123456789".to_vec());
        }
        r
    }))
    .await;
    let cdn_port = cdn.port;
    let reg = Mock::start(Arc::new(move |req: &SeenRequest| {
        if req.headers.get("authorization").map(|s| s.as_str()) != Some("Basic dXNlcjpwYXNz") {
            return MockResponse::new(401).header("WWW-Authenticate", r#"Basic realm="r""#);
        }
        assert_eq!(
            req.headers.get("x-mirror-header").map(|s| s.as_str()),
            Some("yes")
        );
        if req.path.contains("/blobs/sha256:loop") {
            return MockResponse::new(302).header("Location", &req.path);
        }
        // redirect to "localhost" (a different host name for the same machine)
        MockResponse::new(307).header(
            "Location",
            &format!("http://localhost:{cdn_port}/data?sig=1"),
        )
    }))
    .await;
    let h = format!("127.0.0.1:{}", reg.port);
    let (_d, r) = cfg_for(
        &h,
        &format!("server = \"http://{h}\"\n[header]\n  x-mirror-header = \"yes\"\n"),
    );
    let user = PullAuth {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    let b = r.get_blob(&h, "a/b", "sha256:abc", 3, &user).await.unwrap();
    assert_eq!(b.offset, 3);
    assert_eq!(b.total, Some(10));
    let e = r
        .get_blob(&h, "a/b", "sha256:loop", 0, &user)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("too many redirects"), "{e}");
}

#[tokio::test]
async fn retries_then_success_and_mirror_404_fallthrough() {
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    let flaky = Mock::start(Arc::new(move |_req: &SeenRequest| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        match n {
            0 => MockResponse::new(503),
            1 => MockResponse::new(429).header("Retry-After", "0"),
            2 => MockResponse::new(502),
            _ => MockResponse::new(200)
                .header("Content-Type", "application/json")
                .body(manifest_body()),
        }
    }))
    .await;
    let h = format!("127.0.0.1:{}", flaky.port);
    let (_d, r) = cfg_for(&h, &format!("server = \"http://{h}\"\n"));
    let m = r
        .get_manifest(&h, "a/b", "t", &PullAuth::default())
        .await
        .unwrap();
    assert_eq!(
        m.media_type, OCI,
        "mediaType from JSON when Content-Type is generic"
    );
    assert_eq!(count.load(Ordering::SeqCst), 4);

    // always 500 → Unavailable after 4 attempts
    let down = Mock::start(Arc::new(|_r: &SeenRequest| MockResponse::new(500))).await;
    let miss = Mock::start(Arc::new(|_r: &SeenRequest| MockResponse::new(404))).await;
    let good = Mock::start(Arc::new(|_r: &SeenRequest| {
        MockResponse::new(200)
            .header("Content-Type", OCI)
            .body(manifest_body())
    }))
    .await;
    let text = format!(
        "server = \"http://127.0.0.1:{}\"\n[host.\"http://127.0.0.1:{}\"]\n[host.\"http://127.0.0.1:{}\"]\n",
        good.port, down.port, miss.port
    );
    let (_d2, r2) = cfg_for("example.test", &text);
    let m = r2
        .get_manifest("example.test", "a/b", "t", &PullAuth::default())
        .await
        .unwrap();
    assert_eq!(m.host, format!("127.0.0.1:{}", good.port));
    assert_eq!(down.requests().len(), 4);
    assert_eq!(miss.requests().len(), 1);

    let text = format!(
        "server = \"http://127.0.0.1:{}\"\n[host.\"http://127.0.0.1:{}\"]\n",
        miss.port, miss.port
    );
    let (_d3, r3) = cfg_for("example.test", &text);
    let e = r3
        .get_manifest("example.test", "a/b", "t", &PullAuth::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound(_)), "{e:?}");
}

#[tokio::test]
async fn creds_not_sent_to_foreign_mirror() {
    let mirror = Mock::start(Arc::new(|req: &SeenRequest| {
        assert!(!req.headers.contains_key("authorization"));
        MockResponse::new(401).header("WWW-Authenticate", "Basic realm=m")
    }))
    .await;
    let up = Mock::start(Arc::new(|req: &SeenRequest| {
        if req.headers.contains_key("authorization") {
            MockResponse::new(200)
                .header("Content-Type", OCI)
                .body(manifest_body())
        } else {
            MockResponse::new(401).header("WWW-Authenticate", "Basic realm=u")
        }
    }))
    .await;
    let text = format!(
        "server = \"http://127.0.0.1:{}\"\n[host.\"http://127.0.0.1:{}\"]\n",
        up.port, mirror.port
    );
    let (_d, r) = cfg_for("reg.test", &text);
    let a = PullAuth {
        username: "u".into(),
        password: "p".into(),
        server_address: "reg.test".into(),
        ..Default::default()
    };
    let m = r.get_manifest("reg.test", "a/b", "t", &a).await.unwrap();
    assert_eq!(m.host, format!("127.0.0.1:{}", up.port));
    assert_eq!(mirror.requests().len(), 1);
}

#[tokio::test]
async fn manifest_checks() {
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let body = manifest_body();
    let good_digest = sha256_digest(&body);
    let gd = good_digest.clone();
    let reg = Mock::start(Arc::new(move |req: &SeenRequest| {
        match req.path.rsplit('/').next().unwrap() {
            "big" => MockResponse::new(200)
                .header("Content-Type", OCI)
                .body(big.clone()),
            "schema1" => MockResponse::new(200)
                .header(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )
                .body(r#"{"schemaVersion":1}"#),
            "schema1json" => MockResponse::new(200)
                .header("Content-Type", "application/json")
                .body(r#"{"schemaVersion":1,"fsLayers":[]}"#),
            "badheader" => MockResponse::new(200)
                .header("Content-Type", OCI)
                .header(
                    "Docker-Content-Digest",
                    "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                )
                .body(manifest_body()),
            "goodheader" => MockResponse::new(200)
                .header("Content-Type", OCI)
                .header("Docker-Content-Digest", &gd)
                .body(manifest_body()),
            _ => MockResponse::new(200)
                .header("Content-Type", OCI)
                .body(b"tampered".to_vec()),
        }
    }))
    .await;
    let h = format!("127.0.0.1:{}", reg.port);
    let (_d, r) = cfg_for(&h, &format!("server = \"http://{h}\"\n"));
    let a = PullAuth::default();
    let e = r.get_manifest(&h, "a/b", "big", &a).await.unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge(_)), "{e:?}");
    for t in ["schema1", "schema1json"] {
        let e = r.get_manifest(&h, "a/b", t, &a).await.unwrap_err();
        assert!(matches!(e, RegistryError::Schema1(_)), "{e:?}");
        assert!(e.to_string().contains("schema 1"), "{e}");
    }
    let e = r
        .get_manifest(&h, "a/b", "badheader", &a)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch(_)), "{e:?}");
    let m = r.get_manifest(&h, "a/b", "goodheader", &a).await.unwrap();
    assert_eq!(m.digest, good_digest);
    let e = r
        .get_manifest(&h, "a/b", &good_digest, &a)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch(_)), "{e:?}");
}
