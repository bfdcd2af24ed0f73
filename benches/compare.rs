//! cri-imaged vs containerd's built-in CRI image service, side by side.
//!
//! One private containerd (CRI plugin on) and one local docker-registry (the
//! integration-test rig), one cri-imaged (release binary) on the same
//! containerd; both image services are driven through the CRI API, A/B
//! alternating run by run. See BENCHMARKS.md.
//!
//! `cargo bench --bench compare -- [--smoke] [--full] [--runs N] [--out PATH] ...`
//! (`--help` lists every flag).

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use serde_json::json;
use tonic::transport::Channel;

type Client = ImageServiceClient<Channel>;

const MB: usize = 1 << 20;
const OURS: &str = "cri-imaged";
const THEIRS: &str = "containerd-CRI";

// ---------------------------------------------------------------- options

#[derive(Clone, Debug)]
struct Opts {
    smoke: bool,
    runs: usize,
    out: PathBuf,
    single_mb: usize,
    multi_layers: usize,
    multi_mb: usize,
    small_layers: usize,
    small_min_kib: usize,
    small_max_kib: usize,
    warm_calls: usize,
    concurrent: usize,
    list_sizes: Vec<usize>,
    list_calls: usize,
    only: Option<Vec<u32>>,
    /// Which services the cold scenarios drive (profiling aid): both, ours, containerd.
    service: String,
    /// Extra YAML lines for cri-imaged's config.
    daemon_config: String,
}

const HELP: &str = "cargo bench --bench compare -- [flags]
  --smoke              tiny sizes, 1 run, scenario 6 with 10/50 images (< 90 s)
  --full               full sizes: 200 MB single layer, 10 x 20 MB
  --runs N             cold/warm runs per service and scenario (default 5; smoke 1)
  --out PATH           markdown report (default target/bench/report.md)
  --single-mb N        scenario 1 layer size in MB (default 64; full 200)
  --multi-layers N     scenario 2 layer count (default 10)
  --multi-mb N         scenario 2 layer size in MB (default 6; full 20)
  --small-layers N     scenario 3 layer count (default 40)
  --small-min-kib N    scenario 3 smallest layer (default 8)
  --small-max-kib N    scenario 3 largest layer (default 1024)
  --warm-calls N       warm PullImage calls per run and service (default 20)
  --concurrent N       scenario 5 concurrent PullImage calls (default 10)
  --list-sizes A,B,C   scenario 6 image counts (default 100,1000,5000)
  --list-calls N       scenario 6 calls per RPC, size and service (default 1000)
  --only 1,2,...       run only these scenarios (7 needs 1-3)
  --daemon-config YAML extra cri-imaged config line(s), e.g. 'max_concurrent_downloads_per_pull: 6'
  --service S          cold scenarios 1-3 drive only `ours` or `containerd` (profiling aid; default both)";

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let full = args.iter().any(|a| a == "--full");
    let mut o = Opts {
        smoke,
        runs: if smoke { 1 } else { 5 },
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/report.md"),
        single_mb: if smoke {
            4
        } else if full {
            200
        } else {
            64
        },
        multi_layers: if smoke { 3 } else { 10 },
        multi_mb: if smoke {
            1
        } else if full {
            20
        } else {
            6
        },
        small_layers: if smoke { 8 } else { 40 },
        small_min_kib: 8,
        small_max_kib: if smoke { 128 } else { 1024 },
        warm_calls: if smoke { 5 } else { 20 },
        concurrent: 10,
        list_sizes: if smoke {
            vec![10, 50]
        } else {
            vec![100, 1000, 5000]
        },
        list_calls: if smoke { 100 } else { 1000 },
        only: None,
        service: "both".into(),
        daemon_config: String::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| -> String {
            it.next()
                .cloned()
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
        };
        let num = |s: String, name: &str| -> usize {
            s.parse()
                .unwrap_or_else(|_| die(&format!("{name}: not a number: {s}")))
        };
        match a.as_str() {
            "--smoke" | "--full" | "--bench" => {}
            "--help" | "-h" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            "--runs" => o.runs = num(val(a), a).max(1),
            "--out" => o.out = PathBuf::from(val(a)),
            "--single-mb" => o.single_mb = num(val(a), a).max(1),
            "--multi-layers" => o.multi_layers = num(val(a), a).max(1),
            "--multi-mb" => o.multi_mb = num(val(a), a).max(1),
            "--small-layers" => o.small_layers = num(val(a), a).max(1),
            "--small-min-kib" => o.small_min_kib = num(val(a), a).max(1),
            "--small-max-kib" => o.small_max_kib = num(val(a), a).max(1),
            "--warm-calls" => o.warm_calls = num(val(a), a).max(1),
            "--concurrent" => o.concurrent = num(val(a), a).max(1),
            "--list-calls" => o.list_calls = num(val(a), a).max(1),
            "--list-sizes" => {
                let v = val(a);
                o.list_sizes = v.split(',').map(|s| num(s.trim().to_string(), a)).collect();
                o.list_sizes.sort_unstable();
            }
            "--daemon-config" => o.daemon_config.push_str(&format!("{}\n", val(a))),
            "--service" => {
                o.service = val(a);
                if !["both", "ours", "containerd"].contains(&o.service.as_str()) {
                    die("--service: both, ours or containerd");
                }
            }
            "--only" => {
                let v = val(a);
                o.only = Some(
                    v.split(',')
                        .map(|s| num(s.trim().to_string(), a) as u32)
                        .collect(),
                );
            }
            // libtest-style flags cargo may pass (e.g. `cargo test --benches`): ignore.
            s if s.starts_with("--") => eprintln!("compare: ignoring unknown flag {s}"),
            _ => {}
        }
    }
    if o.small_max_kib < o.small_min_kib {
        o.small_max_kib = o.small_min_kib;
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("compare: {msg}\n{HELP}");
    std::process::exit(2)
}

