//! Deterministic image builder: same inputs -> same bytes -> same digests.
//! Tars have mtime 0, uid/gid 0, sorted entries; gzip has no name/mtime.
use crate::sha256_digest;
use serde_json::{json, Value};
use std::io::Write;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaFamily {
    Oci,
    Docker,
}

/// One tar entry.
#[derive(Clone, Debug)]
pub enum Entry {
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    pub fn file(path: &str, content: &[u8]) -> Entry {
        Entry::File {
            path: path.into(),
            content: content.to_vec(),
            mode: 0o644,
        }
    }
    pub fn exec(path: &str, content: &[u8]) -> Entry {
        Entry::File {
            path: path.into(),
            content: content.to_vec(),
            mode: 0o755,
        }
    }
    pub fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
    /// An overlay/OCI whiteout for `path` (".wh.<name>" file).
    pub fn whiteout(path: &str) -> Entry {
        let (d, n) = match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("", path),
        };
        Entry::file(&format!("{d}.wh.{n}"), b"")
    }
    fn path(&self) -> &str {
        match self {
            Entry::File { path, .. } | Entry::Dir { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// An uncompressed layer tar.
#[derive(Clone, Debug)]
pub struct Layer {
    pub tar: Vec<u8>,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    /// Regular files (mode 0644); parent directories are added automatically.
    pub fn from_files(files: &[(&str, &[u8])]) -> Layer {
        Self::from_entries(files.iter().map(|(p, c)| Entry::file(p, c)).collect())
    }

    /// Arbitrary entries; parent dirs are added, entries sorted by path.
    pub fn from_entries(entries: Vec<Entry>) -> Layer {
        let mut all: std::collections::BTreeMap<String, Entry> = Default::default();
        for e in entries {
            let p = e
                .path()
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string();
            // parent dirs
            let comps: Vec<&str> = p.split('/').collect();
            for i in 1..comps.len() {
                let d = comps[..i].join("/");
                all.entry(d.clone()).or_insert(Entry::dir(&d));
            }
            let e = match e {
                Entry::File { content, mode, .. } => Entry::File {
                    path: p.clone(),
                    content,
                    mode,
                },
                Entry::Dir { mode, .. } => Entry::Dir {
                    path: p.clone(),
                    mode,
                },
                Entry::Symlink { target, .. } => Entry::Symlink {
                    path: p.clone(),
                    target,
                },
            };
            all.insert(p, e);
        }
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        for (p, e) in all {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                Entry::File { content, mode, .. } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(mode);
                    h.set_size(content.len() as u64);
                    b.append_data(&mut h, &p, content.as_slice()).unwrap();
                }
                Entry::Dir { mode, .. } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{p}/"), std::io::empty())
                        .unwrap();
                }
                Entry::Symlink { target, .. } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, &p, &target).unwrap();
                }
            }
        }
        Self::from_tar(b.into_inner().unwrap())
    }

    /// One file `random-<seed>.bin` of `size` incompressible pseudo-random bytes.
    pub fn random(size: usize, seed: u64) -> Layer {
        Self::from_entries(vec![Entry::file(
            &format!("random-{seed}.bin"),
            &random_bytes(size, seed),
        )])
    }

    /// Use raw (uncompressed) tar bytes as-is.
    pub fn from_tar(tar: Vec<u8>) -> Layer {
        let diff_id = sha256_digest(&tar);
        Layer { tar, diff_id }
    }

    /// Compressed blob bytes.
    pub fn compress(&self, c: Compression) -> Vec<u8> {
        compress(&self.tar, c)
    }
}

