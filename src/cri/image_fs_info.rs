//! ImageFsInfo: the snapshotter's usage from the background sampler.

use k8s_cri::v1 as cri;
use tonic::Status;

use super::ImageService;

pub async fn handle(
    svc: &ImageService,
    _req: cri::ImageFsInfoRequest,
) -> Result<cri::ImageFsInfoResponse, Status> {
    let u = svc.imagefs.current();
    let usage = cri::FilesystemUsage {
        timestamp: u.timestamp_ns,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: u.mountpoint,
        }),
        used_bytes: Some(cri::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: u.inodes_used,
        }),
    };
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![usage],
        container_filesystems: vec![],
    })
}
