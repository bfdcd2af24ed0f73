//! The CRI socket with clients that are not Rust: grpc-go (the client class of
//! kubelet and crictl, built from Debian's Go packages) and Python grpcio
//! (gRPC C-core). Both put the socket path in the HTTP/2 `:authority`, which
//! unpatched h2 answers with RST_STREAM(PROTOCOL_ERROR) on every call; see
//! third_party/h2/PATCHED.md. The clients live in tests/clients and are built
//! by scripts/build-test-clients.sh (run here once per test binary).

use cri_imaged_test_rig::*;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-Pa55";

fn clients_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new("bash")
                .arg(repo.join("scripts/build-test-clients.sh"))
                .output()
                .expect("run scripts/build-test-clients.sh");
            assert!(
                out.status.success(),
                "scripts/build-test-clients.sh failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            repo.join("target/clients")
        })
        .clone()
}

fn small(seed: u64) -> BuiltImage {
    ImageBuilder::new()
        .user("1002")
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(16 * 1024, seed), Compression::Gzip)
        .build()
}

/// An auth registry with `real/a:v1` and `real/b:v1`, and a daemon on it.
async fn setup() -> (TestEnv, CriImaged) {
    let env = TestEnv::start_with(ContainerdOpts::default(), Some((USER, PASSWORD)));
    env.push("real/a", Some("v1"), &small(71)).await;
    env.push("real/b", Some("v1"), &small(72)).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    (env, d)
}

fn run(cmd: &mut Command, d: &CriImaged) -> String {
    let out = cmd.output().expect("run client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "client failed:\n{text}\n--- cri-imaged log ---\n{}",
        tail_file(&d.log, 40)
    );
    assert!(!d.log_text().contains(PASSWORD), "password in the log");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_go_client_dialing_like_kubelet() {
    let dir = clients_dir();
    let (env, d) = setup().await;
    let endpoint = format!("unix://{}", d.socket.display());
    let out = run(
        Command::new(dir.join("cri-goclient"))
            .arg("-endpoint")
            .arg(&endpoint)
            .arg("-image")
            .arg(env.image_ref("real/a", "v1"))
            .args(["-user", USER, "-pass", PASSWORD, "-timeout", "60s"]),
        &d,
    );
    assert!(out.contains("go client: all checks passed"), "{out}");
    assert!(
        out.contains("ok   ImageFsInfo (connection validation)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_client_all_rpcs() {
    let dir = clients_dir();
    let (env, d) = setup().await;
    let endpoint = format!("unix://{}", d.socket.display());
    let out = run(
        Command::new(dir.join("venv/bin/python"))
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/clients/python/cri_client.py"),
            )
            .arg("--stubs")
            .arg(dir.join("python-stubs"))
            .arg("--endpoint")
            .arg(&endpoint)
            .arg("--image")
            .arg(env.image_ref("real/a", "v1"))
            .arg("--image2")
            .arg(env.image_ref("real/b", "v1"))
            .args(["--user", USER, "--password", PASSWORD]),
        &d,
    );
    assert!(out.contains("python client: all checks passed"), "{out}");
}

/// A hostile layer's error as kubelet's gRPC stack (grpc-go) receives it:
/// the code and the message naming the layer and the limit to raise.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_go_client_sees_a_layer_limit() {
    let dir = clients_dir();
    let env = TestEnv::start();
    let files: Vec<(String, Vec<u8>)> =
        (0..30).map(|i| (format!("f{i}"), vec![b'x'; 10])).collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let img = ImageBuilder::new()
        .layer(Layer::from_files(&refs), Compression::Gzip)
        .build();
    env.push("real/wide", Some("v1"), &img).await;
    let d = cri_imaged!()
        .config(|c| c.limits.layer_max_entries = 20)
        .start(&env.containerd);
    d.wait_synced().await;
    let out = Command::new(dir.join("cri-goclient"))
        .arg("-endpoint")
        .arg(format!("unix://{}", d.socket.display()))
        .arg("-pull")
        .arg(env.image_ref("real/wide", "v1"))
        .output()
        .expect("run the Go client");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("code = ResourceExhausted"), "{text}");
    assert!(
        text.contains(&format!(
            "layer {}: the layer holds more than 20 entries (limits.layer_max_entries)",
            img.blobs[0].0
        )),
        "{text}"
    );
}
