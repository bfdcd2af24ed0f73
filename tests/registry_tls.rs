use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cri_imaged::registry::{PullAuth, Registries, RegistryError};
use cri_imaged_test_rig::*;

fn sh(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki(dir: &Path) {
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(dir.join("client.ext"), "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n").unwrap();
    sh(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    for name in ["server", "client"] {
        sh(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let ext = if name == "server" {
            "leaf.ext"
        } else {
            "client.ext"
        };
        sh(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tls_ca_skip_verify_and_client_cert() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    make_pki(p);
    let port = free_port();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n    clientcas:\n      - {d}/ca.pem\n",
        d = p.display()
    );
    std::fs::write(p.join("config.yml"), cfg).unwrap();
    let _proc = Proc(
        Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(p.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = format!("127.0.0.1:{port}");
    let a = PullAuth::default();

    // default: https with system roots → certificate verification failure
    let r = Registries::new(tempfile::tempdir().unwrap().path());
    let e = r.get_manifest(&h, "a/b", "latest", &a).await.unwrap_err();
    assert!(matches!(e, RegistryError::Tls(_)), "{e:?}");
    assert!(
        e.to_string().contains("`ca`") && e.to_string().contains("skip_verify"),
        "{e}"
    );

    // ca + client pair → reaches the registry (404 for an empty repo)
    let c = tempfile::tempdir().unwrap();
    write_hosts(
        c.path(),
        &h,
        &format!(
            "ca = \"{d}/ca.pem\"\nclient = [\"{d}/client.pem\", \"{d}/client.key\"]\n",
            d = p.display()
        ),
    );
    let r = Registries::new(c.path());
    let e = r.get_manifest(&h, "a/b", "latest", &a).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound(_)), "{e:?}");

    // skip_verify + list-of-pairs client form
    write_hosts(
        c.path(),
        &h,
        &format!(
            "skip_verify = true\nclient = [[\"{d}/client.pem\", \"{d}/client.key\"]]\n",
            d = p.display()
        ),
    );
    let e = r.get_manifest(&h, "a/b", "latest", &a).await.unwrap_err();
    assert!(matches!(e, RegistryError::NotFound(_)), "{e:?}");

    // ca but no client cert → handshake rejected by the server
    write_hosts(
        c.path(),
        &h,
        &format!("ca = \"{d}/ca.pem\"\n", d = p.display()),
    );
    let e = r.get_manifest(&h, "a/b", "latest", &a).await.unwrap_err();
    assert!(matches!(e, RegistryError::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("`client`"), "{e}");
    eprintln!("no client cert: {e}");
}
