//! The local fast paths: an image this pull names is already complete here
//! (content and top snapshot), so the pull only makes sure its records exist,
//! writing nothing when they are current.

use std::sync::Arc;

use super::{records, PullError, Puller};
use crate::containerd::{Lease, LeaseKind, LeaseResource, OnDrop};
use crate::manifest::Descriptor;
use crate::reference::Reference;
use crate::store::ImageInfo;

impl Puller {
    /// The image recorded as `<name>@<digest>` is usable here: its records for
    /// this pull exist afterwards, and its info is returned. `target` is the
    /// document the registry served for `digest` (None: the record's own).
    /// None: something is missing, pull it normally.
    pub(super) async fn use_local(
        &self,
        reference: &Reference,
        digest: &str,
        target: Option<&Descriptor>,
        snapshotter: &str,
    ) -> Result<Option<Arc<ImageInfo>>, PullError> {
        let Some(view) = self
            .store
            .get_by_record(&format!("{}@{digest}", reference.name()))
        else {
            return Ok(None);
        };
        let info = view.info;
        let target = target.cloned().unwrap_or_else(|| info.target_descriptor());
        if info.target != target.digest || !self.snapshot_present(&info, snapshotter).await {
            return Ok(None);
        }
        if self.records_current(reference, &target.digest, &info) {
            return Ok(Some(info));
        }
        Ok(self
            .adopt(reference, &target, &info, snapshotter)
            .await?
            .then_some(info))
    }

    /// Every record this pull would write already points at `target` with
    /// this image ID (and is pinned when it should be): nothing to write.
    fn records_current(&self, reference: &Reference, target: &str, info: &ImageInfo) -> bool {
        let pinned = self.is_pinned(reference);
        records::names(reference, target, &info.id).iter().all(|n| {
            self.store.record(n).is_some_and(|r| {
                r.image_id == info.id && r.target == target && (r.pinned || !pinned)
            })
        })
    }

    /// The image's top snapshot exists (an image without layers has none to check).
    async fn snapshot_present(&self, info: &ImageInfo, snapshotter: &str) -> bool {
        info.chain_id.is_empty()
            || matches!(
                self.cd.snapshot_exists(snapshotter, &info.chain_id).await,
                Ok(true)
            )
    }

    /// Write this pull's records for an image that is here. A RemoveImage
    /// running at the same moment may just have collected its content: pin
    /// the target and top snapshot with a short lease first, re-check they
    /// are still there, then write the records (which keep them from then
    /// on). False: something went away, pull it normally.
    async fn adopt(
        &self,
        reference: &Reference,
        target: &Descriptor,
        info: &ImageInfo,
        snapshotter: &str,
    ) -> Result<bool, PullError> {
        // Deep: the target keeps its manifest, config, layers and snapshot.
        let lease = Lease::create(
            &self.cd,
            LeaseKind::Deep,
            self.cfg.lease_expiry,
            OnDrop::Delete,
        )
        .await?;
        lease.add(LeaseResource::Content(&target.digest)).await?;
        if !info.chain_id.is_empty() {
            lease
                .add(LeaseResource::Snapshot {
                    snapshotter,
                    key: &info.chain_id,
                })
                .await?;
        }
        let present = self.cd.content_info(&target.digest).await?.is_some()
            && self.cd.content_info(&info.id).await?.is_some()
            && self.snapshot_present(info, snapshotter).await;
        if !present {
            tracing::debug!(image = %reference, "local image went away while reusing it; pulling");
            return Ok(false);
        }
        self.ensure_records(reference, target, &info.id).await?;
        lease.release().await;
        Ok(true)
    }
}
