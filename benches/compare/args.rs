//! Command-line flags (clap) and the options they resolve to.
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Parser;
use cri_imaged_test_rig::Config;

/// cri-imaged vs containerd's built-in CRI image service, side by side.
#[derive(Parser, Debug)]
#[command(
    name = "compare",
    override_usage = "cargo bench --bench compare -- [flags]"
)]
struct Args {
    /// tiny sizes, 1 run, scenario 6 with 10/50 images (< 90 s)
    #[arg(long)]
    smoke: bool,
    /// full sizes: 200 MB single layer, 10 x 20 MB
    #[arg(long)]
    full: bool,
    /// cold/warm runs per service and scenario (default 5; smoke 1)
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// markdown report (default target/bench/report.md)
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// scenario 1 layer size in MB (default 64; full 200)
    #[arg(long, value_name = "N")]
    single_mb: Option<usize>,
    /// scenario 2 layer count (default 10)
    #[arg(long, value_name = "N")]
    multi_layers: Option<usize>,
    /// scenario 2 layer size in MB (default 6; full 20)
    #[arg(long, value_name = "N")]
    multi_mb: Option<usize>,
    /// scenario 3 layer count (default 40)
    #[arg(long, value_name = "N")]
    small_layers: Option<usize>,
    /// scenario 3 smallest layer (default 8)
    #[arg(long, value_name = "N")]
    small_min_kib: Option<usize>,
    /// scenario 3 largest layer (default 1024)
    #[arg(long, value_name = "N")]
    small_max_kib: Option<usize>,
    /// warm PullImage calls per run and service (default 20)
    #[arg(long, value_name = "N")]
    warm_calls: Option<usize>,
    /// scenario 5 concurrent PullImage calls (default 10)
    #[arg(long, value_name = "N")]
    concurrent: Option<usize>,
    /// scenario 6 image counts (default 100,1000,5000)
    #[arg(long, value_name = "A,B,C", value_delimiter = ',')]
    list_sizes: Option<Vec<usize>>,
    /// scenario 6 calls per RPC, size and service (default 1000)
    #[arg(long, value_name = "N")]
    list_calls: Option<usize>,
    /// run only these scenarios (7 needs 1-3)
    #[arg(long, value_name = "1,2,...", value_delimiter = ',')]
    only: Option<Vec<u32>>,
    /// extra cri-imaged config line(s), e.g. 'max_concurrent_downloads_per_pull: 6'
    #[arg(long, value_name = "YAML")]
    daemon_config: Vec<String>,
    /// cold scenarios 1-3 drive only `ours` or `containerd` (profiling aid; default both)
    #[arg(long, value_name = "S", default_value = "both",
          value_parser = ["both", "ours", "containerd"])]
    service: String,
    /// real images: OCI layouts (or directories of them) from
    /// scripts/build-real-images.sh; adds scenarios 8 (a cold pull of each)
    /// and 9 (node start: all of them one after another)
    #[arg(long, value_name = "DIR")]
    real: Vec<PathBuf>,
    /// seconds to wait (after a sync) between making an image cold and
    /// pulling it (default 0); 35 lets ext4 forget the deleted inodes
    #[arg(long, value_name = "SECS")]
    settle: Option<u64>,
    /// passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
    /// stray arguments (e.g. a libtest filter); ignored
    #[arg(hide = true)]
    rest: Vec<String>,
}

/// The resolved options.
#[derive(Clone, Debug)]
pub struct Opts {
    pub smoke: bool,
    pub runs: usize,
    pub out: PathBuf,
    pub single_mb: usize,
    pub multi_layers: usize,
    pub multi_mb: usize,
    pub small_layers: usize,
    pub small_min_kib: usize,
    pub small_max_kib: usize,
    pub warm_calls: usize,
    pub concurrent: usize,
    pub list_sizes: Vec<usize>,
    pub list_calls: usize,
    pub only: Option<Vec<u32>>,
    /// Which services the cold scenarios drive (profiling aid): both, ours, containerd.
    pub service: String,
    /// Extra YAML lines for cri-imaged's config.
    pub daemon_config: String,
    pub real: Vec<PathBuf>,
    pub settle: std::time::Duration,
}

