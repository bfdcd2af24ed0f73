//! cri-imaged: CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cri_imaged::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "cri-imaged",
    version,
    about = "A Kubernetes CRI ImageService that pulls straight into containerd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI ImageService on a unix socket.
    Serve(ServeArgs),
    /// Print the effective configuration (defaults + file + flags) as YAML.
    Config(ServeArgs),
    /// Exit 0 only if the CRI socket answers ImageFsInfo within the timeout.
    Health {
        /// CRI socket to check.
        #[arg(long, default_value = "/run/cri-imaged/cri-imaged.sock")]
        socket: PathBuf,
        /// How long to wait for the answer, e.g. 5s.
        #[arg(long, default_value = "5s")]
        timeout: String,
    },
    /// Install the binary, the systemd units and a default config onto a host
    /// root, enable them, and restart the service when something changed.
    Install {
        /// The host's root directory (e.g. /host in a pod).
        #[arg(long)]
        root: PathBuf,
        /// Binary to install (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Config to install as /etc/cri-imaged/config.yaml (default: keep the
        /// host's, or write a default one).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Command that runs the host's systemctl, split on spaces, e.g.
        /// "nsenter -t 1 -m -u -i -n -p -- systemctl". Without it, the units
        /// are only enabled offline (systemctl --root) and nothing is started.
        #[arg(long)]
        systemctl: Option<String>,
    },
    /// Stop, disable and remove the host service (pulled images stay).
    Uninstall {
        /// The host's root directory.
        #[arg(long)]
        root: PathBuf,
        /// Command that runs the host's systemctl (see install).
        #[arg(long)]
        systemctl: Option<String>,
    },
}

/// A tokio runtime with I/O and timers, or the exit code of a failure to build one.
fn runtime(b: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    b.enable_all().build().map_err(|e| {
        eprintln!("cri-imaged: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn split_cmd(s: Option<String>) -> Vec<String> {
    s.map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn print_installed(r: anyhow::Result<cri_imaged::install::Installed>, what: &str) -> ExitCode {
    match r {
        Ok(done) => {
            for l in done.lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cri-imaged: {what} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// YAML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Socket to listen on.
    #[arg(long)]
    listen: Option<PathBuf>,
    /// containerd's socket.
    #[arg(long)]
    containerd_address: Option<PathBuf>,
    /// containerd namespace.
    #[arg(long)]
    containerd_namespace: Option<String>,
    /// Snapshotter.
    #[arg(long)]
    snapshotter: Option<String>,
    /// Registry host configuration directory (certs.d layout).
    #[arg(long)]
    registry_config_path: Option<PathBuf>,
    /// Metrics/health address ("" = off).
    #[arg(long)]
    metrics_address: Option<String>,
    /// Stall timeout of pulls, e.g. 5m (0s = off).
    #[arg(long)]
    pull_progress_timeout: Option<String>,
    /// Node platform (repeatable, first preferred), e.g. linux/arm/v7.
    #[arg(long = "platform")]
    platforms: Vec<String>,
    /// Log level (RUST_LOG syntax).
    #[arg(long)]
    log_level: Option<String>,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
    /// Start and supervise a private containerd rooted in DIR and use it.
    #[arg(long, value_name = "DIR")]
    managed_containerd: Option<PathBuf>,
    /// containerd binary for --managed-containerd.
    #[arg(long, default_value = "containerd")]
    containerd_binary: String,
}

fn effective(args: &ServeArgs) -> Result<Config, String> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(v) = &args.listen {
        cfg.listen = v.clone();
    }
    if let Some(v) = &args.containerd_address {
        cfg.containerd_address = v.clone();
    }
    if let Some(v) = &args.containerd_namespace {
        cfg.containerd_namespace = v.clone();
    }
    if let Some(v) = &args.snapshotter {
        cfg.snapshotter = v.clone();
    }
    if let Some(v) = &args.registry_config_path {
        cfg.registry_config_path = v.clone();
    }
    if let Some(v) = &args.metrics_address {
        cfg.metrics_address = v.clone();
    }
    if let Some(v) = &args.pull_progress_timeout {
        cfg.pull_progress_timeout = humantime::parse_duration(v)
            .map_err(|e| format!("invalid config: pull_progress_timeout: {v:?}: {e}"))?;
    }
    if !args.platforms.is_empty() {
        cfg.platforms = args.platforms.clone();
    }
    if let Some(v) = &args.log_level {
        cfg.log_level = v.clone();
    }
    if args.log_json {
        cfg.log_format = LogFormat::Json;
    }
    if let Some(dir) = &args.managed_containerd {
        let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
        cfg.containerd_address = dir.join("containerd.sock");
        cfg.containerd_root = dir.join("root");
        cfg.snapshotter_root = PathBuf::new();
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn init_logs(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match cfg.log_format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(args) => match effective(&args) {
            Ok(cfg) => {
                print!("{}", serde_yaml::to_string(&cfg).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cri-imaged: {e}");
                ExitCode::from(2)
            }
        },
        Command::Health { socket, timeout } => {
            let Ok(timeout) = humantime::parse_duration(&timeout) else {
                eprintln!("cri-imaged: --timeout {timeout:?} is not a duration (e.g. 5s)");
                return ExitCode::from(2);
            };
            let rt = match runtime(&mut tokio::runtime::Builder::new_current_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(cri_imaged::health::check(&socket, timeout)) {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cri-imaged: unhealthy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Uninstall { root, systemctl } => print_installed(
            cri_imaged::install::uninstall(&root, &split_cmd(systemctl)),
            "uninstall",
        ),
        Command::Install {
            root,
            binary,
            config,
            systemctl,
        } => {
            let binary = match binary.map(Ok).unwrap_or_else(std::env::current_exe) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("cri-imaged: cannot find this binary: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = cri_imaged::install::InstallOpts {
                root,
                binary,
                config,
                systemctl: split_cmd(systemctl),
            };
            print_installed(cri_imaged::install::install(&opts), "install")
        }
        Command::Serve(args) => {
            let cfg = match effective(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cri-imaged: {e}");
                    return ExitCode::from(2);
                }
            };
            if args.check {
                println!("configuration is valid");
                return ExitCode::SUCCESS;
            }
            init_logs(&cfg);
            // A node agent should stay small: glibc's default of up to 8 malloc
            // arenas per core mostly adds retained, fragmented heap.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: mallopt only tunes glibc's allocator; it is called
            // before any other thread exists (the runtime is built below).
            // Blocks of 512 KiB and more (a ListImages response of thousands of
            // images, its encoding) are mapped and unmapped rather than kept in
            // the heap: glibc's sliding threshold would otherwise move them into
            // the heap after the first free, where they stay as retained memory.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
                libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 10);
            }
            let rt = match runtime(&mut tokio::runtime::Builder::new_multi_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let result = rt.block_on(async move {
                let managed = match &args.managed_containerd {
                    Some(dir) => Some(
                        cri_imaged::managed::Managed::start(
                            dir,
                            &args.containerd_binary,
                            &cfg.snapshotter,
                            &cfg.registry_config_path,
                        )
                        .await?,
                    ),
                    None => None,
                };
                let r = cri_imaged::server::serve(cfg, cri_imaged::server::shutdown_signal()).await;
                if let Some(m) = managed {
                    m.stop().await;
                }
                r
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cri-imaged failed");
                    eprintln!("cri-imaged: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
