use cri_imaged::registry::{PullAuth, Registries, RegistryError};
use cri_imaged_test_rig::*;
use futures::StreamExt;

async fn collect(b: cri_imaged::registry::Blob) -> Vec<u8> {
    let mut out = vec![];
    let mut s = b.stream;
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

#[tokio::test]
async fn pull_manifest_and_blob() {
    let reg = Registry::start();
    let (mbytes, mdigest, layer, ldigest) = reg.push_sample_image("test/app", "v1").await;
    let cfg = tempfile::tempdir().unwrap();
    write_hosts(
        cfg.path(),
        &reg.host(),
        &format!("server = \"http://{}\"\n", reg.host()),
    );
    let r = Registries::new(cfg.path());
    let none = PullAuth::default();

    let m = r
        .get_manifest(&reg.host(), "test/app", "v1", &none)
        .await
        .unwrap();
    assert_eq!(&m.bytes[..], &mbytes[..]);
    assert_eq!(m.digest, mdigest);
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m.host, reg.host());

    let m2 = r
        .get_manifest(&reg.host(), "test/app", &mdigest, &none)
        .await
        .unwrap();
    assert_eq!(&m2.bytes[..], &mbytes[..]);
    assert_eq!(m2.digest, mdigest);

    let b = r
        .get_blob(&reg.host(), "test/app", &ldigest, 0, &none)
        .await
        .unwrap();
    assert_eq!(b.offset, 0);
    assert_eq!(b.total, Some(layer.len() as u64));
    assert_eq!(collect(b).await, layer);

    let b = r
        .get_blob(&reg.host(), "test/app", &ldigest, 1234, &none)
        .await
        .unwrap();
    let off = b.offset as usize;
    assert_eq!(off, 1234);
    assert_eq!(b.total, Some(layer.len() as u64));
    assert_eq!(collect(b).await, layer[off..].to_vec());

    let e = r
        .get_manifest(&reg.host(), "test/app", "nope", &none)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound(_)), "{e:?}");
    assert!(e.to_string().contains("manifest unknown"), "{e}");
    let e = r
        .get_blob(
            &reg.host(),
            "test/app",
            &sha256_digest(b"missing"),
            0,
            &none,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound(_)), "{e:?}");

    // Without hosts.toml the default is https: plain-http registry fails.
    let r2 = Registries::new(tempfile::tempdir().unwrap().path());
    let e = r2
        .get_manifest(&reg.host(), "test/app", "v1", &none)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unavailable(_)), "{e:?}");
}

#[tokio::test]
async fn basic_auth_forms() {
    let reg = Registry::start_with_auth("user", "pass");
    let (mbytes, _, layer, ldigest) = reg.push_sample_image("secure/app", "latest").await;
    let cfg = tempfile::tempdir().unwrap();
    write_hosts(
        cfg.path(),
        &reg.host(),
        &format!("server = \"http://{}\"\n", reg.host()),
    );
    let r = Registries::new(cfg.path());
    let h = reg.host();
    let forms = vec![
        PullAuth {
            username: "user".into(),
            password: "pass".into(),
            ..Default::default()
        },
        PullAuth {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        },
        PullAuth {
            auth: "dXNlcjpwYXNz".into(),
            server_address: h.clone(),
            ..Default::default()
        },
        PullAuth {
            username: "user".into(),
            password: "pass".into(),
            server_address: format!("http://{h}"),
            ..Default::default()
        },
    ];
    for a in &forms {
        let m = r
            .get_manifest(&h, "secure/app", "latest", a)
            .await
            .unwrap_or_else(|e| panic!("{a:?}: {e}"));
        assert_eq!(&m.bytes[..], &mbytes[..]);
        let b = r.get_blob(&h, "secure/app", &ldigest, 10, a).await.unwrap();
        assert_eq!(collect(b).await.len() + 10, layer.len());
    }
    let bad = PullAuth {
        username: "user".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let e = r
        .get_manifest(&h, "secure/app", "latest", &bad)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized(_)), "{e:?}");
    assert!(e.to_string().contains("401 Unauthorized"), "{e}");
    assert!(!e.to_string().contains("wrong"));
    let e = r
        .get_manifest(&h, "secure/app", "latest", &PullAuth::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized(_)), "{e:?}");
    // credentials for another registry are not sent
    let other = PullAuth {
        username: "user".into(),
        password: "pass".into(),
        server_address: "other.example".into(),
        ..Default::default()
    };
    let e = r
        .get_manifest(&h, "secure/app", "latest", &other)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized(_)), "{e:?}");
    let e = r
        .get_manifest(
            &h,
            "secure/app",
            "latest",
            &PullAuth {
                auth: "***".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::BadCredentials(_)), "{e:?}");
}

#[tokio::test]
async fn mirror_fallthrough_and_gcr_mapping() {
    let reg = Registry::start();
    let (mbytes, mdigest, layer, ldigest) = reg.push_sample_image("library/busybox", "1.36").await;
    let closed = free_port();
    let cfg = tempfile::tempdir().unwrap();
    write_hosts(
        cfg.path(),
        &reg.host(),
        &format!("server = \"http://{h}\"\n\n[host.\"http://127.0.0.1:{closed}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", h = reg.host()),
    );
    write_hosts(
        cfg.path(),
        "gcr.io",
        &format!("[host.\"http://{}\"]\n", reg.host()),
    );
    let r = Registries::new(cfg.path());
    let none = PullAuth::default();

    let hosts = r.hosts(&reg.host()).unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].url, format!("http://127.0.0.1:{closed}"));

    let m = r
        .get_manifest(&reg.host(), "library/busybox", "1.36", &none)
        .await
        .unwrap();
    assert_eq!(&m.bytes[..], &mbytes[..]);
    assert_eq!(m.host, reg.host());
    let b = r
        .get_blob(&reg.host(), "library/busybox", &ldigest, 0, &none)
        .await
        .unwrap();
    assert_eq!(collect(b).await, layer);

    let m = r
        .get_manifest("gcr.io", "library/busybox", "1.36", &none)
        .await
        .unwrap();
    assert_eq!(m.digest, mdigest);
    assert_eq!(m.host, reg.host());
    let m = r
        .get_manifest("gcr.io", "library/busybox", &mdigest, &none)
        .await
        .unwrap();
    assert_eq!(&m.bytes[..], &mbytes[..]);

    // only a closed mirror + a closed upstream → Unavailable naming both
    let closed2 = free_port();
    write_hosts(
        cfg.path(),
        "quay.io",
        &format!("server = \"http://127.0.0.1:{closed2}\"\n[host.\"http://127.0.0.1:{closed}\"]\n"),
    );
    let e = r
        .get_manifest("quay.io", "a/b", "latest", &none)
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("RegistryUnavailable: "), "{s}");
    assert!(
        s.contains(&closed.to_string()) && s.contains(&closed2.to_string()),
        "{s}"
    );

    // hosts.toml is re-read on change; invalid TOML → Protocol naming the file
    let f = write_hosts(cfg.path(), "gcr.io", "server = [[[\n");
    let e = r
        .get_manifest("gcr.io", "library/busybox", "1.36", &none)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains(&f.display().to_string()), "{e}");
}
