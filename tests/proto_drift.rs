//! proto/api.proto must be byte-for-byte the CRI v1 proto that the k8s-cri
//! crate compiles (the API we actually serve). Update both together.

use std::path::PathBuf;
use std::process::Command;

fn k8s_cri_proto() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkgs = meta["packages"].as_array().expect("packages");
    let ours = pkgs
        .iter()
        .find(|p| p["name"] == "cri-imaged")
        .expect("cri-imaged package");
    let req = ours["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "k8s-cri")
        .expect("cri-imaged depends on k8s-cri");
    let _ = req;
    // The resolved k8s-cri package (there is exactly one in the graph).
    let resolved: Vec<_> = pkgs.iter().filter(|p| p["name"] == "k8s-cri").collect();
    assert_eq!(
        resolved.len(),
        1,
        "expected one k8s-cri package in the graph"
    );
    let manifest = PathBuf::from(resolved[0]["manifest_path"].as_str().unwrap());
    manifest.parent().unwrap().join("proto").join("v1.proto")
}

#[test]
fn api_proto_is_the_compiled_cri_v1_proto() {
    let theirs_path = k8s_cri_proto();
    let theirs = std::fs::read(&theirs_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", theirs_path.display()));
    let ours_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto/api.proto");
    let ours =
        std::fs::read(&ours_path).unwrap_or_else(|e| panic!("read {}: {e}", ours_path.display()));
    assert!(
        ours == theirs,
        "proto/api.proto differs from {} (the proto k8s-cri compiles); copy it over: cp {} proto/api.proto",
        theirs_path.display(),
        theirs_path.display()
    );
    // Sanity: it is the v1 ImageService we serve.
    let text = String::from_utf8(ours).unwrap();
    assert!(text.contains("package runtime.v1;"));
    for rpc in [
        "ListImages",
        "ImageStatus",
        "PullImage",
        "RemoveImage",
        "ImageFsInfo",
    ] {
        assert!(text.contains(&format!("rpc {rpc}(")), "{rpc} missing");
    }
}
