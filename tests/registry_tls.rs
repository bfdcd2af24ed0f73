use cri_imaged::registry::{PullAuth, Registries, RegistryError};
use cri_imaged_test_rig::*;

#[tokio::test]
async fn tls_ca_skip_verify_and_client_cert() {
    let reg = Registry::start_with(RegistryOpts {
        tls: true,
        require_client_cert: true,
        ..Default::default()
    });
    let p = &reg.pki.as_ref().unwrap().dir;
    let h = reg.host();
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
