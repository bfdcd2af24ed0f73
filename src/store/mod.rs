//! The in-memory image index: containerd's image records of our namespace,
//! grouped by image ID (config digest for this node's platform), built at
//! start and kept current from containerd's image events. Reads never call
//! containerd.

pub mod inspect;
pub(crate) mod resolve;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;

use crate::containerd::{labels, Containerd, ContainerdError, ImageRecord};
use crate::platform::Matcher;
pub use inspect::ImageInfo;
pub use resolve::ResolveError;

/// Reconnect backoff while containerd is unreachable: doubles from min to max.
const RESYNC_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESYNC_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A full resync this often, whatever the events said.
const PERIODIC_RESYNC: Duration = Duration::from_secs(60);
/// Time the event subscription gets to reach containerd before the listing.
const SUBSCRIBE_HEADSTART: Duration = Duration::from_millis(50);
/// Image events buffered between the subscription task and the index.
const EVENT_QUEUE: usize = 1024;
/// Inspected targets kept; past this the cache starts over.
const MAX_CACHED_TARGETS: usize = 50_000;

/// One image as the CRI shows it.
#[derive(Debug, Clone)]
pub struct ImageView {
    pub info: Arc<ImageInfo>,
    /// Every record name of this image (tags, digests, the ID record).
    pub records: Vec<String>,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub pinned: bool,
}

/// What the index knows of one record name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    pub image_id: String,
    /// Digest of the record's target (index or manifest).
    pub target: String,
    pub pinned: bool,
}

#[derive(Debug, Clone)]
struct Record {
    id: String,
    pinned: bool,
    /// Digest of the record's target (index or manifest).
    target: String,
}

#[derive(Default)]
struct Index {
    /// record name -> image ID
    records: HashMap<String, Record>,
    /// image ID -> record names (ordered: listing needs no sort, short IDs are a range)
    by_id: std::collections::BTreeMap<String, BTreeSet<String>>,
    /// image ID -> info
    infos: HashMap<String, Arc<ImageInfo>>,
}

impl Index {
    fn insert(&mut self, name: String, info: Arc<ImageInfo>, pinned: bool) {
        self.remove(&name);
        let id = info.id.clone();
        let target = info.target.clone();
        self.records.insert(
            name.clone(),
            Record {
                id: id.clone(),
                pinned,
                target,
            },
        );
        self.by_id.entry(id.clone()).or_default().insert(name);
        self.infos.insert(id, info);
    }

    fn remove(&mut self, name: &str) {
        if let Some(r) = self.records.remove(name) {
            if let Some(names) = self.by_id.get_mut(&r.id) {
                names.remove(name);
                if names.is_empty() {
                    self.by_id.remove(&r.id);
                    self.infos.remove(&r.id);
                }
            }
        }
    }

    fn view(&self, id: &str) -> Option<ImageView> {
        let names = self.by_id.get(id)?;
        let info = self.infos.get(id)?.clone();
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        let mut pinned = false;
        for n in names {
            if let Some(r) = self.records.get(n) {
                pinned |= r.pinned;
            }
            if n.starts_with("sha256:") {
                continue;
            }
            if n.contains('@') {
                repo_digests.push(n.clone());
            } else {
                repo_tags.push(n.clone());
            }
        }
        Some(ImageView {
            info,
            records: names.iter().cloned().collect(),
            repo_tags,
            repo_digests,
            pinned,
        })
    }
}

