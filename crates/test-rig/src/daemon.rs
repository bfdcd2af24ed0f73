//! Running the real `cri-imaged` binary against a test containerd, and CRI
//! clients for it and for containerd's own CRI image service.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

use crate::{wait_for, Containerd};

pub use cri_imaged::config::{Config, LogFormat};

/// The running daemon; killed on drop (its log tail is printed if the test panics).
pub struct CriImaged {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The config file written from [`CriImaged::cfg`].
    pub config: PathBuf,
    /// The configuration the daemon was started with.
    pub cfg: Config,
    pub log: PathBuf,
    pub metrics_addr: String,
    bin: PathBuf,
    start_timeout: Duration,
    child: Option<Child>,
}

/// The daemon under test: `CRI_IMAGED_TEST_BIN` if set (to run a test against
/// another build, e.g. to show that a test fails without a fix), else `built`
/// (the caller's `env!("CARGO_BIN_EXE_cri-imaged")`; see [`cri_imaged!`]).
pub fn daemon_binary(built: impl Into<PathBuf>) -> PathBuf {
    std::env::var_os("CRI_IMAGED_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| built.into())
}

/// A [`DaemonBuilder`] for this build's `cri-imaged` binary (or
/// `CRI_IMAGED_TEST_BIN`). Only usable from the cri-imaged package's
/// integration tests and benches, where cargo sets `CARGO_BIN_EXE_cri-imaged`.
///
/// `cri_imaged!().start(&env.containerd)`,
/// `cri_imaged!().config(|c| c.pull_progress_timeout = Duration::from_secs(2)).start(&cd)`.
#[macro_export]
macro_rules! cri_imaged {
    () => {
        $crate::CriImaged::builder($crate::daemon_binary(env!("CARGO_BIN_EXE_cri-imaged")))
    };
}

/// The test defaults for a daemon on `c`: socket and metrics port private to
/// `dir`, containerd's paths and snapshotter, a fast ImageFsInfo sample and
/// debug logs for cri-imaged.
pub fn daemon_config(c: &Containerd, dir: &Path, metrics_addr: &str) -> Config {
    Config {
        listen: dir.join("cri.sock"),
        containerd_address: c.socket.clone(),
        containerd_root: c.root.clone(),
        snapshotter: c.snapshotter.clone(),
        registry_config_path: c.certs_d.clone(),
        metrics_address: metrics_addr.to_string(),
        imagefs_sample_interval: Duration::from_millis(200),
        log_level: "info,cri_imaged=debug".into(),
        ..Config::default()
    }
}

/// Write `cfg` as the daemon's YAML config file.
pub fn write_config(path: &Path, cfg: &Config) {
    let text = serde_yaml::to_string(cfg).expect("serialise Config");
    std::fs::write(path, text).unwrap();
}

type ConfigEdit = Box<dyn FnOnce(&mut Config)>;

/// How to start a [`CriImaged`]: which binary, config changes on top of
/// [`daemon_config`], how long to wait for the socket.
pub struct DaemonBuilder {
    bin: PathBuf,
    edits: Vec<ConfigEdit>,
    start_timeout: Duration,
}

impl DaemonBuilder {
    /// Change the config (applied in order, after the test defaults).
    pub fn config(mut self, f: impl FnOnce(&mut Config) + 'static) -> Self {
        self.edits.push(Box::new(f));
        self
    }

    /// How long to wait for the socket to answer (default 20 s).
    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.start_timeout = t;
        self
    }

    /// Write the config and start; returns once the socket answers.
    pub fn start(self, c: &Containerd) -> CriImaged {
        let dir = tempfile::Builder::new().prefix("crid-").tempdir().unwrap();
        let metrics_addr = format!("127.0.0.1:{}", crate::free_port());
        let mut cfg = daemon_config(c, dir.path(), &metrics_addr);
        for f in self.edits {
            f(&mut cfg);
        }
        let config = dir.path().join("config.yaml");
        write_config(&config, &cfg);
        let mut d = CriImaged {
            socket: cfg.listen.clone(),
            log: dir.path().join("cri-imaged.log"),
            metrics_addr: cfg.metrics_address.clone(),
            config,
            cfg,
            dir,
            bin: self.bin,
            start_timeout: self.start_timeout,
            child: None,
        };
        d.start_again();
        d
    }
}

