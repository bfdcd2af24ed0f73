//! The scenarios. Each drives both image services through the CRI API, A/B
//! alternating run by run, and returns typed measurements.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cri_imaged_test_rig::{pull, remove, status, Containerd, CriImaged, TestEnv};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

use crate::images::{many_images_tar, Img};
use crate::stats::{fmt_t, secs};
use crate::system::{rss_kib, Pids};

pub type Client = ImageServiceClient<Channel>;

pub const OURS: &str = "cri-imaged";
pub const THEIRS: &str = "containerd-CRI";

// ---------------------------------------------------------------- results

/// Cold pulls (scenarios 1-3), seconds per run, plus what our pulls spent per phase.
#[derive(Default)]
pub struct Cold {
    pub ours: Vec<f64>,
    pub theirs: Vec<f64>,
    pub phases: Vec<BTreeMap<String, f64>>,
    /// CPU seconds per run (containerd, cri-imaged, registry) during our pulls / theirs.
    pub cpu_ours: Vec<[f64; 3]>,
    pub cpu_theirs: Vec<[f64; 3]>,
    /// Seconds from our PullImage call until its layer blobs were committed
    /// to the content store (its lease released; the native unpack commits
    /// them in the background).
    pub stored: Vec<f64>,
}

/// One cold scenario as run: number, title, image, result, target ratio.
pub struct ColdScenario<'a> {
    pub n: u32,
    pub title: String,
    pub img: &'a Img,
    pub result: Cold,
    pub target: f64,
}

/// Warm PullImage (scenario 4): seconds per call.
pub struct Warm {
    pub ours: Vec<f64>,
    pub theirs: Vec<f64>,
}

/// Concurrent cold pulls of one image (scenario 5).
pub struct Conc {
    pub ours_wall: Vec<f64>,
    pub theirs_wall: Vec<f64>,
    pub ours_gets: Vec<usize>,
    pub theirs_gets: Vec<usize>,
    pub blobs: usize,
}

/// Latencies of one RPC at one image count (scenario 6).
pub struct ListRow {
    pub n: usize,
    pub rpc: &'static str,
    pub ours: Vec<f64>,
    pub theirs: Vec<f64>,
}

/// Memory and event lag at one image count (scenario 6).
pub struct ListSize {
    pub n: usize,
    /// cri-imaged RSS after the calls (KiB).
    pub ours_rss: Option<u64>,
    /// containerd RSS, whole daemon (KiB).
    pub containerd_rss: Option<u64>,
    /// Seconds until each service listed every imported image.
    pub ours_visible: f64,
    pub theirs_visible: f64,
    /// cri-imaged RSS before the calls (KiB).
    pub ours_rss_before: Option<u64>,
}

/// Scenario 6.
#[derive(Default)]
pub struct List {
    pub rows: Vec<ListRow>,
    pub sizes: Vec<ListSize>,
}

// ---------------------------------------------------------------- helpers

pub async fn pull_once(c: &mut Client, r: &str) -> String {
    match pull(c, r).await {
        Ok(id) => id,
        Err(e) => panic!("PullImage {r}: {e}"),
    }
}

/// Bring `img` to a cold state via service `c`: RemoveImage through the same
/// service, then make sure content and snapshots are gone (containerd's GC
/// runs synchronously on the last record delete); leftovers are removed with
/// ctr and counted in `forced`.
/// `--settle`: the removal's writes flushed (`sync`), then a pause, so that
/// what make_cold deleted does not weigh on the next run (ext4 skips inodes
/// deleted in the last 30 s when it allocates; see BENCHMARKS.md).
pub async fn settle_disk(settle: Duration) {
    if !settle.is_zero() {
        let _ = std::process::Command::new("sync").status();
        tokio::time::sleep(settle).await;
    }
}

pub async fn make_cold(env: &TestEnv, c: &mut Client, im: &Img, forced: &mut usize) {
    let cd = &env.containerd;
    let names = |cd: &Containerd| -> Vec<String> {
        let id = im.img.config_digest.clone();
        cd.image_names()
            .into_iter()
            .filter(|n| {
                n.starts_with(&format!("{}:", im.name))
                    || n.starts_with(&format!("{}@", im.name))
                    || *n == id
            })
            .collect()
    };
    for attempt in 0..20 {
        let _ = remove(c, &im.reference).await;
        let _ = remove(c, &im.img.config_digest).await;
        if names(cd).is_empty() {
            break;
        }
        // The service's cache may not have seen the other service's records yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if attempt == 19 {
            for n in names(cd) {
                let _ = cd.ctr(&["images", "rm", "--sync", &n]);
            }
            *forced += 1;
        }
    }
    let want: Vec<String> = im.digests();
    let chains = im.img.chain_ids();
    let gone = |cd: &Containerd| -> bool {
        let content = cd.content_digests();
        let snaps = cd.snapshot_keys();
        !want.iter().any(|d| content.contains(d)) && !chains.iter().any(|k| snaps.contains(k))
    };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if gone(cd) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *forced += 1;
    eprintln!("compare: forcing cleanup of {}", im.reference);
    for k in chains.iter().rev() {
        let _ = cd.ctr(&["snapshots", "--snapshotter", &cd.snapshotter, "rm", k]);
    }
    let content = cd.content_digests();
    for d in &want {
        if content.contains(d) {
            let _ = cd.ctr(&["content", "rm", d]);
        }
    }
    assert!(
        gone(cd),
        "could not clean {} (leases: {:?})",
        im.reference,
        cd.leases()
    );
}