/// The image index. Cheap to share (`Arc<Store>`).
pub struct Store {
    cd: Containerd,
    matcher: Matcher,
    pinned_names: HashSet<String>,
    index: RwLock<Index>,
    /// target digest -> info, so records sharing a target are inspected once.
    cache: RwLock<HashMap<String, Arc<ImageInfo>>>,
    synced: AtomicBool,
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Containerd(#[from] ContainerdError),
    #[error("the image index is not in sync with containerd at {0} yet; retry shortly")]
    NotSynced(String),
}

impl Store {
    pub fn new(cd: Containerd, matcher: Matcher, pinned: &[String]) -> Arc<Store> {
        Arc::new(Store {
            cd,
            matcher,
            pinned_names: pinned.iter().cloned().collect(),
            index: RwLock::new(Index::default()),
            cache: RwLock::new(HashMap::new()),
            synced: AtomicBool::new(false),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn containerd(&self) -> &Containerd {
        &self.cd
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// True while the event subscription is live and the index is current.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn check_synced(&self) -> Result<(), StoreError> {
        if self.is_synced() {
            Ok(())
        } else {
            Err(StoreError::NotSynced(
                self.cd.socket().display().to_string(),
            ))
        }
    }

    /// All images, in ID order.
    pub fn list(&self) -> Result<Vec<ImageView>, StoreError> {
        self.check_synced()?;
        let idx = self.index.read();
        Ok(idx.by_id.keys().filter_map(|id| idx.view(id)).collect())
    }

    pub fn len(&self) -> usize {
        self.index.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolve a user's image string (tag, digest ref, ID, short ID).
    pub fn resolve(&self, query: &str) -> Result<Option<ImageView>, ResolveError> {
        self.check_synced().map_err(ResolveError::Store)?;
        let idx = self.index.read();
        let id = resolve::resolve(
            query,
            |name| idx.records.get(name).map(|r| r.id.clone()),
            |prefix| {
                idx.by_id
                    .range::<str, _>((
                        std::ops::Bound::Included(prefix),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(|(id, _)| id.starts_with(prefix))
                    .take(2)
                    .map(|(id, _)| id.clone())
                    .collect()
            },
        )?;
        Ok(id.and_then(|id| idx.view(&id)))
    }

    fn write_index(&self) -> parking_lot::RwLockWriteGuard<'_, Index> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.index.write()
    }

    /// A record's (image ID, target digest, pinned), if it is in the index.
    pub fn record(&self, name: &str) -> Option<RecordState> {
        let idx = self.index.read();
        idx.records.get(name).map(|r| RecordState {
            image_id: r.id.clone(),
            target: r.target.clone(),
            pinned: r.pinned,
        })
    }

    /// Changes whenever the index changes (for response caches).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The image a record name points to, if any.
    pub fn get_by_record(&self, name: &str) -> Option<ImageView> {
        let idx = self.index.read();
        let id = idx.records.get(name)?.id.clone();
        idx.view(&id)
    }

    /// Re-read one record from containerd and update the index.
    pub async fn refresh(&self, name: &str) -> Result<(), ContainerdError> {
        match self.cd.get_image(name).await? {
            Some(rec) => self.apply_record(rec).await,
            None => {
                self.write_index().remove(name);
            }
        }
        Ok(())
    }

    /// Forget records we just deleted (events will confirm).
    pub fn forget(&self, names: &[String]) {
        let mut idx = self.write_index();
        for n in names {
            idx.remove(n);
        }
    }

    async fn info_for(&self, rec: &ImageRecord) -> Option<Arc<ImageInfo>> {
        let target = rec.target.as_ref()?;
        if let Some(i) = self.cache.read().get(&target.digest) {
            return Some(i.clone());
        }
        match inspect::inspect(&self.cd, &self.matcher, &target.media_type, &target.digest).await {
            Ok(info) => {
                let info = Arc::new(info);
                let mut c = self.cache.write();
                if c.len() > MAX_CACHED_TARGETS {
                    c.clear();
                }
                c.insert(target.digest.clone(), info.clone());
                Some(info)
            }
            Err(e) => {
                tracing::debug!(record = %rec.name, error = %e, "image record skipped: not usable on this node");
                None
            }
        }
    }

    /// Pinned by its record label or by the config's `pinned_images`.
    fn is_pinned(&self, rec: &ImageRecord) -> bool {
        rec.labels.get(labels::CRI_PINNED).map(String::as_str) == Some(labels::CRI_PINNED_VALUE)
            || self.pinned_names.contains(&rec.name)
    }

    async fn apply_record(&self, rec: ImageRecord) {
        let pinned = self.is_pinned(&rec);
        match self.info_for(&rec).await {
            Some(info) => self.write_index().insert(rec.name, info, pinned),
            None => self.write_index().remove(&rec.name),
        }
    }

    /// Rebuild the whole index from containerd.
    pub async fn resync(&self) -> Result<(), ContainerdError> {
        let records = self.cd.list_images().await?;
        let mut fresh = Vec::with_capacity(records.len());
        for rec in records {
            let pinned = self.is_pinned(&rec);
            if let Some(info) = self.info_for(&rec).await {
                fresh.push((rec.name, info, pinned));
            }
        }
        let mut idx = Index::default();
        for (name, info, pinned) in fresh {
            idx.insert(name, info, pinned);
        }
        *self.write_index() = idx;
        Ok(())
    }

    /// Keep the index in sync forever: subscribe to image events, resync,
    /// apply events; on any break mark unsynced and retry with backoff.
    ///
    /// containerd sends the subscription's response headers only with the
    /// first event, so the subscription runs in its own task that forwards
    /// events; the resync starts once the request is on its way.
    pub async fn run_sync(self: Arc<Self>) {
        let mut backoff = RESYNC_BACKOFF_MIN;
        loop {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<
                Result<crate::containerd::Envelope, String>,
            >(EVENT_QUEUE);
            let cd = self.cd.clone();
            let sub = tokio::spawn(async move {
                match cd.subscribe_images().await {
                    Ok(mut events) => {
                        while let Some(ev) = events.next().await {
                            let item = ev.map_err(|e| e.message().to_string());
                            let end = item.is_err();
                            if tx.send(item).await.is_err() || end {
                                return;
                            }
                        }
                        let _ = tx.send(Err("event stream ended".into())).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                    }
                }
            });
            // Give the subscription a moment to reach containerd before listing.
            tokio::time::sleep(SUBSCRIBE_HEADSTART).await;
            match self.resync().await {
                // The subscription ended (containerd went away or came up
                // too late for it) while the list ran: events since then
                // would be missed, so this is not in sync; try again rather
                // than answer for a moment and then refuse.
                Ok(()) if sub.is_finished() => {
                    tracing::debug!("image event subscription ended during the resync; again")
                }
                Ok(()) => {
                    if !self.synced.swap(true, Ordering::AcqRel) {
                        tracing::info!(images = self.len(), "image index in sync with containerd");
                    }
                    backoff = RESYNC_BACKOFF_MIN;
                    let mut periodic = tokio::time::interval(PERIODIC_RESYNC);
                    periodic.tick().await;
                    loop {
                        tokio::select! {
                            ev = rx.recv() => match ev {
                                Some(Ok(env)) => self.apply_event(env).await,
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "containerd event stream broke; reconnecting");
                                    break;
                                }
                                None => break,
                            },
                            _ = periodic.tick() => {
                                if let Err(e) = self.resync().await {
                                    tracing::warn!(error = %e, "periodic resync failed");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "containerd not reachable"),
            }
            sub.abort();
            self.synced.store(false, Ordering::Release);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESYNC_BACKOFF_MAX);
        }
    }

    async fn apply_event(&self, env: crate::containerd::Envelope) {
        let Some(any) = env.event else { return };
        use containerd_client::services::v1::{ImageCreate, ImageDelete, ImageUpdate};
        let name = match env.topic.as_str() {
            "/images/create" => ImageCreate::decode(any.value.as_slice())
                .ok()
                .map(|e| e.name),
            "/images/update" => ImageUpdate::decode(any.value.as_slice())
                .ok()
                .map(|e| e.name),
            "/images/delete" => {
                if let Ok(e) = ImageDelete::decode(any.value.as_slice()) {
                    self.write_index().remove(&e.name);
                }
                None
            }
            _ => None,
        };
        if let Some(name) = name {
            if let Err(e) = self.refresh(&name).await {
                tracing::warn!(record = %name, error = %e, "cannot refresh image record");
            }
        }
    }
}