pub fn compress(data: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

pub fn layer_media_type(fam: MediaFamily, c: Compression) -> &'static str {
    match (fam, c) {
        (_, Compression::Zstd) => OCI_LAYER_ZSTD,
        (MediaFamily::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
        (MediaFamily::Oci, Compression::None) => OCI_LAYER,
        (MediaFamily::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
        (MediaFamily::Docker, Compression::None) => DOCKER_LAYER,
    }
}

/// A built image: config + layer blobs + manifest.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub config_bytes: Vec<u8>,
    pub config_digest: String,
    pub config_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// Layer blobs in manifest order: (digest, compressed bytes, media type).
    /// The config blob is NOT included (see [`all_blobs`](Self::all_blobs)).
    pub blobs: Vec<(String, Vec<u8>, String)>,
    /// Uncompressed layer digests, in order.
    pub diff_ids: Vec<String>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl BuiltImage {
    /// Config + layers as (digest, bytes, media type), config first.
    pub fn all_blobs(&self) -> Vec<(String, Vec<u8>, String)> {
        let mut v = vec![(
            self.config_digest.clone(),
            self.config_bytes.clone(),
            self.config_media_type.clone(),
        )];
        v.extend(self.blobs.iter().cloned());
        v
    }
    pub fn layer_digests(&self) -> Vec<String> {
        self.blobs.iter().map(|b| b.0.clone()).collect()
    }
    /// Sum of compressed layer sizes + config size.
    pub fn total_size(&self) -> u64 {
        self.config_bytes.len() as u64 + self.blobs.iter().map(|b| b.1.len() as u64).sum::<u64>()
    }
    /// Descriptor (mediaType, digest, size) of the manifest.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.manifest_media_type, "digest": self.manifest_digest, "size": self.manifest_bytes.len()})
    }
    /// Platform JSON {os, architecture, variant?}.
    pub fn platform(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
    /// "os/arch[/variant]"
    pub fn platform_string(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.architecture, v),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
    /// OCI chain IDs of the layers (what snapshot keys of committed layers are named by).
    pub fn chain_ids(&self) -> Vec<String> {
        chain_ids(&self.diff_ids)
    }
    /// Chain ID of the top layer (the image's rootfs snapshot).
    pub fn chain_id(&self) -> String {
        self.chain_ids().last().cloned().unwrap_or_default()
    }
    /// Parsed config JSON.
    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config_bytes).unwrap()
    }

    /// The image an OCI image layout holds (a directory with `index.json`
    /// and `blobs/`, as `buildah push … oci:DIR` or skopeo write it): its
    /// first manifest, or the one tagged `tag` (`org.opencontainers.image.ref.name`).
    pub fn from_oci_layout(
        dir: &std::path::Path,
        tag: Option<&str>,
    ) -> std::io::Result<BuiltImage> {
        let blob =
            |digest: &str| std::fs::read(dir.join("blobs").join(digest.replacen(':', "/", 1)));
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let desc = manifests
            .iter()
            .find(|m| {
                tag.is_none_or(|t| m["annotations"]["org.opencontainers.image.ref.name"] == t)
            })
            .ok_or_else(|| bad(format!("{}: no manifest tagged {tag:?}", dir.display())))?;
        let manifest_digest = desc["digest"].as_str().unwrap_or_default().to_string();
        let manifest_bytes = blob(&manifest_digest)?;
        let m: Value = serde_json::from_slice(&manifest_bytes)?;
        let config_digest = m["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let config_bytes = blob(&config_digest)?;
        let config: Value = serde_json::from_slice(&config_bytes)?;
        let mut blobs = Vec::new();
        for l in m["layers"].as_array().cloned().unwrap_or_default() {
            let d = l["digest"].as_str().unwrap_or_default().to_string();
            let bytes = blob(&d)?;
            blobs.push((
                d,
                bytes,
                l["mediaType"].as_str().unwrap_or_default().to_string(),
            ));
        }
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Ok(BuiltImage {
            config_media_type: s(&m["config"]["mediaType"]),
            manifest_media_type: m["mediaType"]
                .as_str()
                .or(desc["mediaType"].as_str())
                .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                .to_string(),
            diff_ids: config["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default(),
            os: s(&config["os"]),
            architecture: s(&config["architecture"]),
            variant: config["variant"].as_str().map(str::to_string),
            config_bytes,
            config_digest,
            manifest_bytes,
            manifest_digest,
            blobs,
        })
    }
}

/// chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[derive(Clone, Debug)]
pub struct ImageBuilder {
    os: String,
    arch: String,
    variant: Option<String>,
    user: Option<String>,
    env: Vec<String>,
    cmd: Vec<String>,
    entrypoint: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    extra_config: Vec<(String, Value)>,
    layers: Vec<(Layer, Compression)>,
    /// Blobs given as they are (index into `layers`, bytes).
    raw_blobs: Vec<(usize, Vec<u8>)>,
    media: MediaFamily,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// linux/amd64, OCI media types, Cmd ["/bin/sh"], PATH env, no user, no layers.
    pub fn new() -> Self {
        ImageBuilder {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
            user: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            entrypoint: None,
            working_dir: None,
            labels: vec![],
            annotations: vec![],
            extra_config: vec![],
            layers: vec![],
            raw_blobs: vec![],
            media: MediaFamily::Oci,
        }
    }
    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> Self {
        self.os = os.into();
        self.arch = arch.into();
        self.variant = variant.map(Into::into);
        self
    }
    pub fn user(mut self, u: &str) -> Self {
        self.user = Some(u.into());
        self
    }
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.into());
        self
    }
    pub fn cmd(mut self, c: &[&str]) -> Self {
        self.cmd = c.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn entrypoint(mut self, c: &[&str]) -> Self {
        self.entrypoint = Some(c.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn working_dir(mut self, d: &str) -> Self {
        self.working_dir = Some(d.into());
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }
    /// Manifest annotation (OCI only; ignored for Docker manifests).
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.push((k.into(), v.into()));
        self
    }
    /// Extra key in the config's "config" object (e.g. "ExposedPorts", "Volumes").
    pub fn config_extra(mut self, k: &str, v: Value) -> Self {
        self.extra_config.push((k.into(), v));
        self
    }
    pub fn layer(mut self, l: Layer, c: Compression) -> Self {
        self.layers.push((l, c));
        self
    }
    /// A layer blob pushed as given (a hostile one: a decompression bomb),
    /// with the diff ID the config claims for it.
    pub fn layer_blob(mut self, diff_id: &str, blob: Vec<u8>, c: Compression) -> Self {
        self.raw_blobs.push((self.layers.len(), blob));
        let l = Layer {
            tar: Vec::new(),
            diff_id: diff_id.to_string(),
        };
        self.layers.push((l, c));
        self
    }
    pub fn media(mut self, m: MediaFamily) -> Self {
        self.media = m;
        self
    }

    pub fn build(self) -> BuiltImage {
        let diff_ids: Vec<String> = self.layers.iter().map(|(l, _)| l.diff_id.clone()).collect();
        let mut cc = serde_json::Map::new();
        if let Some(u) = &self.user {
            cc.insert("User".into(), json!(u));
        }
        cc.insert("Env".into(), json!(self.env));
        if let Some(e) = &self.entrypoint {
            cc.insert("Entrypoint".into(), json!(e));
        }
        cc.insert("Cmd".into(), json!(self.cmd));
        if let Some(w) = &self.working_dir {
            cc.insert("WorkingDir".into(), json!(w));
        }
        if !self.labels.is_empty() {
            let m: serde_json::Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            cc.insert("Labels".into(), Value::Object(m));
        }
        for (k, v) in &self.extra_config {
            cc.insert(k.clone(), v.clone());
        }
        let history: Vec<Value> = (0..self.layers.len())
            .map(|i| json!({"created": "1970-01-01T00:00:00Z", "created_by": format!("rig layer {i}")}))
            .collect();
        let mut config = json!({
            "architecture": self.arch,
            "os": self.os,
            "created": "1970-01-01T00:00:00Z",
            "config": Value::Object(cc),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(v) = &self.variant {
            config["variant"] = json!(v);
        }
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = sha256_digest(&config_bytes);
        let (manifest_mt, config_mt) = match self.media {
            MediaFamily::Oci => (OCI_MANIFEST, OCI_CONFIG),
            MediaFamily::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let blobs: Vec<(String, Vec<u8>, String)> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, (l, c))| {
                let raw = self.raw_blobs.iter().find(|(k, _)| *k == i);
                let b = raw
                    .map(|(_, b)| b.clone())
                    .unwrap_or_else(|| l.compress(*c));
                (
                    sha256_digest(&b),
                    b,
                    layer_media_type(self.media, *c).to_string(),
                )
            })
            .collect();
        let layer_descs: Vec<Value> = blobs
            .iter()
            .map(|(d, b, mt)| json!({"mediaType": mt, "digest": d, "size": b.len()}))
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_mt,
            "config": {"mediaType": config_mt, "digest": config_digest, "size": config_bytes.len()},
            "layers": layer_descs,
        });
        if self.media == MediaFamily::Oci && !self.annotations.is_empty() {
            let m: serde_json::Map<String, Value> = self
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            manifest["annotations"] = Value::Object(m);
        }
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap();
        BuiltImage {
            config_digest,
            config_bytes,
            config_media_type: config_mt.into(),
            manifest_digest: sha256_digest(&manifest_bytes),
            manifest_bytes,
            manifest_media_type: manifest_mt.into(),
            blobs,
            diff_ids,
            os: self.os,
            architecture: self.arch,
            variant: self.variant,
        }
    }
}

/// A built index / manifest list plus the manifests it references.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
    /// Every referenced manifest (incl. attestation manifests), in index order.
    pub manifests: Vec<BuiltImage>,
}

