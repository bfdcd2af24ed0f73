//! Running the real `cri-imaged` binary against a test containerd, and CRI
//! clients for it and for containerd's own CRI image service.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::{wait_for, Containerd};

pub struct CriImaged {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub metrics_addr: String,
    child: Option<Child>,
}

/// The daemon under test: this build's binary, or `CRI_IMAGED_TEST_BIN` (to run
/// a test against another build, e.g. to show that a test fails without a fix).
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("CRI_IMAGED_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cri-imaged")))
}

/// Extra YAML lines for the daemon config.
pub fn daemon_config(c: &Containerd, dir: &Path, metrics_addr: &str, extra: &str) -> String {
    let sample = if extra.contains("imagefs_sample_interval:") {
        ""
    } else {
        "imagefs_sample_interval: 200ms\n"
    };
    format!(
        "listen: {sock}\ncontainerd_address: {cd}\ncontainerd_root: {root}\nsnapshotter: {snap}\nregistry_config_path: {certs}\nmetrics_address: \"{metrics_addr}\"\n{sample}log_level: \"info,cri_imaged=debug\"\n{extra}\n",
        sock = dir.join("cri.sock").display(),
        cd = c.socket.display(),
        root = c.root.display(),
        snap = c.snapshotter,
        certs = c.certs_d.display(),
    )
}

impl CriImaged {
    pub fn start(c: &Containerd) -> CriImaged {
        Self::start_with(c, "")
    }

    /// Start with extra config YAML; waits until the socket answers.
    pub fn start_with(c: &Containerd, extra: &str) -> CriImaged {
        let dir = tempfile::Builder::new().prefix("crid-").tempdir().unwrap();
        let metrics_addr = format!("127.0.0.1:{}", super::free_port());
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, daemon_config(c, dir.path(), &metrics_addr, extra)).unwrap();
        let mut d = CriImaged {
            socket: dir.path().join("cri.sock"),
            log: dir.path().join("cri-imaged.log"),
            config,
            metrics_addr,
            dir,
            child: None,
        };
        d.start_again();
        d
    }

    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(daemon_binary())
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
                Duration::from_secs(20)
            ),
            "cri-imaged did not start: {}",
            super::tail_file(&self.log, 40)
        );
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
            super::tail_file(&self.log, 40)
        );
    }
}

impl Drop for CriImaged {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- cri-imaged log ---\n{}",
                super::tail_file(&self.log, 60)
            );
        }
    }
}

/// A CRI image client over a unix socket (ours or containerd's).
pub async fn cri_client(socket: &Path) -> ImageServiceClient<Channel> {
    let path = socket.to_path_buf();
    let ch = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
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
