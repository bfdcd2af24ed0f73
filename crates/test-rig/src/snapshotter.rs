//! A fake remote (lazy-pull) snapshotter, served by the test as a containerd
//! proxy plugin (`[proxy_plugins.<name>] type = "snapshot"`).
//!
//! It is a small overlay snapshotter (directories under its own root; active
//! snapshots mount as a bind or an overlay, as containerd's overlayfs
//! snapshotter mounts them) that records every Prepare with its labels. For
//! the layer digests it is told to serve "remotely", it behaves as stargz and
//! nydus do: a Prepare carrying `containerd.io/snapshot.ref` = chain ID and
//! `containerd.io/snapshot/cri.layer-digest` = one of them commits the chain
//! ID itself (a marker file in place of the layer's files) and answers
//! AlreadyExists, so the client need not download the layer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_client::services::v1::snapshots as api;
use containerd_client::types::Mount;
use tonic::{Request, Response, Status};

mod server {
    #![allow(clippy::all)]
    tonic::include_proto!("containerd.services.snapshots.v1");
}
use server::snapshots_server::{Snapshots, SnapshotsServer};

const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";

/// One Prepare the snapshotter received.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub key: String,
    pub parent: String,
    pub labels: HashMap<String, String>,
    /// Answered AlreadyExists as a remote layer.
    pub served: bool,
}

#[derive(Debug, Clone)]
struct Snap {
    id: u64,
    kind: api::Kind,
    parent: String,
    labels: HashMap<String, String>,
    created: SystemTime,
    updated: SystemTime,
}

#[derive(Default)]
struct Snaps {
    by_name: HashMap<String, Snap>,
    next: u64,
}

struct State {
    root: PathBuf,
    remote: Mutex<HashSet<String>>,
    prepares: Mutex<Vec<Prepared>>,
    snaps: Mutex<Snaps>,
}

/// The running fake; stopped on drop.
pub struct FakeSnapshotter {
    /// The plugin name containerd knows it by (the snapshotter name clients use).
    pub name: String,
    pub socket: PathBuf,
    /// Its snapshot directories (`snapshots/<id>/{fs,work}`).
    pub root: PathBuf,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

impl FakeSnapshotter {
    /// Serve on a fresh socket (its own thread and runtime).
    pub fn start(name: &str) -> FakeSnapshotter {
        let tmp = tempfile::Builder::new()
            .prefix("snap-")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = tmp.path().join("snap.sock");
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("snapshots")).unwrap();
        let state = Arc::new(State {
            root: root.clone(),
            remote: Default::default(),
            prepares: Default::default(),
            snaps: Default::default(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (svc_state, sock) = (state.clone(), socket.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&sock).unwrap();
                let _ = ready_tx.send(());
                tonic::transport::Server::builder()
                    .add_service(SnapshotsServer::new(Svc(svc_state)))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .unwrap();
            });
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("fake snapshotter listening");
        FakeSnapshotter {
            name: name.to_string(),
            socket,
            root,
            state,
            stop: Some(stop),
            thread: Some(thread),
            _tmp: tmp,
        }
    }

    /// containerd config (append to config.toml) loading it as a proxy plugin.
    pub fn proxy_config(&self) -> String {
        format!(
            "\n[proxy_plugins.{}]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            self.name,
            self.socket.display()
        )
    }

    /// Serve the layer with this (compressed) digest remotely from now on.
    pub fn serve_remotely(&self, layer_digest: &str) {
        self.state
            .remote
            .lock()
            .unwrap()
            .insert(layer_digest.to_string());
    }

    /// Every Prepare received so far, in order.
    pub fn prepares(&self) -> Vec<Prepared> {
        self.state.prepares.lock().unwrap().clone()
    }

    /// Names of its snapshots (backend names, as containerd gave them or,
    /// for remote layers, the chain IDs), committed ones only.
    pub fn committed(&self) -> Vec<String> {
        let s = self.state.snaps.lock().unwrap();
        let mut v: Vec<_> = s
            .by_name
            .iter()
            .filter(|(_, s)| s.kind == api::Kind::Committed)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// How many snapshots it holds, of any kind.
    pub fn count(&self) -> usize {
        self.state.snaps.lock().unwrap().by_name.len()
    }
}

impl Drop for FakeSnapshotter {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Overlay mounts of a container would sit under the root: none here.
        crate::unmount_under(&self.root, false);
    }
}

impl State {
    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn info(name: &str, s: &Snap) -> api::Info {
        api::Info {
            name: name.to_string(),
            parent: s.parent.clone(),
            kind: s.kind as i32,
            created_at: Some(s.created.into()),
            updated_at: Some(s.updated.into()),
            labels: s.labels.clone(),
        }
    }

