//! A blob on its way in: the download appends to an unnamed temporary file
//! and never waits for anyone; readers (the native unpack on a blocking
//! thread, the content-store writer in async code) follow it at their own
//! pace. So a slow disk or a slow containerd cannot stall the registry
//! connection (and trip the stall watchdog), and memory stays flat.
//!
//! A named spool (`Spool::create_named`) is a file that outlives a killed
//! process, with a small JSON record beside it (digest, size, labels): the
//! blob is stored in containerd's content store only after the pull (put in
//! place as its blob file, `place.rs`), and a restarted cri-imaged commits
//! what a killed one left (`recover.rs`).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Complete,
    /// The download failed or was dropped; readers stop with an error.
    Failed,
}

pub struct Spool {
    file: File,
    /// A named spool's data file and its record, removed when dropped.
    named: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// containerd's own ingest file, when the spool is that (`open_at`).
    ingest: Option<std::path::PathBuf>,
    inner: Mutex<(u64, State)>,
    /// The length a blocked reader waits for (changed under `inner`'s lock):
    /// the writer wakes readers only when a read of `READ_BATCH` bytes (or
    /// the end) is there, not for every few KiB the network delivers.
    wake_at: std::sync::atomic::AtomicU64,
    cond: Condvar,
    notify: Notify,
    /// Whether the blob made it into containerd's content store (None: not yet).
    stored: tokio::sync::watch::Sender<Option<bool>>,
    /// Why the download failed, for the unpack reading it to report that
    /// (the cause) rather than its own "abandoned".
    failure: Mutex<Option<super::PullError>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (len, state) = *self.inner.lock();
        f.debug_struct("Spool")
            .field("len", &len)
            .field("state", &state)
            .finish()
    }
}

impl Spool {
    /// A new spool in `dir` (unlinked at once: nothing to clean up).
    pub fn create(dir: &Path) -> io::Result<Arc<Spool>> {
        Ok(Spool::with_file(tempfile::tempfile_in(dir)?))
    }

