//! Real images in the bench (`--real DIR`, OCI layouts from
//! scripts/build-real-images.sh: Debian content laid down by mmdebstrap,
//! apt and buildah): a cold pull of each, a node start (all of them pulled
//! one after another, as kubelet does with serialized pulls, timed until the
//! last PullImage returned and until all deferred work ended), and `tar -x`
//! of the same layers onto the same disk as a floor.
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cri_imaged_test_rig::{BuiltImage, TestEnv};

use crate::images::Img;
use cri_imaged_test_rig::remove;

use crate::scenarios::{make_cold, pull_once, Client, Cold};
use crate::stats::{fmt_t, median, secs};
use crate::system::Pids;

/// The images of `--real` paths: an OCI layout each, or a directory of them.
pub fn load(paths: &[PathBuf], reg: &str) -> Vec<Img> {
    let mut dirs = Vec::new();
    for p in paths {
        if p.join("index.json").exists() {
            dirs.push(p.clone());
        } else if let Ok(rd) = std::fs::read_dir(p) {
            let mut v: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|d| d.join("index.json").exists())
                .collect();
            v.sort();
            dirs.extend(v);
        }
    }
    dirs.iter()
        .map(|d| {
            let img = BuiltImage::from_oci_layout(d, None)
                .unwrap_or_else(|e| panic!("--real {}: {e}", d.display()));
            let name = layout_name(d);
            Img {
                name: format!("{reg}/real/{name}"),
                reference: format!("{reg}/real/{name}:v1"),
                img,
            }
        })
        .collect()
}

/// `python-zstd-0123456789abcdef` -> `python-zstd` (the corpus's cache key cut off).
fn layout_name(d: &Path) -> String {
    let n = d
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    match n.rsplit_once('-') {
        Some((a, k)) if k.len() >= 8 && k.bytes().all(|b| b.is_ascii_hexdigit()) => a.to_string(),
        _ => n,
    }
}

/// Seconds `tar -x` takes to write each layer (decompressing it, as
/// `zcat | tar -x` does) into its own directory under `dir`, as root,
/// keeping owners, modes and xattrs. The directories are removed after.
pub fn tar_floor(im: &Img, dir: &Path) -> Vec<f64> {
    let mut out = Vec::new();
    for (i, (_, bytes, media)) in im.img.blobs.iter().enumerate() {
        let d = dir.join(format!("layer{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let z = if media.contains("zstd") {
            "--zstd"
        } else if media.contains("gzip") {
            "-z"
        } else {
            "--no-auto-compress"
        };
        let _ = Command::new("sync").status();
        let t = Instant::now();
        let mut c = Command::new("tar")
            .args([
                z,
                "--same-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-xpf",
                "-",
                "-C",
            ])
            .arg(&d)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tar");
        c.stdin.take().unwrap().write_all(bytes).expect("feed tar");
        let _ = c.wait();
        out.push(secs(t.elapsed()));
    }
    let _ = std::fs::remove_dir_all(dir);
    out
}

/// Every image's records removed first, then each made cold: the real
/// images share layers (minbase is the bottom of the others), so one image
/// cannot be made cold while another still holds its blobs and snapshots.
pub async fn make_all_cold(env: &TestEnv, c: &mut Client, ims: &[Img], forced: &mut usize) {
    for im in ims {
        let _ = remove(c, &im.reference).await;
        let _ = remove(c, &im.img.config_digest).await;
    }
    for im in ims {
        make_cold(env, c, im, forced).await;
    }
}

/// One node start per run and service: every image made cold, then pulled
/// one after another. Seconds until the last PullImage returned, and (ours)
/// until the last deferred blob commit ended (no lease left).
#[derive(Default)]
pub struct NodeStart {
    pub ours_returned: Vec<f64>,
    pub ours_ended: Vec<f64>,
    pub theirs: Vec<f64>,
    pub cpu_ours: Vec<f64>,
    pub cpu_theirs: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
pub async fn node_start(
    env: &TestEnv,
    pids: Pids,
    ours: &mut Client,
    theirs: &mut Client,
    ims: &[Img],
    runs: usize,
    settle: Duration,
    forced: &mut usize,
) -> NodeStart {
    let mut r = NodeStart::default();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            let c = if is_ours { &mut *ours } else { &mut *theirs };
            make_all_cold(env, c, ims, forced).await;
            let _ = Command::new("sync").status();
            crate::scenarios::settle_disk(settle).await;
            let c0 = pids.cpu();
            let t = Instant::now();
            for im in ims {
                pull_once(c, &im.reference).await;
            }
            let returned = secs(t.elapsed());
            if is_ours {
                let until = Instant::now() + Duration::from_secs(300);
                while !env.containerd.leases().is_empty() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                r.ours_ended.push(secs(t.elapsed()));
                r.ours_returned.push(returned);
            } else {
                r.theirs.push(returned);
            }
            let c1 = pids.cpu();
            let cpu = (c1[0] - c0[0]) + (c1[1] - c0[1]);
            if is_ours {
                r.cpu_ours.push(cpu)
            } else {
                r.cpu_theirs.push(cpu)
            }
            eprintln!(
                "  node start run {run} {}: {}",
                if is_ours {
                    "cri-imaged"
                } else {
                    "containerd-CRI"
                },
                fmt_t(returned)
            );
        }
    }
    r
}

/// The report's section on real images.
pub fn render(
    ims: &[Img],
    colds: &[Cold],
    floors: &[Vec<f64>],
    start: Option<&NodeStart>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Real images (`--real`: mmdebstrap, apt and buildah content)\n"
    );
    let _ = writeln!(s, "PullImage until it returned, and (cri-imaged) until its deferred blob commits ended; CPU-s = containerd + the image service; `tar -x` = each layer decompressed and written by GNU tar into its own directory on the same disk, summed.\n");
    let _ = writeln!(s, "| image | layers | MB | cri-imaged returned | cri-imaged ended | containerd-CRI | ratio returned | ratio ended | CPU-s ours / theirs | tar -x (sum) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for ((im, c), f) in ims.iter().zip(colds).zip(floors) {
        let (o, e, t) = (median(&c.ours), median(&c.stored), median(&c.theirs));
        let cpu = |v: &[[f64; 3]]| median(&v.iter().map(|x| x[0] + x[1]).collect::<Vec<_>>());
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} | {} | {} | {:.2}× | {:.2}× | {:.2} / {:.2} | {} ({}) |",
            im.name.rsplit('/').next().unwrap_or_default(),
            im.img.blobs.len(),
            im.mb(),
            fmt_t(o),
            fmt_t(e),
            fmt_t(t),
            o / t,
            e / t,
            cpu(&c.cpu_ours),
            cpu(&c.cpu_theirs),
            fmt_t(f.iter().sum()),
            f.iter().map(|x| fmt_t(*x)).collect::<Vec<_>>().join(" + "),
        );
    }
    if let Some(n) = start {
        let (o, e, t) = (
            median(&n.ours_returned),
            median(&n.ours_ended),
            median(&n.theirs),
        );
        let _ = writeln!(
            s,
            "| **node start**: all of the above, one after another | | | {} | {} | {} | {:.2}× | {:.2}× | {:.2} / {:.2} | |",
            fmt_t(o),
            fmt_t(e),
            fmt_t(t),
            o / t,
            e / t,
            median(&n.cpu_ours),
            median(&n.cpu_theirs),
        );
    }
    s
}
