//! One configuration for the daemon: a YAML file (serde_yaml) overridden by
//! command-line flags, validated once at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::platform::Platform;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Who writes a layer's files into its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unpacker {
    /// cri-imaged itself for the overlayfs snapshotter when it can see the
    /// snapshot directories (streaming, verified as the bytes arrive);
    /// containerd's diff service otherwise.
    #[default]
    Auto,
    /// containerd's diff service for every layer.
    Containerd,
}

/// Whether Prepare carries the labels remote (lazy-pull) snapshotters read
/// (`containerd.io/snapshot/cri.*`, as containerd's CRI passes them when its
/// `disable_snapshot_annotations` is false), letting such a snapshotter
/// serve a layer without it being downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotAnnotations {
    /// For every snapshotter but containerd's built-in local ones
    /// (overlayfs, native, btrfs, zfs, devmapper, aufs, blockfile, erofs).
    #[default]
    Auto,
    /// For every snapshotter.
    Always,
    /// Never: every layer is downloaded and unpacked.
    Never,
}

impl SnapshotAnnotations {
    /// Whether pulls into `snapshotter` pass the labels.
    pub fn applies_to(self, snapshotter: &str) -> bool {
        const LOCAL: &[&str] = &[
            "overlayfs",
            "native",
            "btrfs",
            "zfs",
            "devmapper",
            "aufs",
            "blockfile",
            "erofs",
            "windows",
        ];
        match self {
            SnapshotAnnotations::Auto => !LOCAL.contains(&snapshotter),
            SnapshotAnnotations::Always => true,
            SnapshotAnnotations::Never => false,
        }
    }
}