/// `cri_imaged_pull_phase_duration_seconds_sum{phase=...}` values.
pub fn phase_sums(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("cri_imaged_pull_phase_duration_seconds_sum{") {
            let Some(q) = rest.find("phase=\"") else {
                continue;
            };
            let after = &rest[q + 7..];
            let Some(end) = after.find('"') else { continue };
            let phase = after[..end].to_string();
            if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                m.insert(phase, v);
            }
        }
    }
    m
}

// ---------------------------------------------------------------- scenarios

#[allow(clippy::too_many_arguments)]
pub async fn cold_scenario(
    env: &TestEnv,
    d: &CriImaged,
    pids: Pids,
    ours: &mut Client,
    theirs: &mut Client,
    im: &Img,
    runs: usize,
    service: &str,
    settle: Duration,
    forced: &mut usize,
) -> Cold {
    let mut r = Cold::default();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            if (service == "ours" && !is_ours) || (service == "containerd" && is_ours) {
                continue;
            }
            let c = if is_ours { &mut *ours } else { &mut *theirs };
            make_cold(env, c, im, forced).await;
            settle_disk(settle).await;
            let before = if is_ours {
                Some(phase_sums(&d.metrics().await))
            } else {
                None
            };
            let c0 = pids.cpu();
            let t = Instant::now();
            let id = pull_once(c, &im.reference).await;
            let el = secs(t.elapsed());
            if is_ours {
                // Our blobs may still be on their way into the content store:
                // wait (and count their CPU) before the next run starts, so
                // that work never lands on the other service's clock.
                let until = Instant::now() + Duration::from_secs(120);
                while !env.containerd.leases().is_empty() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                r.stored.push(secs(t.elapsed()));
            }
            let c1 = pids.cpu();
            let cpu = [c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2]];
            if is_ours {
                r.cpu_ours.push(cpu);
            } else {
                r.cpu_theirs.push(cpu);
            }
            assert_eq!(id, im.img.config_digest, "image id");
            if let Some(b) = before {
                let a = phase_sums(&d.metrics().await);
                let delta = a
                    .iter()
                    .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                    .collect();
                r.phases.push(delta);
                r.ours.push(el);
            } else {
                r.theirs.push(el);
            }
            eprintln!(
                "  run {run} {:<15} {}",
                if is_ours { OURS } else { THEIRS },
                fmt_t(el)
            );
        }
    }
    r
}

pub async fn warm_scenario(
    ours: &mut Client,
    theirs: &mut Client,
    im: &Img,
    runs: usize,
    calls: usize,
) -> Warm {
    pull_once(ours, &im.reference).await;
    // containerd's CRI learns about the image from events; wait until it sees it.
    for _ in 0..100 {
        if status(theirs, &im.reference).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pull_once(theirs, &im.reference).await;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            let c = if is_ours { &mut *ours } else { &mut *theirs };
            for _ in 0..calls {
                let t = Instant::now();
                pull_once(c, &im.reference).await;
                let el = secs(t.elapsed());
                if is_ours {
                    a.push(el)
                } else {
                    b.push(el)
                }
            }
        }
    }
    Warm { ours: a, theirs: b }
}

pub async fn concurrent_scenario(
    env: &TestEnv,
    ours: &mut Client,
    theirs: &mut Client,
    im: &Img,
    runs: usize,
    n: usize,
    forced: &mut usize,
) -> Conc {
    let blobs = im.blob_digests();
    let mut r = Conc {
        ours_wall: vec![],
        theirs_wall: vec![],
        ours_gets: vec![],
        theirs_gets: vec![],
        blobs: blobs.len(),
    };
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            let c = if is_ours { &mut *ours } else { &mut *theirs };
            make_cold(env, c, im, forced).await;
            let before: Vec<usize> = blobs
                .iter()
                .map(|d| env.registry.blob_get_count(d))
                .collect();
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..n {
                let mut cc = c.clone();
                let r = im.reference.clone();
                tasks.push(tokio::spawn(async move { pull(&mut cc, &r).await }));
            }
            for tk in tasks {
                let id = tk
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("concurrent pull: {e}"));
                assert_eq!(id, im.img.config_digest);
            }
            let el = secs(t.elapsed());
            tokio::time::sleep(Duration::from_millis(300)).await; // access log lines
            let after: Vec<usize> = blobs
                .iter()
                .map(|d| env.registry.blob_get_count(d))
                .collect();
            let per_blob: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            let total: usize = per_blob.iter().sum();
            eprintln!(
                "  run {run} {:<15} {} ({} blob GETs for {} blobs, max {} per blob)",
                if is_ours { OURS } else { THEIRS },
                fmt_t(el),
                total,
                blobs.len(),
                per_blob.iter().max().unwrap_or(&0)
            );
            if is_ours {
                r.ours_wall.push(el);
                r.ours_gets.push(total);
            } else {
                r.theirs_wall.push(el);
                r.theirs_gets.push(total);
            }
        }
    }
    r
}

