//! The CLI: `serve --check` validates the configuration and names the bad key;
//! `config` prints the effective configuration as YAML; flags override the file.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cri-imaged"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run cri-imaged")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn check_refuses_bad_configs_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (yaml, key)) in [
        (
            "listen: /tmp/x.sock\nlisten_adress: /tmp/y.sock\n",
            "listen_adress",
        ),
        ("pull_progress_timeout: soon\n", "pull_progress_timeout"),
        (
            "imagefs_sample_interval: 5 parsecs\n",
            "imagefs_sample_interval",
        ),
        ("socket_mode: \"0999\"\n", "socket_mode"),
        ("socket_mode: rw\n", "socket_mode"),
        ("metrics_address: nowhere\n", "metrics_address"),
        ("platforms: [\"linux/\"]\n", "platforms"),
    ]
    .iter()
    .enumerate()
    {
        let f = write(dir.path(), &format!("bad{i}.yaml"), yaml);
        let o = run(&["serve", "--config", &f, "--check"]);
        assert!(!o.status.success(), "{yaml:?} accepted: {}", text(&o));
        assert!(
            text(&o).contains(key),
            "{yaml:?}: message does not name {key}: {}",
            text(&o)
        );
    }
}

#[test]
fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "good.yaml",
        "listen: /tmp/cri-imaged-test.sock\nsocket_mode: \"0600\"\npull_progress_timeout: 90s\nimagefs_sample_interval: 2s\nplatforms: [linux/arm/v7]\nmetrics_address: \"127.0.0.1:9999\"\n",
    );
    let o = run(&["serve", "--config", &f, "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    // An empty file is all defaults and valid too.
    let e = write(dir.path(), "empty.yaml", "");
    let o = run(&["serve", "--config", &e, "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    // A missing file is an error naming the path.
    let missing = dir.path().join("nope.yaml").display().to_string();
    let o = run(&["serve", "--config", &missing, "--check"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nope.yaml"), "{}", text(&o));
}

#[test]
fn config_prints_yaml_and_flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.yaml",
        "listen: /tmp/from-file.sock\nsnapshotter: native\npull_progress_timeout: 90s\nplatforms: [linux/arm/v7]\nmetrics_address: \"127.0.0.1:9999\"\n",
    );
    // Defaults only.
    let o = run(&["config"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_yaml::Value = serde_yaml::from_slice(&o.stdout).expect("config prints YAML");
    assert_eq!(
        v["listen"].as_str(),
        Some("/run/cri-imaged/cri-imaged.sock")
    );
    assert_eq!(v["socket_mode"].as_str(), Some("0660"));
    assert_eq!(v["containerd_namespace"].as_str(), Some("k8s.io"));

    // The file.
    let o = run(&["config", "--config", &f]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_yaml::Value = serde_yaml::from_slice(&o.stdout).unwrap();
    assert_eq!(v["listen"].as_str(), Some("/tmp/from-file.sock"));
    assert_eq!(v["snapshotter"].as_str(), Some("native"));
    assert_eq!(v["metrics_address"].as_str(), Some("127.0.0.1:9999"));
    assert_eq!(v["platforms"][0].as_str(), Some("linux/arm/v7"));

    // Flags win over the file.
    let o = run(&[
        "config",
        "--config",
        &f,
        "--listen",
        "/tmp/from-flag.sock",
        "--snapshotter",
        "overlayfs",
        "--metrics-address",
        "",
        "--pull-progress-timeout",
        "0s",
        "--platform",
        "linux/arm64",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_yaml::Value = serde_yaml::from_slice(&o.stdout).unwrap();
    assert_eq!(v["listen"].as_str(), Some("/tmp/from-flag.sock"));
    assert_eq!(v["snapshotter"].as_str(), Some("overlayfs"));
    assert_eq!(v["metrics_address"].as_str(), Some(""));
    assert_eq!(v["platforms"][0].as_str(), Some("linux/arm64"));
    let t = v["pull_progress_timeout"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    assert!(t == "0s" || t == "0ns", "pull_progress_timeout: {t}");

    // The printed YAML is itself a valid config file that round-trips.
    let round = write(
        dir.path(),
        "round.yaml",
        &String::from_utf8_lossy(&o.stdout),
    );
    let o2 = run(&["config", "--config", &round]);
    assert!(o2.status.success(), "{}", text(&o2));
    assert_eq!(o2.stdout, o.stdout);
    let o3 = run(&["serve", "--config", &round, "--check"]);
    assert!(o3.status.success(), "{}", text(&o3));

    // A bad flag value names the key too.
    let o = run(&[
        "serve",
        "--config",
        &f,
        "--pull-progress-timeout",
        "soon",
        "--check",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("pull_progress_timeout"), "{}", text(&o));
}

/// A metrics port that cannot be bound stops the start, naming the address,
/// before the CRI socket exists (the probes would otherwise restart it forever).
#[test]
fn a_busy_metrics_port_is_a_start_up_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cri.sock");
    let out = run(&[
        "serve",
        "--listen",
        sock.to_str().unwrap(),
        "--containerd-address",
        dir.path().join("no-containerd.sock").to_str().unwrap(),
        "--metrics-address",
        &addr,
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("binding metrics_address {addr}")),
        "{}",
        text(&out)
    );
    assert!(!sock.exists(), "the CRI socket was created");
}
