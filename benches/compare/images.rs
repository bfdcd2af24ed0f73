//! The benchmark's images: deterministic, random (incompressible) layers.
use cri_imaged_test_rig::{sha256_digest, BuiltImage, Compression, ImageBuilder, Layer};
use serde_json::json;

pub const MB: usize = 1 << 20;

pub fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        a => a,
    }
}

pub fn build_image(layers: Vec<Layer>, tag: &str) -> BuiltImage {
    let mut b = ImageBuilder::new()
        .platform("linux", platform_arch(), None)
        .env(&format!("BENCH_IMAGE={tag}"));
    for l in layers {
        b = b.layer(l, Compression::Gzip);
    }
    b.build()
}

/// Sizes in [min, max] KiB, spread log-uniformly, deterministic.
pub fn small_sizes(n: usize, min_kib: usize, max_kib: usize) -> Vec<usize> {
    let (lo, hi) = ((min_kib as f64).ln(), (max_kib as f64).ln());
    (0..n)
        .map(|i| {
            let f = if n == 1 {
                1.0
            } else {
                i as f64 / (n - 1) as f64
            };
            // interleave so large and small layers alternate
            let f = if i % 2 == 0 { f } else { 1.0 - f };
            ((lo + f * (hi - lo)).exp() * 1024.0) as usize
        })
        .collect()
}

/// A benchmark image and where it is pushed.
pub struct Img {
    pub name: String,
    pub reference: String,
    pub img: BuiltImage,
}

impl Img {
    pub fn digests(&self) -> Vec<String> {
        let mut v: Vec<String> = self.img.all_blobs().into_iter().map(|b| b.0).collect();
        v.push(self.img.manifest_digest.clone());
        v
    }
    pub fn blob_digests(&self) -> Vec<String> {
        self.img.all_blobs().into_iter().map(|b| b.0).collect()
    }
    pub fn mb(&self) -> f64 {
        self.img.total_size() as f64 / MB as f64
    }
}

/// An OCI layout tar with images `from..to`: one shared tiny layer, a distinct
/// config per image, named `<name>:i<k>` via `io.containerd.image.name`.
pub fn many_images_tar(name: &str, from: usize, to: usize) -> (Vec<u8>, Vec<(String, String)>) {
    let layer = Layer::from_files(&[("bench/hello.txt", b"hello from the bench\n")]);
    let blob = layer.compress(Compression::Gzip);
    let blob_digest = sha256_digest(&blob);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (format!("blobs/sha256/{}", &blob_digest[7..]), blob.clone()),
    ];
    let mut index = Vec::new();
    let mut out = Vec::new();
    for k in from..to {
        let cfg = serde_json::to_vec(&json!({
            "architecture": platform_arch(), "os": "linux",
            "config": {"Env": [format!("BENCH_MANY={k}")], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        }))
        .unwrap();
        let cfg_d = sha256_digest(&cfg);
        let man = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob_digest, "size": blob.len()}],
        }))
        .unwrap();
        let man_d = sha256_digest(&man);
        let full = format!("{name}:i{k}");
        index.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_d, "size": man.len(),
            "platform": {"architecture": platform_arch(), "os": "linux"},
            "annotations": {"io.containerd.image.name": full, "org.opencontainers.image.ref.name": format!("i{k}")},
        }));
        files.push((format!("blobs/sha256/{}", &cfg_d[7..]), cfg));
        files.push((format!("blobs/sha256/{}", &man_d[7..]), man));
        out.push((full, cfg_d));
    }
    files.push((
        "index.json".into(),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": index})).unwrap(),
    ));
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &p, data.as_slice()).unwrap();
    }
    (b.into_inner().unwrap(), out)
}
