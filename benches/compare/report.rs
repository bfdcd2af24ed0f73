//! The markdown report.
use std::fmt::Write as _;
use std::path::Path;

use crate::args::Opts;
use crate::scenarios::{ColdScenario, Conc, List, Warm, OURS, THEIRS};
use crate::stats::{fmt_rss, fmt_t, iqr, median, min_max, pct, ratio, verdict};
use crate::system::{loadavg, machine, sh};

/// Everything the report shows.
pub struct Report<'a> {
    pub opts: &'a Opts,
    /// The cri-imaged binary benchmarked.
    pub bin: &'a Path,
    pub snapshotter: &'a str,
    /// Load average when the bench started.
    pub load_start: String,
    /// Cold states that needed ctr to clean up.
    pub forced: usize,
    pub colds: &'a [ColdScenario<'a>],
    pub warm: Option<&'a Warm>,
    pub conc: Option<&'a Conc>,
    pub list: Option<&'a List>,
}

/// Render the report as markdown (the machine is described as it is now).
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### cri-imaged vs containerd's CRI image service\n");
    let _ = writeln!(s, "- date: {}", sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(
        s,
        "- containerd: {} (snapshotter {}, max_concurrent_downloads 3; CRI_IMAGED_CONTAINERD={})",
        sh(
            &cri_imaged_test_rig::containerd_version()
                .bin_dir
                .as_ref()
                .map(|d| d.join("containerd").display().to_string())
                .unwrap_or_else(|| "containerd".into()),
            &["--version"]
        ),
        r.snapshotter,
        cri_imaged_test_rig::containerd_version().name
    );
    let _ = writeln!(
        s,
        "- cri-imaged: {} (defaults: 3 downloads per pull)",
        r.bin.display()
    );
    let _ = writeln!(
        s,
        "- load average (1/5/15 min) at start: {}, at end: {} (other work on the machine adds noise)",
        r.load_start,
        loadavg()
    );
    let _ = writeln!(
        s,
        "- registry: docker-registry on 127.0.0.1 (filesystem storage); layers gzip, random (incompressible)"
    );
    let _ = writeln!(
        s,
        "- mode: {}, runs per service {}, A/B order alternating run by run; cold = image, content and snapshots removed before each run{}",
        if r.opts.smoke { "smoke" } else { "normal" },
        r.opts.runs,
        if r.forced > 0 { format!(" ({} cleanups needed ctr)", r.forced) } else { String::new() }
    );
    let _ = writeln!(s);

    let _ = writeln!(s, "| scenario | cri-imaged median (spread) | containerd-CRI median (spread) | ratio | target | met |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for c in r.colds {
        let (title, target, res) = (&c.title, c.target, &c.result);
        let (a, b) = (median(&res.ours), median(&res.theirs));
        let rt = ratio(a, b);
        let _ = writeln!(
            s,
            "| {title} | {} ({}) | {} ({}) | {rt:.2}× | ≤ {target:.1}× | {} |",
            fmt_t(a),
            min_max(&res.ours),
            fmt_t(b),
            min_max(&res.theirs),
            verdict(rt, target)
        );
    }
    if let Some(Warm { ours: a, theirs: b }) = r.warm {
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
    if let Some(c) = r.conc {
        let rt = ratio(median(&c.ours_wall), median(&c.theirs_wall));
        let _ = writeln!(
            s,
            "| 5. {} concurrent PullImage, cold, image 2 (wall) | {} ({}) | {} ({}) | {rt:.2}× | — | — |",
            r.opts.concurrent,
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

    let empty = List::default();
    let list = r.list.unwrap_or(&empty);
    if !list.rows.is_empty() {
        let _ = writeln!(
            s,
            "Scenario 6: sequential RPCs over one connection, {} calls per RPC, size and service (p50 / p99):\n",
            r.opts.list_calls
        );
        let _ = writeln!(s, "| images | RPC | cri-imaged p50 / p99 | containerd-CRI p50 / p99 | ratio p50 | target | met |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        let largest = *r.opts.list_sizes.last().unwrap_or(&0);
        for r in &list.rows {
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
        for z in &list.sizes {
            let (n, a, b, so, st, a0) = (
                &z.n,
                &z.ours_rss,
                &z.containerd_rss,
                &z.ours_visible,
                &z.theirs_visible,
                &z.ours_rss_before,
            );
            let met = if *n == largest {
                if a.is_some_and(|k| k as f64 / 1024.0 <= 50.0) {
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

    if !r.colds.is_empty() {
        let _ = writeln!(
            s,
            "Scenario 7: where cri-imaged's cold pull time goes (median per run of `cri_imaged_pull_phase_duration_seconds` sums; fetch and unpack are pipelined: `unpack` is the tail after the last byte arrived; `blobs stored` is when the last layer blob was committed to containerd's content store, which the native unpack does after PullImage returned; CPU below counts until then):\n"
        );
        let _ = writeln!(s, "| scenario | size | PullImage | resolve | fetch | unpack (tail) | records | fetch throughput | blobs stored |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for c in r.colds {
            let (n, im, r) = (c.n, c.img, &c.result);
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
                "| {n} | {:.1} MB | {} | {} | {} | {} | {} | {:.0} MB/s | {} |",
                im.mb(),
                fmt_t(median(&r.ours)),
                fmt_t(ph("resolve")),
                fmt_t(fetch),
                fmt_t(ph("unpack")),
                fmt_t(ph("records")),
                im.mb() / fetch,
                fmt_t(median(&r.stored))
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
        for c in r.colds {
            let (n, r) = (c.n, &c.result);
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
    s
}