impl CriImaged {
    /// A builder running `bin` (usually via [`cri_imaged!`]).
    pub fn builder(bin: impl Into<PathBuf>) -> DaemonBuilder {
        DaemonBuilder {
            bin: bin.into(),
            edits: Vec::new(),
            start_timeout: Duration::from_secs(20),
        }
    }

    /// The binary this daemon runs.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cri-imaged");
        self.child = Some(child);
        let sock = self.socket.clone();
        assert!(
            wait_for(
                || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
                self.start_timeout
            ),
            "cri-imaged did not start: {}",
            crate::tail_file(&self.log, 40)
        );
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The metrics server's `/metrics` text ("" if it does not answer).
    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("http://{}/metrics", self.metrics_addr)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        for _ in 0..200 {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok().and_then(|s| s.code())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> ImageServiceClient<Channel> {
        cri_client(&self.socket).await
    }

    /// GET a path on the metrics server: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{}", self.metrics_addr, path))
            .await
            .expect("metrics server");
        let st = r.status().as_u16();
        (st, r.text().await.unwrap_or_default())
    }

    /// Wait until the image index is in sync (ListImages answers OK).
    pub async fn wait_synced(&self) {
        let mut c = self.client().await;
        for _ in 0..200 {
            if c.list_images(cri::ListImagesRequest { filter: None })
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "cri-imaged never synced: {}",
            crate::tail_file(&self.log, 40)
        );
    }
}

impl Drop for CriImaged {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- cri-imaged log ---\n{}",
                crate::tail_file(&self.log, 60)
            );
        }
    }
}

/// A CRI image client over a unix socket (ours or containerd's).
pub async fn cri_client(socket: &Path) -> ImageServiceClient<Channel> {
    let ch = cri_imaged::health::unix_channel(socket)
        .await
        .expect("connect CRI socket");
    ImageServiceClient::new(ch).max_decoding_message_size(64 << 20)
}

pub fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

pub async fn status(c: &mut ImageServiceClient<Channel>, image: &str) -> Option<cri::Image> {
    c.image_status(cri::ImageStatusRequest {
        image: spec(image),
        verbose: false,
    })
    .await
    .expect("ImageStatus")
    .into_inner()
    .image
}

pub async fn list(c: &mut ImageServiceClient<Channel>) -> Vec<cri::Image> {
    c.list_images(cri::ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

pub async fn pull(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<String, tonic::Status> {
    c.pull_image(cri::PullImageRequest {
        image: spec(image),
        auth: None,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

pub async fn pull_auth(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: cri::AuthConfig,
) -> Result<String, tonic::Status> {
    c.pull_image(cri::PullImageRequest {
        image: spec(image),
        auth: Some(auth),
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

pub async fn remove(c: &mut ImageServiceClient<Channel>, image: &str) -> Result<(), tonic::Status> {
    c.remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .map(|_| ())
}

/// PullImage, ImageStatus and RemoveImage with `image` all answer
/// INVALID_ARGUMENT. Returns how many calls were checked.
pub async fn assert_invalid_everywhere(
    c: &mut ImageServiceClient<Channel>,
    image: Option<cri::ImageSpec>,
) -> usize {
    use tonic::Code;
    let e = c
        .pull_image(cri::PullImageRequest {
            image: image.clone(),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "PullImage {image:?}: {e:?}"
    );
    let e = c
        .image_status(cri::ImageStatusRequest {
            image: image.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "ImageStatus {image:?}: {e:?}"
    );
    let e = c
        .remove_image(cri::RemoveImageRequest {
            image: image.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "RemoveImage {image:?}: {e:?}"
    );
    3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the launcher writes is what the daemon reads back.
    #[test]
    fn config_round_trips_through_yaml() {
        let mut cfg = Config {
            listen: "/tmp/x/cri.sock".into(),
            metrics_address: "127.0.0.1:1234".into(),
            imagefs_sample_interval: Duration::from_millis(200),
            pull_progress_timeout: Duration::from_secs(2),
            socket_mode: "0600".into(),
            platforms: vec!["linux/arm/v7".into()],
            pinned_images: vec!["127.0.0.1:5000/a:b".into()],
            log_format: LogFormat::Json,
            log_level: "info,cri_imaged=debug".into(),
            ..Config::default()
        };
        cfg.runtime_handler_snapshotters
            .insert("alt".into(), "native".into());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        write_config(&p, &cfg);
        assert_eq!(Config::load(&p).unwrap(), cfg);
    }
}