impl Opts {
    fn want(&self, s: u32) -> bool {
        self.only.as_ref().map_or(true, |v| v.contains(&s))
    }
}

// ---------------------------------------------------------------- stats

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile (p in 0..=100).
fn pct(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn fmt_t(s: f64) -> String {
    if !s.is_finite() {
        "n/a".into()
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

fn min_max(v: &[f64]) -> String {
    let s = sorted(v);
    if s.is_empty() {
        return "n/a".into();
    }
    if s.len() == 1 {
        return "1 run".into();
    }
    format!("{}–{}", fmt_t(s[0]), fmt_t(s[s.len() - 1]))
}

fn iqr(v: &[f64]) -> String {
    if v.len() < 4 {
        return min_max(v);
    }
    format!("IQR {}–{}", fmt_t(pct(v, 25.0)), fmt_t(pct(v, 75.0)))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn verdict(r: f64, target: f64) -> &'static str {
    if !r.is_finite() {
        "n/a"
    } else if r <= target {
        "yes"
    } else {
        "**no**"
    }
}

// ---------------------------------------------------------------- machine

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / (1 << 20) as f64))
        .unwrap_or_default();
    format!(
        "nproc {}, {model}, {mem} RAM, kernel {}",
        sh("nproc", &[]),
        sh("uname", &["-r"])
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the ")" of comm: state is field 3; utime 14, stime 15
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let g = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (g(11) + g(12)) / tick
}

/// PID of the process whose command line contains `needle`.
fn find_pid(needle: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(needle) {
                return Some(pid);
            }
        }
    }
    None
}

/// CPU seconds of (containerd, cri-imaged, registry).
#[derive(Clone, Copy, Default)]
struct Pids {
    containerd: u32,
    ours: u32,
    registry: u32,
}

impl Pids {
    fn cpu(&self) -> [f64; 3] {
        [
            cpu_secs(self.containerd),
            cpu_secs(self.ours),
            cpu_secs(self.registry),
        ]
    }
}