/// The whole configuration. Every key has a default; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket the CRI ImageService listens on.
    pub listen: PathBuf,
    /// Octal file mode of the socket, e.g. "0660".
    pub socket_mode: String,
    /// Group (name or numeric gid) owning the socket; empty = the process's group.
    pub socket_group: String,
    /// Take over a socket another live instance serves (rolling upgrades with
    /// surge): the new socket is renamed over the old path and the metrics
    /// port is bound with SO_REUSEPORT. Off: a live socket refuses the start.
    pub socket_takeover: bool,
    /// containerd's gRPC socket.
    pub containerd_address: PathBuf,
    /// containerd namespace holding the images (containerd's CRI uses k8s.io).
    pub containerd_namespace: String,
    /// Snapshotter used to unpack images.
    pub snapshotter: String,
    /// Host path of the snapshotter's root, reported by ImageFsInfo.
    /// Empty: `<containerd_root>/io.containerd.snapshotter.v1.<snapshotter>`.
    pub snapshotter_root: PathBuf,
    /// containerd's root directory (only used to derive `snapshotter_root`).
    pub containerd_root: PathBuf,
    /// Per-runtime-handler snapshotter (`ImageSpec.runtime_handler` -> snapshotter).
    pub runtime_handler_snapshotters: BTreeMap<String, String>,
    /// Who unpacks layers: `auto` (natively into overlayfs snapshots, with
    /// containerd's diff service as the fallback) or `containerd` (always).
    pub unpacker: Unpacker,
    /// Where downloads are spooled while the native unpack reads them
    /// (unlinked temporary files). Empty: the system's temporary directory.
    pub spool_dir: PathBuf,
    /// Do not keep layer blobs in containerd's content store once unpacked
    /// (containerd's CRI option of the same name): natively unpacked layers
    /// are never stored, others are left to containerd's GC.
    pub discard_unpacked_layers: bool,
    /// Labels for remote snapshotters on Prepare: `auto` (for snapshotters
    /// other than containerd's built-in local ones), `always` or `never`.
    pub snapshot_annotations: SnapshotAnnotations,
    /// Registry host configuration directory (containerd certs.d layout).
    pub registry_config_path: PathBuf,
    /// Hard limits on what one layer and one pull may write (hostile images).
    pub limits: crate::layer::Limits,
    /// Address of the /metrics, /healthz and /readyz HTTP server; empty = off.
    pub metrics_address: String,
    /// How often ImageFsInfo samples the snapshotter root.
    #[serde(with = "humantime_serde")]
    pub imagefs_sample_interval: Duration,
    /// A pull that receives no bytes for this long is cancelled; 0 = off.
    #[serde(with = "humantime_serde")]
    pub pull_progress_timeout: Duration,
    /// Concurrent layer downloads within one pull.
    pub max_concurrent_downloads_per_pull: usize,
    /// Concurrent layer downloads across all pulls.
    pub max_concurrent_downloads: usize,
    /// Expiry of the containerd lease that protects a pull in progress.
    #[serde(with = "humantime_serde")]
    pub lease_expiry: Duration,
    /// Node platforms in preference order ("linux/amd64", "linux/arm/v7").
    /// Empty: the running machine's platform.
    pub platforms: Vec<String>,
    /// Match platforms strictly (no arm v7 -> v6 or amd64 -> 386 fallback).
    pub strict_platform: bool,
    /// Images that are pinned (never garbage collected by kubelet).
    pub pinned_images: Vec<String>,
    /// How long in-flight RPCs may finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Log level filter (tracing-subscriber EnvFilter syntax), overridden by RUST_LOG.
    pub log_level: String,
    /// Log format: text or json.
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: PathBuf::from("/run/cri-imaged/cri-imaged.sock"),
            socket_mode: "0660".into(),
            socket_group: String::new(),
            socket_takeover: false,
            containerd_address: PathBuf::from("/run/containerd/containerd.sock"),
            containerd_namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
            snapshotter_root: PathBuf::new(),
            containerd_root: PathBuf::from("/var/lib/containerd"),
            runtime_handler_snapshotters: BTreeMap::new(),
            unpacker: Unpacker::Auto,
            spool_dir: PathBuf::new(),
            limits: crate::layer::Limits::default(),
            discard_unpacked_layers: false,
            snapshot_annotations: SnapshotAnnotations::Auto,
            registry_config_path: PathBuf::from("/etc/containerd/certs.d"),
            metrics_address: "127.0.0.1:9110".into(),
            imagefs_sample_interval: Duration::from_secs(10),
            pull_progress_timeout: Duration::from_secs(300),
            max_concurrent_downloads_per_pull: 3,
            max_concurrent_downloads: 10,
            lease_expiry: Duration::from_secs(24 * 3600),
            platforms: Vec::new(),
            strict_platform: false,
            pinned_images: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Parse YAML text; unknown keys and wrong types are refused with the key named.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// The socket mode as a number.
    pub fn socket_mode_bits(&self) -> Result<u32, ConfigError> {
        let s = self.socket_mode.trim_start_matches("0o");
        let bits = u32::from_str_radix(s, 8).map_err(|_| {
            invalid(
                "socket_mode",
                format!(
                    "{:?} is not an octal file mode such as \"0660\"",
                    self.socket_mode
                ),
            )
        })?;
        if bits > 0o777 {
            return Err(invalid(
                "socket_mode",
                format!("{:?} is larger than 0777", self.socket_mode),
            ));
        }
        Ok(bits)
    }

    /// Snapshotter root, derived from containerd_root when not set.
    /// `spool_dir`, or the system's temporary directory when empty.
    pub fn effective_spool_dir(&self) -> PathBuf {
        if self.spool_dir.as_os_str().is_empty() {
            std::env::temp_dir()
        } else {
            self.spool_dir.clone()
        }
    }

    pub fn effective_snapshotter_root(&self) -> PathBuf {
        if self.snapshotter_root.as_os_str().is_empty() {
            self.containerd_root
                .join(format!("io.containerd.snapshotter.v1.{}", self.snapshotter))
        } else {
            self.snapshotter_root.clone()
        }
    }

    /// Node platforms, parsed and normalised (the running machine's when empty).
    pub fn node_platforms(&self) -> Result<Vec<Platform>, ConfigError> {
        if self.platforms.is_empty() {
            return Ok(vec![Platform::host()]);
        }
        self.platforms
            .iter()
            .map(|p| {
                Platform::parse(p)
                    .map(|p| p.normalize())
                    .map_err(|e| invalid("platforms", e.to_string()))
            })
            .collect()
    }

    /// Check every value; the first problem is returned naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.spool_dir.as_os_str().is_empty() && !self.spool_dir.is_absolute() {
            return Err(invalid(
                "spool_dir",
                format!("{:?} must be an absolute directory path", self.spool_dir),
            ));
        }
        if self.listen.as_os_str().is_empty() || !self.listen.is_absolute() {
            return Err(invalid(
                "listen",
                format!("{:?} must be an absolute socket path", self.listen),
            ));
        }
        if self.listen.as_os_str().len() > 107 {
            return Err(invalid(
                "listen",
                "unix socket paths are limited to 107 bytes",
            ));
        }
        self.socket_mode_bits()?;
        self.limits.validate().map_err(|m| invalid("limits", m))?;
        if self.containerd_address.as_os_str().is_empty() {
            return Err(invalid("containerd_address", "must not be empty"));
        }
        if self.containerd_namespace.is_empty()
            || !self
                .containerd_namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                "containerd_namespace",
                format!(
                    "{:?} is not a valid containerd namespace",
                    self.containerd_namespace
                ),
            ));
        }
        if self.snapshotter.is_empty() {
            return Err(invalid("snapshotter", "must not be empty"));
        }
        for (handler, snap) in &self.runtime_handler_snapshotters {
            if handler.is_empty() || snap.is_empty() {
                return Err(invalid(
                    "runtime_handler_snapshotters",
                    "runtime handler and snapshotter names must not be empty",
                ));
            }
        }
        if !self.metrics_address.is_empty()
            && self
                .metrics_address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(invalid(
                "metrics_address",
                format!(
                    "{:?} is not an address such as 127.0.0.1:9110",
                    self.metrics_address
                ),
            ));
        }
        if self.imagefs_sample_interval < Duration::from_millis(100) {
            return Err(invalid("imagefs_sample_interval", "must be at least 100ms"));
        }
        if self.max_concurrent_downloads_per_pull == 0
            || self.max_concurrent_downloads_per_pull > 64
        {
            return Err(invalid(
                "max_concurrent_downloads_per_pull",
                "must be between 1 and 64",
            ));
        }
        if self.max_concurrent_downloads == 0 || self.max_concurrent_downloads > 256 {
            return Err(invalid(
                "max_concurrent_downloads",
                "must be between 1 and 256",
            ));
        }
        if self.lease_expiry < Duration::from_secs(60) {
            return Err(invalid("lease_expiry", "must be at least 1m"));
        }
        self.node_platforms()?;
        for img in &self.pinned_images {
            crate::reference::Reference::parse_normalized(img)
                .map_err(|e| invalid("pinned_images", e.to_string()))?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| invalid("log_level", format!("{:?}: {e}", self.log_level)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let c = Config::from_yaml(s, Path::new("test.yaml"))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen, PathBuf::from("/run/cri-imaged/cri-imaged.sock"));
        assert_eq!(c.containerd_namespace, "k8s.io");
        assert_eq!(c.pull_progress_timeout, Duration::from_secs(300));
        assert_eq!(
            c.effective_snapshotter_root(),
            PathBuf::from("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs")
        );
    }

    #[test]
    fn values_parse() {
        let c = parse(
            "listen: /tmp/x.sock\npull_progress_timeout: 30s\nimagefs_sample_interval: 1s\nplatforms: [linux/arm/v7]\nruntime_handler_snapshotters: {kata: devmapper}\nlog_format: json\n",
        )
        .unwrap();
        assert_eq!(c.pull_progress_timeout, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.node_platforms().unwrap()[0].to_string(), "linux/arm/v7");
        assert_eq!(c.runtime_handler_snapshotters["kata"], "devmapper");
    }

    #[test]
    fn snapshot_annotations_by_snapshotter() {
        let c = parse("").unwrap();
        assert_eq!(c.snapshot_annotations, SnapshotAnnotations::Auto);
        for local in ["overlayfs", "native", "devmapper", "btrfs", "zfs", "erofs"] {
            assert!(!c.snapshot_annotations.applies_to(local), "{local}");
        }
        for remote in ["stargz", "nydus", "soci", "my-proxy"] {
            assert!(c.snapshot_annotations.applies_to(remote), "{remote}");
        }
        let c = parse("snapshot_annotations: always\n").unwrap();
        assert!(c.snapshot_annotations.applies_to("overlayfs"));
        let c = parse("snapshot_annotations: never\n").unwrap();
        assert!(!c.snapshot_annotations.applies_to("stargz"));
        let e = parse("snapshot_annotations: yes-please\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("snapshot_annotations"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("listen: /tmp/x.sock\nlisten_adress: foo\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_adress"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (yaml, key) in [
            ("socket_mode: '0999'", "socket_mode"),
            ("listen: relative.sock", "listen"),
            ("metrics_address: nope", "metrics_address"),
            ("containerd_namespace: 'a b'", "containerd_namespace"),
            ("max_concurrent_downloads: 0", "max_concurrent_downloads"),
            ("platforms: ['linux/']", "platforms"),
            ("pinned_images: ['busybox:bad tag']", "pinned_images"),
            ("pull_progress_timeout: soon", "pull_progress_timeout"),
            ("imagefs_sample_interval: 1ms", "imagefs_sample_interval"),
            (
                "max_concurrent_downloads_per_pull: many",
                "max_concurrent_downloads_per_pull",
            ),
            ("limits: {layer_max_depth: 0}", "limits.layer_max_depth"),
            ("limits: {layer_max_entrys: 5}", "layer_max_entrys"),
            ("limits: {pull_max_bytes: -1}", "pull_max_bytes"),
        ] {
            let e = parse(yaml).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn limits_parse_per_key() {
        let c = parse("limits:\n  layer_max_entries: 10\n  layer_expansion_ratio: 5\n").unwrap();
        assert_eq!(c.limits.layer_max_entries, 10);
        assert_eq!(c.limits.layer_expansion_ratio, 5);
        assert_eq!(
            c.limits.layer_max_depth, 128,
            "unset keys keep their defaults"
        );
    }

    #[test]
    fn zero_progress_timeout_means_off() {
        let c = parse("pull_progress_timeout: 0s").unwrap();
        assert_eq!(c.pull_progress_timeout, Duration::ZERO);
    }
}