async fn list_len(c: &mut Client) -> usize {
    c.list_images(cri::ListImagesRequest { filter: None })
        .await
        .map(|r| r.into_inner().images.len())
        .unwrap_or(0)
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn list_scenario(
    env: &TestEnv,
    d: &CriImaged,
    ours: &mut Client,
    theirs: &mut Client,
    sizes: &[usize],
    calls: usize,
) -> List {
    let mut res = List::default();
    let (rows, rss) = (&mut res.rows, &mut res.sizes);
    let name = format!("{}/bench/many", env.registry_addr());
    let mut have = 0usize;
    let mut all: Vec<(String, String)> = Vec::new();
    let base_ours = list_len(ours).await;
    let base_theirs = list_len(theirs).await;
    for &n in sizes {
        if n > have {
            let (tar, imgs) = many_images_tar(&name, have, n);
            let path = env.containerd.dir.join(format!("many-{have}-{n}.tar"));
            std::fs::write(&path, &tar).unwrap();
            let t = Instant::now();
            let out =
                env.containerd
                    .ctr(&["images", "import", "--no-unpack", &path.to_string_lossy()]);
            assert!(
                out.status.success(),
                "ctr images import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = std::fs::remove_file(&path);
            eprintln!(
                "  imported {} images in {}",
                n - have,
                fmt_t(secs(t.elapsed()))
            );
            all.extend(imgs);
            have = n;
        }
        // Both services learn about records created in k8s.io from events.
        let t = Instant::now();
        let (mut so, mut st) = (f64::NAN, f64::NAN);
        while t.elapsed() < Duration::from_secs(300) && (so.is_nan() || st.is_nan()) {
            if so.is_nan() && list_len(ours).await >= base_ours + n {
                so = secs(t.elapsed());
            }
            if st.is_nan() && list_len(theirs).await >= base_theirs + n {
                st = secs(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!so.is_nan(), "cri-imaged never listed {n} images");
        assert!(!st.is_nan(), "containerd's CRI never listed {n} images");
        eprintln!(
            "  {n} images visible: {OURS} after {}, {THEIRS} after {}",
            fmt_t(so),
            fmt_t(st)
        );

        let rss_before = d.pid().and_then(rss_kib);
        let mut rng = Lcg(n as u64);
        let mut lo = (vec![], vec![]);
        let mut st_tag = (vec![], vec![]);
        let mut st_short = (vec![], vec![]);
        let block = 50usize;
        let mut done = 0;
        let mut flip = false;
        while done < calls {
            let k = block.min(calls - done);
            for is_ours in if flip { [false, true] } else { [true, false] } {
                let c = if is_ours { &mut *ours } else { &mut *theirs };
                for _ in 0..k {
                    let t = Instant::now();
                    let r = c
                        .list_images(cri::ListImagesRequest { filter: None })
                        .await
                        .expect("ListImages");
                    let el = secs(t.elapsed());
                    debug_assert!(r.into_inner().images.len() >= n);
                    if is_ours {
                        lo.0.push(el)
                    } else {
                        lo.1.push(el)
                    }
                }
                for _ in 0..k {
                    let (tag, _) = &all[rng.next(all.len())];
                    let t = Instant::now();
                    let img = status(c, tag).await;
                    let el = secs(t.elapsed());
                    assert!(img.is_some(), "ImageStatus {tag} empty");
                    if is_ours {
                        st_tag.0.push(el)
                    } else {
                        st_tag.1.push(el)
                    }
                }
                for _ in 0..k {
                    let (_, id) = &all[rng.next(all.len())];
                    let short = &id[7..19];
                    let t = Instant::now();
                    let img = status(c, short).await;
                    let el = secs(t.elapsed());
                    assert!(img.is_some(), "ImageStatus {short} empty");
                    if is_ours {
                        st_short.0.push(el)
                    } else {
                        st_short.1.push(el)
                    }
                }
            }
            flip = !flip;
            done += k;
        }
        rows.push(ListRow {
            n,
            rpc: "ListImages",
            ours: lo.0,
            theirs: lo.1,
        });
        rows.push(ListRow {
            n,
            rpc: "ImageStatus (tag)",
            ours: st_tag.0,
            theirs: st_tag.1,
        });
        rows.push(ListRow {
            n,
            rpc: "ImageStatus (short ID)",
            ours: st_short.0,
            theirs: st_short.1,
        });
        rss.push(ListSize {
            n,
            ours_rss: d.pid().and_then(rss_kib),
            containerd_rss: env.containerd.pid().and_then(rss_kib),
            ours_visible: so,
            theirs_visible: st,
            ours_rss_before: rss_before,
        });
    }
    res
}
