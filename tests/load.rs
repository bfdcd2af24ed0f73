//! Load: many clients calling ListImages / ImageStatus while pulls and
//! removes run. Zero unexpected errors, bounded memory, p99 printed.
//!
//!   cargo test --test load -- --nocapture                 (10 s)
//!   cargo test --test load -- --ignored --nocapture       (60 s)
//!   LOAD_SECONDS=30 LOAD_CLIENTS=200 cargo test --test load -- --ignored --nocapture

use cri_imaged_test_rig::*;

use k8s_cri::v1 as cri;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn load(seconds: u64, clients: usize) {
    let env = TestEnv::start();
    let n_imgs: usize = 6;
    let imgs: Vec<BuiltImage> = (0..n_imgs)
        .map(|i| {
            ImageBuilder::new()
                .layer(Layer::random(64 << 10, 500 + i as u64), Compression::Gzip)
                .build()
        })
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        env.push(&format!("load/img{i}"), Some("v1"), img).await;
    }
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let refs: Arc<Vec<String>> = Arc::new(
        (0..n_imgs)
            .map(|i| env.image_ref(&format!("load/img{i}"), "v1"))
            .collect(),
    );
    // Half the images stay, half churn.
    let mut c = d.client().await;
    for r in refs.iter() {
        pull(&mut c, r).await.expect("initial pull");
    }
    let pid = d.pid().unwrap();
    let rss_before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let churn_ops = Arc::new(AtomicUsize::new(0));

    // Pull/remove churn on the upper half of the images.
    let mut churners = Vec::new();
    for k in n_imgs / 2..n_imgs {
        let mut c = d.client().await;
        let (stop, errors, refs, ops) = (
            stop.clone(),
            errors.clone(),
            refs.clone(),
            churn_ops.clone(),
        );
        churners.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = pull(&mut c, &refs[k]).await {
                    errors.lock().unwrap().push(format!("pull: {e}"));
                }
                if let Err(e) = remove(&mut c, &refs[k]).await {
                    errors.lock().unwrap().push(format!("remove: {e}"));
                }
                ops.fetch_add(2, Ordering::Relaxed);
            }
        }));
    }

    // Readers: each its own connection.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut readers = Vec::new();
    for i in 0..clients {
        let mut c = d.client().await;
        let (errors, refs) = (errors.clone(), refs.clone());
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut k = i;
            while Instant::now() < deadline {
                k += 1;
                let t = Instant::now();
                let r = if k % 2 == 0 {
                    c.list_images(cri::ListImagesRequest { filter: None })
                        .await
                        .map(|r| {
                            // The stable half is always listed.
                            r.into_inner().images.len() >= n_imgs / 2
                        })
                } else {
                    let r = &refs[k % refs.len()];
                    c.image_status(cri::ImageStatusRequest {
                        image: spec(r),
                        verbose: k % 7 == 0,
                    })
                    .await
                    .map(|s| (k % refs.len()) >= n_imgs / 2 || s.into_inner().image.is_some())
                };
                lat.push(t.elapsed());
                match r {
                    Ok(true) => {}
                    Ok(false) => errors
                        .lock()
                        .unwrap()
                        .push("a stable image was missing".into()),
                    Err(e) => errors.lock().unwrap().push(format!("read: {e}")),
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.await.unwrap());
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.await.unwrap();
    }
    lat.sort();
    let rss_after = rss_kib(pid);
    let errors = errors.lock().unwrap().clone();
    println!(
        "load: {clients} clients for {elapsed:.1?}: {} reads ({:.0}/s), {} pull/remove ops, errors {}; latency p50 {:?} p99 {:?} max {:?}; RSS {} MiB -> {} MiB",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        churn_ops.load(Ordering::Relaxed),
        errors.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
        rss_before / 1024,
        rss_after / 1024,
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(lat.len() > clients, "too few reads");
    assert!(
        churn_ops.load(Ordering::Relaxed) > 0,
        "no pulls/removes ran"
    );
    assert!(
        rss_after < rss_before + 200 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Afterwards: still serving, index agrees with containerd.
    let mut c = d.client().await;
    let ids: Vec<String> = list(&mut c).await.into_iter().map(|i| i.id).collect();
    for img in &imgs[..n_imgs / 2] {
        assert!(ids.contains(&img.config_digest));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn load_200_clients_10s() {
    load(10, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: cargo test --test load -- --ignored"]
async fn load_200_clients_60s() {
    let secs = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let clients = std::env::var("LOAD_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    load(secs, clients).await;
}