impl BuiltIndex {
    /// The child manifest for a platform string like "linux/arm/v7" (exact match on
    /// os/arch/variant of the child's config; attestations have "unknown/unknown").
    pub fn for_platform(&self, platform: &str) -> Option<&BuiltImage> {
        self.manifests
            .iter()
            .find(|m| m.platform_string() == platform)
    }
    pub fn parsed(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap()
    }
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

enum IndexEntry {
    WithPlatform(BuiltImage, Value),
    NoPlatform(BuiltImage),
    Attestation(BuiltImage, String),
}

pub struct IndexBuilder {
    media: MediaFamily,
    entries: Vec<IndexEntry>,
}

impl IndexBuilder {
    /// Oci -> application/vnd.oci.image.index.v1+json,
    /// Docker -> application/vnd.docker.distribution.manifest.list.v2+json.
    pub fn new(media: MediaFamily) -> Self {
        IndexBuilder {
            media,
            entries: vec![],
        }
    }
    /// Entry with the platform taken from the image (os/architecture/variant).
    pub fn manifest(mut self, img: &BuiltImage) -> Self {
        let p = img.platform();
        self.entries.push(IndexEntry::WithPlatform(img.clone(), p));
        self
    }
    /// Entry with an explicit platform JSON (may disagree with the image's config).
    pub fn manifest_with_platform(mut self, img: &BuiltImage, platform: Value) -> Self {
        self.entries
            .push(IndexEntry::WithPlatform(img.clone(), platform));
        self
    }
    /// Entry without a "platform" field.
    pub fn manifest_without_platform(mut self, img: &BuiltImage) -> Self {
        self.entries.push(IndexEntry::NoPlatform(img.clone()));
        self
    }
    /// A buildx-style attestation manifest (platform unknown/unknown, layer
    /// `application/vnd.in-toto+json`) referring to `img`.
    pub fn attestation_for(mut self, img: &BuiltImage) -> Self {
        let att = attestation_manifest(img);
        self.entries
            .push(IndexEntry::Attestation(att, img.manifest_digest.clone()));
        self
    }

