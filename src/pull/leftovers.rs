//! What a killed cri-imaged left behind mid-pull, found and removed at
//! start: active snapshots of interrupted unpacks, and entries of its
//! staging and temporary directories whose owner process is gone.

use super::unpack::EXTRACT_KEY_PREFIX;
use crate::containerd::ContainerdError;

/// Remove active snapshots a killed cri-imaged left behind mid-unpack: our
/// `extract-crii-<pid>-…` keys whose process is not a live cri-imaged (the
/// lease of that pull would otherwise keep them until it expires). Runs at
/// start; the retried pull prepares a fresh key.
pub async fn cleanup_interrupted(
    cd: &crate::containerd::Containerd,
    snapshotters: &[String],
) -> Result<usize, ContainerdError> {
    let mut removed = 0;
    for sn in snapshotters {
        let infos = match cd.list_snapshots(sn).await {
            Ok(v) => v,
            // A snapshotter that is not loaded has nothing of ours.
            Err(ContainerdError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        for info in infos {
            let Some(rest) = info.name.strip_prefix(EXTRACT_KEY_PREFIX) else {
                continue;
            };
            if info.kind != containerd_client::services::v1::snapshots::Kind::Active as i32 {
                continue;
            }
            if owner_is_alive(rest) {
                continue;
            }
            match cd.remove_snapshot(sn, &info.name).await {
                Ok(()) | Err(ContainerdError::NotFound(_)) => {
                    removed += 1;
                    tracing::info!(snapshotter = %sn, key = %info.name, "removed a snapshot left by an interrupted unpack");
                }
                Err(e) => {
                    tracing::warn!(snapshotter = %sn, key = %info.name, error = %e, "cannot remove a snapshot left by an interrupted unpack")
                }
            }
        }
    }
    Ok(removed)
}

/// Whether a leftover named `<pid>-…` is this process's or another running
/// cri-imaged's (and must stay).
pub(super) fn owner_is_alive(name: &str) -> bool {
    let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|p| p == std::process::id() || pid_is_cri_imaged(p))
}

/// Remove with `remove` every entry of `dir` whose owner (`owner_is_alive`)
/// is gone; returns how many went. Runs at start.
pub(super) fn remove_dead_leftovers(
    dir: &std::path::Path,
    remove: impl Fn(&std::path::Path) -> std::io::Result<()>,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| !owner_is_alive(&e.file_name().to_string_lossy()))
        .filter(|e| remove(&e.path()).is_ok())
        .count()
}

/// Is `pid` a running cri-imaged (in our pid namespace)?
pub(super) fn pid_is_cri_imaged(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("cri-imaged"))
        .unwrap_or(false)
}