    /// A new spool in `dir` that survives this process if it is killed:
    /// `cri-imaged-spool-<pid>-<instance>-<random>.blob` and its record `….json`
    /// (`record`, written first). Both are removed when the spool is dropped.
    pub fn create_named(dir: &Path, record: &SpoolRecord) -> io::Result<Arc<Spool>> {
        let stem = format!(
            "{SPOOL_PREFIX}{}-{:016x}-{:016x}",
            std::process::id(),
            *INSTANCE,
            rand::random::<u64>()
        );
        let (data, meta) = (
            dir.join(format!("{stem}.blob")),
            dir.join(format!("{stem}.json")),
        );
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        std::fs::write(&meta, json)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&data)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&meta);
            })?;
        let mut s = Spool::bare(file);
        s.named = Some((data, meta));
        Ok(Arc::new(s))
    }

    /// A spool that is the file at `path` (emptied first): containerd's own
    /// ingest file, so the download lands where containerd will commit it.
    pub fn open_at(path: &Path) -> io::Result<Arc<Spool>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        let mut s = Spool::bare(file);
        s.ingest = Some(path.to_path_buf());
        Ok(Arc::new(s))
    }

    /// A blob already in containerd's content store, as a complete spool
    /// (read only): the native unpack reads it as it reads a download, so
    /// a layer whose blob is here is written with the same limits.
    pub fn stored_blob(path: &Path) -> io::Result<Arc<Spool>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let s = Spool::bare(file);
        *s.inner.lock() = (len, State::Complete);
        s.stored.send_replace(Some(true));
        Ok(Arc::new(s))
    }

    /// The data file and its name, when it has one.
    pub fn named_file(&self) -> Option<(&File, &Path)> {
        let path = match (&self.named, &self.ingest) {
            (Some((data, _)), _) => data,
            (None, Some(ingest)) => ingest,
            (None, None) => return None,
        };
        Some((&self.file, path))
    }

    /// Whether the data file is containerd's ingest file (`open_at`).
    pub fn in_ingest(&self) -> bool {
        self.ingest.is_some()
    }

    fn with_file(file: File) -> Arc<Spool> {
        Arc::new(Spool::bare(file))
    }

    fn bare(file: File) -> Spool {
        Spool {
            file,
            named: None,
            ingest: None,
            inner: Mutex::new((0, State::Open)),
            wake_at: std::sync::atomic::AtomicU64::new(u64::MAX),
            cond: Condvar::new(),
            notify: Notify::new(),
            stored: tokio::sync::watch::channel(None).0,
            failure: Mutex::new(None),
        }
    }

    /// Why the download failed, when it did (`SpoolWriter::fail`).
    pub fn failure(&self) -> Option<super::PullError> {
        self.failure.lock().clone()
    }

    /// The content-store write of this blob ended (`ok`: committed).
    pub fn set_stored(&self, ok: bool) {
        self.stored.send_replace(Some(ok));
    }

    /// Wait until the content-store write ended; true when committed.
    pub async fn wait_stored(&self) -> bool {
        let mut rx = self.stored.subscribe();
        let r = match rx.wait_for(|s| s.is_some()).await {
            Ok(v) => v.unwrap_or(false),
            Err(_) => false,
        };
        r
    }

    /// The writing end; dropping it before `complete` fails the readers.
    pub fn writer(self: &Arc<Self>) -> SpoolWriter {
        SpoolWriter {
            spool: self.clone(),
            done: false,
        }
    }

    fn set(&self, f: impl FnOnce(&mut (u64, State))) {
        let wake = {
            let mut g = self.inner.lock();
            f(&mut g);
            let wake = g.1 != State::Open || g.0 >= self.wake_at.load(Ordering::Relaxed);
            if wake {
                self.wake_at.store(u64::MAX, Ordering::Relaxed);
            }
            wake
        };
        if wake {
            self.cond.notify_all();
        }
        self.notify.notify_waiters();
    }

    /// A blocking reader from offset 0.
    pub fn reader(self: &Arc<Self>) -> SpoolReader {
        SpoolReader {
            spool: self.clone(),
            pos: 0,
        }
    }

    /// Async: wait until more than `pos` bytes are there (or the end).
    /// Returns the bytes available and whether the spool is complete.
    pub async fn wait_past(&self, pos: u64) -> io::Result<(u64, bool)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (len, state) = *self.inner.lock();
            match state {
                State::Failed => return Err(io::Error::other("the download was abandoned")),
                State::Complete => return Ok((len, true)),
                State::Open if len > pos => return Ok((len, false)),
                State::Open => notified.await,
            }
        }
    }

    /// The bytes there so far.
    pub fn reader_len(&self) -> u64 {
        self.inner.lock().0
    }

    /// The download was abandoned (the pull failed or was canceled).
    pub fn is_failed(&self) -> bool {
        self.inner.lock().1 == State::Failed
    }

    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.file.read_at(buf, pos)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some((data, meta)) = &self.named {
            let _ = std::fs::remove_file(data);
            let _ = std::fs::remove_file(meta);
        }
    }
}

/// File name prefix of named spools:
/// `cri-imaged-spool-<pid>-<instance>-<random>.{blob,json}`.
pub const SPOOL_PREFIX: &str = "cri-imaged-spool-";

/// This process's instance, in its spools' names: a restarted cri-imaged
/// that got its predecessor's pid still tells their spools from its own.
pub static INSTANCE: once_cell::sync::Lazy<u64> = once_cell::sync::Lazy::new(rand::random);

/// What a named spool holds: enough to commit it after a crash.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpoolRecord {
    /// The containerd (socket) and namespace the blob belongs to: another
    /// cri-imaged on the host serving another containerd leaves it alone.
    pub containerd: String,
    pub namespace: String,
    pub digest: String,
    pub size: u64,
    pub labels: std::collections::HashMap<String, String>,
}

