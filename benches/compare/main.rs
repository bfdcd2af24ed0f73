//! cri-imaged vs containerd's built-in CRI image service, side by side.
//!
//! One private containerd (CRI plugin on) and one local docker-registry (the
//! integration-test rig), one cri-imaged (release binary) on the same
//! containerd; both image services are driven through the CRI API, A/B
//! alternating run by run. See BENCHMARKS.md.
//!
//! `cargo bench --bench compare -- [--smoke] [--full] [--runs N] [--out PATH] ...`
//! (`--help` lists every flag).
//!
//! Modules: [`args`] (flags), [`images`], [`scenarios`] (typed results),
//! [`stats`], [`system`] (machine, CPU, RSS) and [`report`] (markdown).

mod args;
mod images;
mod real;
mod report;
mod scenarios;
mod stats;
mod system;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cri_imaged_test_rig::{
    cri_client, BuiltImage, Config, ContainerdOpts, CriImaged, Layer, TestEnv,
};
use k8s_cri::v1 as cri;

use args::{apply_yaml, Opts};
use images::{build_image, small_sizes, Img, MB};
use report::{render, Report};
use scenarios::{cold_scenario, concurrent_scenario, list_scenario, warm_scenario, ColdScenario};
use stats::{fmt_t, secs};
use system::{find_pid, loadavg, Pids};

fn die(msg: &str) -> ! {
    eprintln!("compare: {msg}");
    std::process::exit(2)
}

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

fn main() {
    let o = Opts::from_env();
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

async fn run(o: Opts) -> String {
    // Refuse a bad --daemon-config before anything is started.
    if let Err(e) = apply_yaml(&mut Config::default(), &o.daemon_config) {
        die(&format!("--daemon-config: {e}"));
    }
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
    let reals = real::load(&o.real, &reg);
    for im in [&single, &multi, &small].into_iter().chain(reals.iter()) {
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

    let extra = o.daemon_config.clone();
    let d = CriImaged::builder(&bin)
        .config(move |c| {
            // The bench's daemon logs at info and samples ImageFsInfo at the default pace.
            c.log_level = "info".into();
            c.imagefs_sample_interval = Config::default().imagefs_sample_interval;
            apply_yaml(c, &extra).expect("--daemon-config was checked at start");
        })
        .start_timeout(Duration::from_secs(30))
        .start(&env.containerd);
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
        ours: d.pid().unwrap_or(0),
        registry: find_pid(&env.registry.dir.join("config.yml").to_string_lossy()).unwrap_or(0),
    };

    let mut colds: Vec<ColdScenario> = Vec::new();
    let scen: [(u32, String, &Img, f64); 3] = [
        (
            1,
            format!("1. cold pull, 1 layer × {} MB", o.single_mb),
            &single,
            0.6,
        ),
        (
            2,
            format!(
                "2. cold pull, {} layers × {} MB",
                o.multi_layers, o.multi_mb
            ),
            &multi,
            0.6,
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
            o.settle,
            &mut forced,
        )
        .await;
        colds.push(ColdScenario {
            n,
            title,
            img: im,
            result: r,
            target,
        });
    }

    // Real images: a cold pull of each (8), then all of them in a row (9).
    let (mut real_colds, mut floors, mut start) = (Vec::new(), Vec::new(), None);
    if o.want(8) {
        for im in &reals {
            eprintln!("compare: scenario 8 real image {}", im.name);
            real::make_all_cold(&env, &mut ours, &reals, &mut forced).await;
            floors.push(real::tar_floor(im, &env.containerd.dir.join("tar-floor")));
            real_colds.push(
                cold_scenario(
                    &env,
                    &d,
                    pids,
                    &mut ours,
                    &mut theirs,
                    im,
                    o.runs,
                    &o.service,
                    o.settle,
                    &mut forced,
                )
                .await,
            );
        }
    }
    if o.want(9) && !reals.is_empty() {
        eprintln!(
            "compare: scenario 9 node start ({} real images in a row)",
            reals.len()
        );
        start = Some(
            real::node_start(
                &env,
                pids,
                &mut ours,
                &mut theirs,
                &reals,
                o.runs,
                o.settle,
                &mut forced,
            )
            .await,
        );
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

    let mut list = None;
    if o.want(6) {
        eprintln!("compare: scenario 6 ListImages / ImageStatus");
        list = Some(
            list_scenario(
                &env,
                &d,
                &mut ours,
                &mut theirs,
                &o.list_sizes,
                o.list_calls,
            )
            .await,
        );
    }

    let s = render(&Report {
        opts: &o,
        bin: &bin,
        snapshotter: &env.containerd.snapshotter,
        load_start,
        forced,
        colds: &colds,
        warm: warm.as_ref(),
        conc: conc.as_ref(),
        list: list.as_ref(),
    });
    // Who wrote the layers cri-imaged unpacked (native unpack or containerd's
    // diff service), from its own counters.
    let metrics = d.metrics().await;
    let unpacked: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("cri_imaged_layers_unpacked_total{"))
        .collect();
    let s = if reals.is_empty() {
        s
    } else {
        s + &real::render(&reals, &real_colds, &floors, start.as_ref())
    };
    let s = format!(
        "{s}\nLayers cri-imaged unpacked in this run, by unpacker: {}\n",
        if unpacked.is_empty() {
            "none".to_string()
        } else {
            unpacked.join(", ")
        }
    );
    drop(ours);
    drop(theirs);
    // For profiling: keep the daemon's log (`COMPARE_DAEMON_LOG=<path>`).
    if let Ok(path) = std::env::var("COMPARE_DAEMON_LOG") {
        let _ = std::fs::write(&path, d.log_text());
    }
    drop(d);
    drop(env);
    s
}