    /// The `fs` directories of `parent` and its ancestors, topmost first.
    fn lowers(&self, snaps: &Snaps, parent: &str) -> Result<Vec<PathBuf>, Status> {
        let mut out = Vec::new();
        let mut p = parent.to_string();
        while !p.is_empty() {
            let s = snaps
                .by_name
                .get(&p)
                .ok_or_else(|| Status::not_found(format!("parent snapshot {p} does not exist")))?;
            out.push(self.dir(s.id).join("fs"));
            p = s.parent.clone();
        }
        Ok(out)
    }

    fn mounts(&self, snaps: &Snaps, s: &Snap) -> Result<Vec<Mount>, Status> {
        let lowers = self.lowers(snaps, &s.parent)?;
        let dir = self.dir(s.id);
        let path = |p: &Path| p.display().to_string();
        let bind = |src: &Path, ro: bool| Mount {
            r#type: "bind".into(),
            source: path(src),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        let lowerdir = lowers.iter().map(|l| path(l)).collect::<Vec<_>>().join(":");
        Ok(match (s.kind, lowers.len()) {
            (api::Kind::View, 0) => vec![bind(&dir.join("fs"), true)],
            (api::Kind::View, 1) => vec![bind(&lowers[0], true)],
            (api::Kind::View, _) => vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![format!("lowerdir={lowerdir}")],
            }],
            (_, 0) => vec![bind(&dir.join("fs"), false)],
            _ => vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![
                    format!("workdir={}", path(&dir.join("work"))),
                    format!("upperdir={}", path(&dir.join("fs"))),
                    format!("lowerdir={lowerdir}"),
                ],
            }],
        })
    }

    fn create(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        kind: api::Kind,
    ) -> Result<Vec<Mount>, Status> {
        let mut snaps = self.snaps.lock().unwrap();
        if snaps.by_name.contains_key(key) {
            return Err(Status::already_exists(format!(
                "snapshot {key} already exists"
            )));
        }
        if !parent.is_empty() {
            match snaps.by_name.get(parent) {
                Some(p) if p.kind == api::Kind::Committed => {}
                Some(_) => {
                    return Err(Status::invalid_argument(format!(
                        "parent {parent} is not committed"
                    )))
                }
                None => {
                    return Err(Status::not_found(format!(
                        "parent snapshot {parent} does not exist"
                    )))
                }
            }
        }
        snaps.next += 1;
        let id = snaps.next;
        let dir = self.dir(id);
        std::fs::create_dir_all(dir.join("fs")).map_err(|e| Status::internal(e.to_string()))?;
        std::fs::create_dir_all(dir.join("work")).map_err(|e| Status::internal(e.to_string()))?;
        let now = SystemTime::now();
        let s = Snap {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
        };
        let m = self.mounts(&snaps, &s)?;
        snaps.by_name.insert(key.to_string(), s);
        Ok(m)
    }
}

struct Svc(Arc<State>);