    pub fn build(self) -> BuiltIndex {
        let mt = match self.media {
            MediaFamily::Oci => OCI_INDEX,
            MediaFamily::Docker => DOCKER_LIST,
        };
        let mut manifests = vec![];
        let mut descs = vec![];
        for e in self.entries {
            match e {
                IndexEntry::WithPlatform(img, p) => {
                    let mut d = img.descriptor();
                    d["platform"] = p;
                    descs.push(d);
                    manifests.push(img);
                }
                IndexEntry::NoPlatform(img) => {
                    descs.push(img.descriptor());
                    manifests.push(img);
                }
                IndexEntry::Attestation(img, refd) => {
                    let mut d = img.descriptor();
                    d["platform"] = json!({"architecture": "unknown", "os": "unknown"});
                    d["annotations"] = json!({
                        "vnd.docker.reference.digest": refd,
                        "vnd.docker.reference.type": "attestation-manifest",
                    });
                    descs.push(d);
                    manifests.push(img);
                }
            }
        }
        let idx = json!({"schemaVersion": 2, "mediaType": mt, "manifests": descs});
        let bytes = serde_json::to_vec_pretty(&idx).unwrap();
        BuiltIndex {
            digest: sha256_digest(&bytes),
            bytes,
            media_type: mt.into(),
            manifests,
        }
    }
}

/// OCI manifest with one in-toto layer, config os/arch unknown.
pub fn attestation_manifest(img: &BuiltImage) -> BuiltImage {
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "rig", "digest": {"sha256": img.manifest_digest.trim_start_matches("sha256:")}}],
        "predicate": {},
    }))
    .unwrap();
    let sd = sha256_digest(&statement);
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sd]},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_digest(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": [{
            "mediaType": IN_TOTO, "digest": sd, "size": statement.len(),
            "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}
        }],
    });
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    BuiltImage {
        config_digest,
        config_bytes,
        config_media_type: OCI_CONFIG.into(),
        manifest_digest: sha256_digest(&manifest_bytes),
        manifest_bytes,
        manifest_media_type: OCI_MANIFEST.into(),
        blobs: vec![(sd.clone(), statement, IN_TOTO.into())],
        diff_ids: vec![sd],
        os: "unknown".into(),
        architecture: "unknown".into(),
        variant: None,
    }
}