impl Opts {
    pub fn want(&self, s: u32) -> bool {
        self.only.as_ref().is_none_or(|v| v.contains(&s))
    }

    /// Parse the process arguments. Unknown `--flags` (libtest-style flags cargo
    /// may pass, e.g. `cargo test --benches`) are ignored with a warning.
    pub fn from_env() -> Opts {
        let mut argv: Vec<String> = std::env::args().collect();
        let args = loop {
            match Args::try_parse_from(&argv) {
                Ok(a) => break a,
                Err(e) if e.kind() == ErrorKind::UnknownArgument => {
                    let Some(ContextValue::String(bad)) = e.get(ContextKind::InvalidArg) else {
                        e.exit()
                    };
                    let flag = bad.split('=').next().unwrap_or(bad).to_string();
                    let Some(i) = argv.iter().skip(1).position(|a| {
                        *a == *bad || *a == flag || a.starts_with(&format!("{flag}="))
                    }) else {
                        e.exit()
                    };
                    eprintln!("compare: ignoring unknown flag {flag}");
                    argv.remove(i + 1);
                }
                Err(e) => e.exit(),
            }
        };
        Opts::resolve(args)
    }

    fn resolve(a: Args) -> Opts {
        let (smoke, full) = (a.smoke, a.full);
        let pick = |v: Option<usize>, smoke_v: usize, full_v: usize, normal: usize| {
            v.map(|n| n.max(1)).unwrap_or(if smoke {
                smoke_v
            } else if full {
                full_v
            } else {
                normal
            })
        };
        let mut list_sizes = a.list_sizes.unwrap_or_else(|| {
            if smoke {
                vec![10, 50]
            } else {
                vec![100, 1000, 5000]
            }
        });
        list_sizes.sort_unstable();
        let small_min_kib = pick(a.small_min_kib, 8, 8, 8);
        let small_max_kib = pick(a.small_max_kib, 128, 1024, 1024).max(small_min_kib);
        Opts {
            smoke,
            runs: pick(a.runs, 1, 5, 5),
            out: a.out.unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/report.md")
            }),
            single_mb: pick(a.single_mb, 4, 200, 64),
            multi_layers: pick(a.multi_layers, 3, 10, 10),
            multi_mb: pick(a.multi_mb, 1, 20, 6),
            small_layers: pick(a.small_layers, 8, 40, 40),
            small_min_kib,
            small_max_kib,
            warm_calls: pick(a.warm_calls, 5, 20, 20),
            concurrent: pick(a.concurrent, 10, 10, 10),
            list_sizes,
            list_calls: pick(a.list_calls, 100, 1000, 1000),
            only: a.only,
            service: a.service,
            daemon_config: a.daemon_config.iter().map(|l| format!("{l}\n")).collect(),
            real: a.real,
            settle: std::time::Duration::from_secs(a.settle.unwrap_or(0)),
        }
    }
}

/// Apply `--daemon-config` YAML on top of `cfg`: keys given there replace
/// the typed values; unknown keys and wrong types are refused.
pub fn apply_yaml(cfg: &mut Config, yaml: &str) -> Result<(), String> {
    if yaml.trim().is_empty() {
        return Ok(());
    }
    let extra: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    let serde_yaml::Value::Mapping(extra) = extra else {
        return Err("not a YAML mapping".into());
    };
    let mut base = serde_yaml::to_value(&*cfg).map_err(|e| e.to_string())?;
    let map = base.as_mapping_mut().expect("Config is a mapping");
    for (k, v) in extra {
        map.insert(k, v);
    }
    *cfg = serde_yaml::from_value(base).map_err(|e| e.to_string())?;
    Ok(())
}