pub struct SpoolWriter {
    spool: Arc<Spool>,
    done: bool,
}

impl SpoolWriter {
    /// Append `data` at `offset` (the download's position; a resumed range
    /// request continues where the last one stopped).
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.spool.file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        self.spool.set(|s| s.0 = s.0.max(end));
        Ok(())
    }

    /// The whole blob is in, and its digest was checked: a reader that
    /// reaches the end has read verified bytes.
    pub fn complete(mut self) {
        self.done = true;
        self.spool.set(|s| s.1 = State::Complete);
    }

    /// The download failed with `e`: recorded before the readers are
    /// failed, so the unpack reading the spool can report this cause.
    pub fn fail(self, e: super::PullError) {
        self.spool.failure.lock().get_or_insert(e);
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.done {
            self.spool.set(|s| s.1 = State::Failed);
        }
    }
}

/// A blocked reader is woken when this much more is there (or the end).
const READ_BATCH: u64 = 128 << 10;

/// Reads the spool as it grows; blocks for more; EOF at the complete end.
pub struct SpoolReader {
    spool: Arc<Spool>,
    pos: u64,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let batch = (buf.len() as u64).min(READ_BATCH);
        let avail = {
            let mut g = self.spool.inner.lock();
            loop {
                match g.1 {
                    State::Failed => return Err(io::Error::other("the download was abandoned")),
                    _ if g.0 >= self.pos + batch => break g.0,
                    State::Complete if g.0 > self.pos => break g.0,
                    State::Complete => return Ok(0),
                    State::Open => {
                        self.spool
                            .wake_at
                            .fetch_min(self.pos + batch, Ordering::Relaxed);
                        self.spool.cond.wait(&mut g)
                    }
                }
            }
        };
        let want = buf.len().min((avail - self.pos) as usize);
        let n = self.spool.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_follows_the_writer_and_sees_failure() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path()).unwrap();
        let w = s.writer();
        let mut r = s.reader();
        let t = std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        });
        w.write_at(b"hello ", 0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        w.write_at(b"world", 6).unwrap();
        w.complete();
        assert_eq!(t.join().unwrap().unwrap(), b"hello world");

        let s = Spool::create(dir.path()).unwrap();
        let w = s.writer();
        let mut r = s.reader();
        let t = std::thread::spawn(move || r.read_to_end(&mut Vec::new()));
        w.write_at(b"part", 0).unwrap();
        drop(w);
        assert!(
            t.join().unwrap().is_err(),
            "a dropped download fails the reader"
        );
    }

    #[test]
    fn a_named_spool_keeps_its_files_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let rec = SpoolRecord {
            containerd: "/run/containerd/containerd.sock".into(),
            namespace: "k8s.io".into(),
            digest: "sha256:abc".into(),
            size: 3,
            labels: [("k".to_string(), "v".to_string())].into(),
        };
        let s = Spool::create_named(dir.path(), &rec).unwrap();
        s.writer().write_at(b"abc", 0).unwrap();
        let names = || {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let n = names();
        assert_eq!(n.len(), 2, "{n:?}");
        assert!(n[0].starts_with(SPOOL_PREFIX) && n[0].ends_with(".blob"));
        assert!(n[1].ends_with(".json"));
        let back: SpoolRecord =
            serde_json::from_slice(&std::fs::read(dir.path().join(&n[1])).unwrap()).unwrap();
        assert_eq!(back, rec);
        assert_eq!(std::fs::read(dir.path().join(&n[0])).unwrap(), b"abc");
        drop(s);
        assert!(names().is_empty());
    }

    #[tokio::test]
    async fn async_wait_wakes_on_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path()).unwrap();
        let w = s.writer();
        let s2 = s.clone();
        let t = tokio::spawn(async move { s2.wait_past(0).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        w.write_at(b"abc", 0).unwrap();
        assert_eq!(t.await.unwrap().unwrap(), (3, false));
        w.complete();
        assert_eq!(s.wait_past(3).await.unwrap(), (3, true));
    }
}