#[tonic::async_trait]
impl Snapshots for Svc {
    async fn prepare(
        &self,
        r: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let st = &self.0;
        let remote_target = match (r.labels.get(SNAPSHOT_REF), r.labels.get(LAYER_DIGEST)) {
            (Some(target), Some(layer)) if st.remote.lock().unwrap().contains(layer) => {
                Some((target.clone(), layer.clone()))
            }
            _ => None,
        };
        st.prepares.lock().unwrap().push(Prepared {
            key: r.key.clone(),
            parent: r.parent.clone(),
            labels: r.labels.clone(),
            served: remote_target.is_some(),
        });
        if let Some((target, layer)) = remote_target {
            // As a remote snapshotter does: the layer is mounted from the
            // registry; here a marker file stands in for its files.
            let exists = st.snaps.lock().unwrap().by_name.contains_key(&target);
            if !exists {
                st.create(&target, &r.parent, r.labels.clone(), api::Kind::Committed)?;
                let id = st.snaps.lock().unwrap().by_name[&target].id;
                std::fs::write(
                    st.dir(id).join("fs").join(".remote-layer"),
                    layer.as_bytes(),
                )
                .map_err(|e| Status::internal(e.to_string()))?;
            }
            return Err(Status::already_exists(format!(
                "target snapshot {target} served remotely"
            )));
        }
        let mounts = st.create(&r.key, &r.parent, r.labels, api::Kind::Active)?;
        Ok(Response::new(api::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        r: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let mounts = self
            .0
            .create(&r.key, &r.parent, r.labels, api::Kind::View)?;
        Ok(Response::new(api::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        r: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let r = r.into_inner();
        let snaps = self.0.snaps.lock().unwrap();
        let s = snaps
            .by_name
            .get(&r.key)
            .ok_or_else(|| Status::not_found(format!("snapshot {} does not exist", r.key)))?;
        let mounts = self.0.mounts(&snaps, s)?;
        Ok(Response::new(api::MountsResponse { mounts }))
    }

    async fn commit(&self, r: Request<api::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        let mut snaps = self.0.snaps.lock().unwrap();
        if snaps.by_name.contains_key(&r.name) {
            return Err(Status::already_exists(format!(
                "snapshot {} already exists",
                r.name
            )));
        }
        let mut s = match snaps.by_name.get(&r.key) {
            Some(s) if s.kind == api::Kind::Active => snaps.by_name.remove(&r.key).unwrap(),
            Some(_) => {
                return Err(Status::failed_precondition(format!(
                    "snapshot {} is not active",
                    r.key
                )))
            }
            None => {
                return Err(Status::not_found(format!(
                    "snapshot {} does not exist",
                    r.key
                )))
            }
        };
        s.kind = api::Kind::Committed;
        s.labels = r.labels;
        s.updated = SystemTime::now();
        snaps.by_name.insert(r.name, s);
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<api::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        let mut snaps = self.0.snaps.lock().unwrap();
        if !snaps.by_name.contains_key(&r.key) {
            return Err(Status::not_found(format!(
                "snapshot {} does not exist",
                r.key
            )));
        }
        if snaps.by_name.values().any(|s| s.parent == r.key) {
            return Err(Status::failed_precondition(format!(
                "snapshot {} has children",
                r.key
            )));
        }
        let s = snaps.by_name.remove(&r.key).unwrap();
        let _ = std::fs::remove_dir_all(self.0.dir(s.id));
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let r = r.into_inner();
        let snaps = self.0.snaps.lock().unwrap();
        let s = snaps
            .by_name
            .get(&r.key)
            .ok_or_else(|| Status::not_found(format!("snapshot {} does not exist", r.key)))?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(State::info(&r.key, s)),
        }))
    }

    async fn update(
        &self,
        r: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let info = r.info.ok_or_else(|| Status::invalid_argument("no info"))?;
        let mut snaps = self.0.snaps.lock().unwrap();
        let s = snaps
            .by_name
            .get_mut(&info.name)
            .ok_or_else(|| Status::not_found(format!("snapshot {} does not exist", info.name)))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            s.labels = info.labels.clone();
        }
        for p in paths {
            if p == "labels" {
                s.labels = info.labels.clone();
            } else if let Some(k) = p.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) => s.labels.insert(k.to_string(), v.clone()),
                    None => s.labels.remove(k),
                };
            }
        }
        s.updated = SystemTime::now();
        let info = State::info(&info.name, s);
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(info),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<api::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        _r: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        // Filters are not applied: containerd checks what it walks.
        let info = {
            let snaps = self.0.snaps.lock().unwrap();
            snaps
                .by_name
                .iter()
                .map(|(n, s)| State::info(n, s))
                .collect()
        };
        Ok(Response::new(tokio_stream::iter(vec![Ok(
            api::ListSnapshotsResponse { info },
        )])))
    }

    async fn usage(
        &self,
        _r: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        Ok(Response::new(api::UsageResponse { size: 0, inodes: 0 }))
    }

    async fn cleanup(&self, _r: Request<api::CleanupRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}