/// The standard test images. Suggested repos/tags are in [`StandardImages::REPOS`]
/// and used by [`StandardImages::push_all`].
pub struct StandardImages {
    /// User "1002" (3 layers: base etc files, app file, 64 KiB random).
    pub user_1002: BuiltImage,
    /// User "www-data" (uid 33 in the base layer's /etc/passwd).
    pub user_www_data: BuiltImage,
    /// User "1003:1004".
    pub user_1003_1004: BuiltImage,
    /// User "www-data:1004".
    pub user_www_data_1004: BuiltImage,
    /// OCI index: linux/amd64, linux/arm64/v8, linux/arm/v7 (distinct content per
    /// arch) + one attestation manifest (unknown/unknown) for amd64.
    pub multi_arch: BuiltIndex,
    /// OCI index: linux/arm/v6 and linux/arm/v5 only (no amd64 match).
    pub arm_only: BuiltIndex,
}

impl StandardImages {
    pub const REPOS: [(&'static str, &'static str); 6] = [
        ("std/user-1002", "v1"),
        ("std/user-www-data", "v1"),
        ("std/user-1003-1004", "v1"),
        ("std/user-www-data-1004", "v1"),
        ("std/multi-arch", "v1"),
        ("std/arm-only", "v1"),
    ];

    /// Push all six to `addr` under [`REPOS`](Self::REPOS).
    pub async fn push_all(&self, p: &crate::Pusher) {
        let r = Self::REPOS;
        p.push_image(r[0].0, Some(r[0].1), &self.user_1002)
            .await
            .unwrap();
        p.push_image(r[1].0, Some(r[1].1), &self.user_www_data)
            .await
            .unwrap();
        p.push_image(r[2].0, Some(r[2].1), &self.user_1003_1004)
            .await
            .unwrap();
        p.push_image(r[3].0, Some(r[3].1), &self.user_www_data_1004)
            .await
            .unwrap();
        p.push_index(r[4].0, Some(r[4].1), &self.multi_arch)
            .await
            .unwrap();
        p.push_index(r[5].0, Some(r[5].1), &self.arm_only)
            .await
            .unwrap();
    }
}

/// Shared base layer: /etc/passwd + /etc/group with root, www-data(33), u1002..u1004.
pub fn base_layer() -> Layer {
    Layer::from_files(&[
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nu1002:x:1002:1002::/home/u1002:/bin/sh\nu1003:x:1003:1004::/home/u1003:/bin/sh\n",
        ),
        ("etc/group", b"root:x:0:\nwww-data:x:33:\nu1002:x:1002:\ng1004:x:1004:\n"),
    ])
}

fn small_image(user: &str, seed: u64) -> BuiltImage {
    ImageBuilder::new()
        .user(user)
        .env(&format!("RIG_USER={user}"))
        .layer(base_layer(), Compression::Gzip)
        .layer(
            Layer::from_files(&[("app/user.txt", user.as_bytes())]),
            Compression::Gzip,
        )
        .layer(Layer::random(64 * 1024, seed), Compression::Gzip)
        .build()
}

fn arch_image(os: &str, arch: &str, variant: Option<&str>, seed: u64) -> BuiltImage {
    let tag = match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    ImageBuilder::new()
        .platform(os, arch, variant)
        .layer(base_layer(), Compression::Gzip)
        .layer(
            Layer::from_files(&[("etc/arch", tag.as_bytes())]),
            Compression::Gzip,
        )
        .layer(Layer::random(32 * 1024, seed), Compression::Gzip)
        .build()
}

pub fn standard_images() -> StandardImages {
    let amd64 = arch_image("linux", "amd64", None, 100);
    let arm64 = arch_image("linux", "arm64", Some("v8"), 101);
    let armv7 = arch_image("linux", "arm", Some("v7"), 102);
    let multi_arch = IndexBuilder::new(MediaFamily::Oci)
        .manifest(&amd64)
        .manifest(&arm64)
        .manifest(&armv7)
        .attestation_for(&amd64)
        .build();
    let armv6 = arch_image("linux", "arm", Some("v6"), 103);
    let armv5 = arch_image("linux", "arm", Some("v5"), 104);
    let arm_only = IndexBuilder::new(MediaFamily::Oci)
        .manifest(&armv6)
        .manifest(&armv5)
        .build();
    StandardImages {
        user_1002: small_image("1002", 1),
        user_www_data: small_image("www-data", 2),
        user_1003_1004: small_image("1003:1004", 3),
        user_www_data_1004: small_image("www-data:1004", 4),
        multi_arch,
        arm_only,
    }
}
