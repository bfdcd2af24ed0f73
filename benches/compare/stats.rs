//! Summary statistics and number formatting for the report.
use std::time::Duration;

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s
}

pub fn median(v: &[f64]) -> f64 {
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
pub fn pct(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn fmt_t(s: f64) -> String {
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

pub fn min_max(v: &[f64]) -> String {
    let s = sorted(v);
    if s.is_empty() {
        return "n/a".into();
    }
    if s.len() == 1 {
        return "1 run".into();
    }
    format!("{}–{}", fmt_t(s[0]), fmt_t(s[s.len() - 1]))
}

pub fn iqr(v: &[f64]) -> String {
    if v.len() < 4 {
        return min_max(v);
    }
    format!("IQR {}–{}", fmt_t(pct(v, 25.0)), fmt_t(pct(v, 75.0)))
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

pub fn verdict(r: f64, target: f64) -> &'static str {
    if !r.is_finite() {
        "n/a"
    } else if r <= target {
        "yes"
    } else {
        "**no**"
    }
}

pub fn fmt_rss(k: Option<u64>) -> String {
    k.map(|k| format!("{:.1} MB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}