fn fmt_rss(k: Option<u64>) -> String {
    k.map(|k| format!("{:.1} MB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

// ---------------------------------------------------------------- cri-imaged

/// The release binary: CRI_IMAGED_BIN, else the one cargo built next to this
/// bench when it is itself an optimised build, else target/release/cri-imaged
/// (built if missing).
fn daemon_binary() -> PathBuf {
    if let Ok(p) = std::env::var("CRI_IMAGED_BIN") {
        let p = PathBuf::from(p);
        if !p.exists() {
            die(&format!("CRI_IMAGED_BIN={} does not exist", p.display()));
        }
        return p;
    }
    if !cfg!(debug_assertions) {
        let p = PathBuf::from(env!("CARGO_BIN_EXE_cri-imaged"));
        if p.exists() {
            return p;
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let p = root.join("target/release/cri-imaged");
    if !p.exists() {
        eprintln!("compare: building {} ...", p.display());
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "cri-imaged"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(
            st.success(),
            "cargo build --release --bin cri-imaged failed"
        );
    }
    p
}

struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    metrics_addr: String,
    log: PathBuf,
    child: Child,
}

impl Daemon {
    fn start(bin: &Path, c: &Containerd, extra: &str) -> Daemon {
        let dir = tempfile::Builder::new().prefix("crib-").tempdir().unwrap();
        let socket = dir.path().join("cri.sock");
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: {sock}\ncontainerd_address: {cd}\ncontainerd_root: {root}\nsnapshotter: {snap}\nregistry_config_path: {certs}\nmetrics_address: \"{metrics_addr}\"\nlog_level: info\n{extra}",
                sock = socket.display(),
                cd = c.socket.display(),
                root = c.root.display(),
                snap = c.snapshotter,
                certs = c.certs_d.display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("cri-imaged.log");
        let lf = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(lf.try_clone().unwrap())
            .stderr(lf)
            .spawn()
            .expect("start cri-imaged");
        let s2 = socket.clone();
        if !wait_for(
            || std::os::unix::net::UnixStream::connect(&s2).is_ok(),
            Duration::from_secs(30),
        ) {
            panic!("cri-imaged did not start:\n{}", tail_file(&log, 40));
        }
        Daemon {
            _dir: dir,
            socket,
            metrics_addr,
            log,
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn metrics(&self) -> String {
        match reqwest::get(format!("http://{}/metrics", self.metrics_addr)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- cri-imaged log ---\n{}", tail_file(&self.log, 60));
        }
    }
}

/// `cri_imaged_pull_phase_duration_seconds_sum{phase=...}` values.
fn phase_sums(text: &str) -> BTreeMap<String, f64> {
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

// ---------------------------------------------------------------- images

fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        a => a,
    }
}

fn build_image(layers: Vec<Layer>, tag: &str) -> BuiltImage {
    let mut b = ImageBuilder::new()
        .platform("linux", platform_arch(), None)
        .env(&format!("BENCH_IMAGE={tag}"));
    for l in layers {
        b = b.layer(l, Compression::Gzip);
    }
    b.build()
}

/// Sizes in [min, max] KiB, spread log-uniformly, deterministic.
fn small_sizes(n: usize, min_kib: usize, max_kib: usize) -> Vec<usize> {
    let (lo, hi) = ((min_kib as f64).ln(), (max_kib as f64).ln());
    (0..n)
        .map(|i| {
            let f = if n == 1 {
                1.0
            } else {
                i as f64 / (n - 1) as f64
            };
            // interleave so large and small layers alternate
            let f = if i % 2 == 0 { f } else { 1.0 - f };
            ((lo + f * (hi - lo)).exp() * 1024.0) as usize
        })
        .collect()
}

struct Img {
    name: String,
    reference: String,
    img: BuiltImage,
}

impl Img {
    fn digests(&self) -> Vec<String> {
        let mut v: Vec<String> = self.img.all_blobs().into_iter().map(|b| b.0).collect();
        v.push(self.img.manifest_digest.clone());
        v
    }
    fn blob_digests(&self) -> Vec<String> {
        self.img.all_blobs().into_iter().map(|b| b.0).collect()
    }
    fn mb(&self) -> f64 {
        self.img.total_size() as f64 / MB as f64
    }
}

// ---------------------------------------------------------------- CRI helpers

async fn pull_once(c: &mut Client, r: &str) -> String {
    match pull(c, r).await {
        Ok(id) => id,
        Err(e) => panic!("PullImage {r}: {e}"),
    }
}

/// Bring `img` to a cold state via service `c`: RemoveImage through the same
/// service, then make sure content and snapshots are gone (containerd's GC
/// runs synchronously on the last record delete); leftovers are removed with
/// ctr and counted in `forced`.
async fn make_cold(env: &TestEnv, c: &mut Client, im: &Img, forced: &mut usize) {
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

// ---------------------------------------------------------------- results

#[derive(Default)]
struct Cold {
    ours: Vec<f64>,
    theirs: Vec<f64>,
    phases: Vec<BTreeMap<String, f64>>,
    /// CPU seconds per run (containerd, cri-imaged, registry) during our pulls / theirs.
    cpu_ours: Vec<[f64; 3]>,
    cpu_theirs: Vec<[f64; 3]>,
}

struct ListRow {
    n: usize,
    rpc: &'static str,
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

struct Conc {
    ours_wall: Vec<f64>,
    theirs_wall: Vec<f64>,
    ours_gets: Vec<usize>,
    theirs_gets: Vec<usize>,
    blobs: usize,
}

// ---------------------------------------------------------------- scenarios

async fn cold_scenario(
    env: &TestEnv,
    d: &Daemon,
    pids: Pids,
    ours: &mut Client,
    theirs: &mut Client,
    im: &Img,
    runs: usize,
    service: &str,
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
            let before = if is_ours {
                Some(phase_sums(&d.metrics().await))
            } else {
                None
            };
            let c0 = pids.cpu();
            let t = Instant::now();
            let id = pull_once(c, &im.reference).await;
            let el = secs(t.elapsed());
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

async fn warm_scenario(
    ours: &mut Client,
    theirs: &mut Client,
    im: &Img,
    runs: usize,
    calls: usize,
) -> (Vec<f64>, Vec<f64>) {
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
    (a, b)
}

async fn concurrent_scenario(
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

/// An OCI layout tar with images `from..to`: one shared tiny layer, a distinct
/// config per image, named `<name>:i<k>` via `io.containerd.image.name`.
fn many_images_tar(name: &str, from: usize, to: usize) -> (Vec<u8>, Vec<(String, String)>) {
    let layer = Layer::from_files(&[("bench/hello.txt", b"hello from the bench\n")]);
    let blob = layer.compress(Compression::Gzip);
    let blob_digest = sha256_digest(&blob);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (format!("blobs/sha256/{}", &blob_digest[7..]), blob.clone()),
    ];
    let mut index = Vec::new();
    let mut out = Vec::new();
    for k in from..to {
        let cfg = serde_json::to_vec(&json!({
            "architecture": platform_arch(), "os": "linux",
            "config": {"Env": [format!("BENCH_MANY={k}")], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        }))
        .unwrap();
        let cfg_d = sha256_digest(&cfg);
        let man = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob_digest, "size": blob.len()}],
        }))
        .unwrap();
        let man_d = sha256_digest(&man);
        let full = format!("{name}:i{k}");
        index.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_d, "size": man.len(),
            "platform": {"architecture": platform_arch(), "os": "linux"},
            "annotations": {"io.containerd.image.name": full, "org.opencontainers.image.ref.name": format!("i{k}")},
        }));
        files.push((format!("blobs/sha256/{}", &cfg_d[7..]), cfg));
        files.push((format!("blobs/sha256/{}", &man_d[7..]), man));
        out.push((full, cfg_d));
    }
    files.push((
        "index.json".into(),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": index})).unwrap(),
    ));
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &p, data.as_slice()).unwrap();
    }
    (b.into_inner().unwrap(), out)
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
async fn list_scenario(
    env: &TestEnv,
    d: &Daemon,
    ours: &mut Client,
    theirs: &mut Client,
    sizes: &[usize],
    calls: usize,
    rows: &mut Vec<ListRow>,
    rss: &mut Vec<(usize, Option<u64>, Option<u64>, f64, f64, Option<u64>)>,
) {
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

        let rss_before = rss_kib(d.pid());
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
        rss.push((
            n,
            rss_kib(d.pid()),
            env.containerd.pid().and_then(rss_kib),
            so,
            st,
            rss_before,
        ));
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let o = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let report = rt.block_on(run(o.clone()));
    let total = t0.elapsed();
    let report = format!("{report}\nTotal bench wall time: {}.\n", fmt_t(secs(total)));
    if let Some(p) = o.out.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(&o.out, &report).unwrap();
    println!("{report}");
    eprintln!(
        "compare: report written to {} ({:.1} s)",
        o.out.display(),
        secs(total)
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(o: Opts) -> String {
    let load_start = loadavg();
    let bin = daemon_binary();
    eprintln!("compare: cri-imaged binary {}", bin.display());
    let env = TestEnv::start_with(
        ContainerdOpts {
            log_level: "info".into(),
            ..Default::default()
        },
        None,
    );

    // ---- images
    let t = Instant::now();
    let reg = env.registry_addr().to_string();
    let mk = |repo: &str, img: BuiltImage| Img {
        name: format!("{reg}/{repo}"),
        reference: format!("{reg}/{repo}:v1"),
        img,
    };
    let single = mk(
        "bench/single",
        build_image(vec![Layer::random(o.single_mb * MB, 1)], "single"),
    );
    let multi = mk(
        "bench/multi",
        build_image(
            (0..o.multi_layers)
                .map(|i| Layer::random(o.multi_mb * MB, 100 + i as u64))
                .collect(),
            "multi",
        ),
    );
    let small = mk(
        "bench/small",
        build_image(
            small_sizes(o.small_layers, o.small_min_kib, o.small_max_kib)
                .into_iter()
                .enumerate()
                .map(|(i, s)| Layer::random(s, 1000 + i as u64))
                .collect(),
            "small",
        ),
    );
    for im in [&single, &multi, &small] {
        env.push(
            im.name.strip_prefix(&format!("{reg}/")).unwrap(),
            Some("v1"),
            &im.img,
        )
        .await;
    }
    eprintln!(
        "compare: images built and pushed in {}",
        fmt_t(secs(t.elapsed()))
    );

    let d = Daemon::start(&bin, &env.containerd, &o.daemon_config);
    let mut ours = cri_client(&d.socket).await;
    let mut theirs = cri_client(&env.containerd.socket).await;
    for _ in 0..400 {
        if ours
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut forced = 0usize;
    let pids = Pids {
        containerd: env.containerd.pid().unwrap_or(0),
        ours: d.pid(),
        registry: find_pid(&env.registry.dir.join("config.yml").to_string_lossy()).unwrap_or(0),
    };

    let mut colds: Vec<(u32, String, &Img, Cold, f64)> = Vec::new();
    let scen: [(u32, String, &Img, f64); 3] = [
        (
            1,
            format!("1. cold pull, 1 layer × {} MB", o.single_mb),
            &single,
            1.0,
        ),
        (
            2,
            format!(
                "2. cold pull, {} layers × {} MB",
                o.multi_layers, o.multi_mb
            ),
            &multi,
            0.8,
        ),
        (
            3,
            format!(
                "3. cold pull, {} layers {}–{} KiB ({:.1} MB)",
                o.small_layers,
                o.small_min_kib,
                o.small_max_kib,
                small.mb()
            ),
            &small,
            0.8,
        ),
    ];
    for (n, title, im, target) in scen {
        if !(o.want(n) || o.want(7)) {
            continue;
        }
        eprintln!("compare: scenario {title}");
        let r = cold_scenario(
            &env,
            &d,
            pids,
            &mut ours,
            &mut theirs,
            im,
            o.runs,
            &o.service,
            &mut forced,
        )
        .await;
        colds.push((n, title, im, r, target));
    }

    let mut warm = None;
    if o.want(4) {
        eprintln!("compare: scenario 4 warm pull");
        warm = Some(warm_scenario(&mut ours, &mut theirs, &small, o.runs, o.warm_calls).await);
    }

    let mut conc = None;
    if o.want(5) {
        eprintln!("compare: scenario 5 {} concurrent pulls", o.concurrent);
        conc = Some(
            concurrent_scenario(
                &env,
                &mut ours,
                &mut theirs,
                &multi,
                o.runs,
                o.concurrent,
                &mut forced,
            )
            .await,
        );
    }

    let mut rows = Vec::new();
    let mut rss = Vec::new();
    if o.want(6) {
        eprintln!("compare: scenario 6 ListImages / ImageStatus");
        list_scenario(
            &env,
            &d,
            &mut ours,
            &mut theirs,
            &o.list_sizes,
            o.list_calls,
            &mut rows,
            &mut rss,
        )
        .await;
    }

    // ---- report
    let mut s = String::new();
    let _ = writeln!(s, "### cri-imaged vs containerd's CRI image service\n");
    let _ = writeln!(s, "- date: {}", sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(
        s,
        "- containerd: {} (snapshotter {}, max_concurrent_downloads 3)",
        sh("containerd", &["--version"]),
        env.containerd.snapshotter
    );
    let _ = writeln!(
        s,
        "- cri-imaged: {} (defaults: 3 downloads per pull)",
        bin.display()
    );
    let _ = writeln!(
        s,
        "- load average (1/5/15 min) at start: {load_start}, at end: {} (other work on the machine adds noise)",
        loadavg()
    );
    let _ = writeln!(
        s,
        "- registry: docker-registry on 127.0.0.1 (filesystem storage); layers gzip, random (incompressible)"
    );
    let _ = writeln!(
        s,
        "- mode: {}, runs per service {}, A/B order alternating run by run; cold = image, content and snapshots removed before each run{}",
        if o.smoke { "smoke" } else { "normal" },
        o.runs,
        if forced > 0 { format!(" ({forced} cleanups needed ctr)") } else { String::new() }
    );
    let _ = writeln!(s);

    let _ = writeln!(s, "| scenario | cri-imaged median (spread) | containerd-CRI median (spread) | ratio | target | met |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (_, title, _, r, target) in &colds {
        let (a, b) = (median(&r.ours), median(&r.theirs));
        let rt = ratio(a, b);
        let _ = writeln!(
            s,
            "| {title} | {} ({}) | {} ({}) | {rt:.2}× | ≤ {target:.1}× | {} |",
            fmt_t(a),
            min_max(&r.ours),
            fmt_t(b),
            min_max(&r.theirs),
            verdict(rt, *target)
        );
    }
    if let Some((a, b)) = &warm {
        let rt = ratio(median(a), median(b));
        let _ = writeln!(
            s,
            "| 4. warm PullImage ({} calls/service) | {} ({}) | {} ({}) | {rt:.2}× | ≤ 0.2× | {} |",
            a.len(),
            fmt_t(median(a)),
            iqr(a),
            fmt_t(median(b)),
            iqr(b),
            verdict(rt, 0.2)
        );
    }
    if let Some(c) = &conc {
        let rt = ratio(median(&c.ours_wall), median(&c.theirs_wall));
        let _ = writeln!(
            s,
            "| 5. {} concurrent PullImage, cold, image 2 (wall) | {} ({}) | {} ({}) | {rt:.2}× | — | — |",
            o.concurrent,
            fmt_t(median(&c.ours_wall)),
            min_max(&c.ours_wall),
            fmt_t(median(&c.theirs_wall)),
            min_max(&c.theirs_wall),
        );
        let fmt_gets = |v: &[usize]| {
            let mx = v.iter().max().copied().unwrap_or(0);
            let mn = v.iter().min().copied().unwrap_or(0);
            if mx == mn {
                format!("{mx}")
            } else {
                format!("{mn}–{mx}")
            }
        };
        let ok = c.ours_gets.iter().all(|g| *g == c.blobs);
        let _ = writeln!(
            s,
            "| 5. blob GETs per run ({} blobs: config + layers) | {} | {} | — | = {} | {} |",
            c.blobs,
            fmt_gets(&c.ours_gets),
            fmt_gets(&c.theirs_gets),
            c.blobs,
            if ok { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(s);

    if !rows.is_empty() {
        let _ = writeln!(
            s,
            "Scenario 6: sequential RPCs over one connection, {} calls per RPC, size and service (p50 / p99):\n",
            o.list_calls
        );
        let _ = writeln!(s, "| images | RPC | cri-imaged p50 / p99 | containerd-CRI p50 / p99 | ratio p50 | target | met |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        let largest = *o.list_sizes.last().unwrap_or(&0);
        for r in &rows {
            let (a, b) = (pct(&r.ours, 50.0), pct(&r.theirs, 50.0));
            let rt = ratio(a, b);
            let (target, met) = if r.rpc == "ListImages" && r.n == largest {
                ("≤ 0.5×".to_string(), verdict(rt, 0.5).to_string())
            } else if r.rpc.starts_with("ImageStatus") {
                (
                    "p50 ≤ 200 µs".to_string(),
                    if a <= 200e-6 { "yes" } else { "**no**" }.to_string(),
                )
            } else {
                ("—".into(), "—".into())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} / {} | {} / {} | {rt:.2}× | {target} | {met} |",
                r.n,
                r.rpc,
                fmt_t(a),
                fmt_t(pct(&r.ours, 99.0)),
                fmt_t(b),
                fmt_t(pct(&r.theirs, 99.0)),
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "| images | cri-imaged RSS after the calls (before) | containerd RSS (whole daemon) | visible in cri-imaged after import | visible in containerd-CRI after import | RSS target | met |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (n, a, b, so, st, a0) in &rss {
            let met = if *n == largest {
                if a.map_or(false, |k| k as f64 / 1024.0 <= 50.0) {
                    "yes"
                } else {
                    "**no**"
                }
            } else {
                "—"
            };
            let _ = writeln!(
                s,
                "| {n} | {} ({}) | {} | {} | {} | {} | {met} |",
                fmt_rss(*a),
                fmt_rss(*a0),
                fmt_rss(*b),
                fmt_t(*so),
                fmt_t(*st),
                if *n == largest { "≤ 50 MB" } else { "—" }
            );
        }
        let _ = writeln!(s);
    }

    if !colds.is_empty() {
        let _ = writeln!(
            s,
            "Scenario 7: where cri-imaged's cold pull time goes (median per run of `cri_imaged_pull_phase_duration_seconds` sums; fetch and unpack are pipelined: `unpack` is the tail after the last byte arrived):\n"
        );
        let _ = writeln!(s, "| scenario | size | PullImage | resolve | fetch | unpack (tail) | records | fetch throughput |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for (n, _, im, r, _) in &colds {
            let ph = |k: &str| -> f64 {
                median(
                    &r.phases
                        .iter()
                        .map(|m| m.get(k).copied().unwrap_or(0.0))
                        .collect::<Vec<_>>(),
                )
            };
            let fetch = ph("fetch");
            let _ = writeln!(
                s,
                "| {n} | {:.1} MB | {} | {} | {} | {} | {} | {:.0} MB/s |",
                im.mb(),
                fmt_t(median(&r.ours)),
                fmt_t(ph("resolve")),
                fmt_t(fetch),
                fmt_t(ph("unpack")),
                fmt_t(ph("records")),
                im.mb() / fetch
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "CPU seconds per cold pull (median; utime+stime from /proc/<pid>/stat, {} cores shared by all three):\n",
            sh("nproc", &[])
        );
        let _ = writeln!(
            s,
            "| scenario | pulled by | containerd | cri-imaged | registry | total |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for (n, _, _, r, _) in &colds {
            for (who, v) in [(OURS, &r.cpu_ours), (THEIRS, &r.cpu_theirs)] {
                let m = |i: usize| median(&v.iter().map(|c| c[i]).collect::<Vec<_>>());
                let _ = writeln!(
                    s,
                    "| {n} | {who} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    m(0),
                    m(1),
                    m(2),
                    median(&v.iter().map(|c| c[0] + c[1] + c[2]).collect::<Vec<_>>())
                );
            }
        }
        let _ = writeln!(s);
    }
    drop(ours);
    drop(theirs);
    drop(d);
    drop(env);
    s
}
