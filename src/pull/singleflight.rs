//! Single-flight: concurrent callers with the same key share one run of the
//! work, which runs in its own task. When every caller has gone away (deadline,
//! cancellation) before it finishes, the work is aborted.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

use futures::future::{BoxFuture, FutureExt, Shared};

/// None when the work task was aborted or panicked.
type Work<V> = Shared<BoxFuture<'static, Option<V>>>;

struct Entry<V: Clone> {
    fut: Work<V>,
    waiters: usize,
    abort: tokio::task::AbortHandle,
}

type Map<K, V> = Arc<Mutex<HashMap<K, Entry<V>>>>;

pub struct SingleFlight<K, V: Clone> {
    inflight: Map<K, V>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Decrements the waiter count on drop; aborts the work when it was the last
/// waiter and the work had not finished.
struct Waiter<K: Eq + Hash, V: Clone> {
    key: K,
    map: Map<K, V>,
    done: bool,
}

impl<K: Eq + Hash, V: Clone> Drop for Waiter<K, V> {
    fn drop(&mut self) {
        let mut m = self.map.lock();
        if let Some(e) = m.get_mut(&self.key) {
            e.waiters -= 1;
            if e.waiters == 0 {
                if !self.done {
                    e.abort.abort();
                }
                m.remove(&self.key);
            }
        }
    }
}

/// The value, and whether this caller joined work another caller started.
pub struct Joined<V> {
    pub value: V,
    pub coalesced: bool,
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Keys running now (the tests check that finished and aborted runs leave none).
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }

    /// Run `make()` once per key at a time. Callers still waiting when the
    /// work task was aborted or panicked get `on_abort()`.
    pub async fn run<F, Fut>(&self, key: K, make: F, on_abort: impl FnOnce() -> V) -> Joined<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (fut, coalesced) = {
            let mut m = self.inflight.lock();
            match m.get_mut(&key) {
                Some(e) => {
                    e.waiters += 1;
                    (e.fut.clone(), true)
                }
                None => {
                    let handle = tokio::spawn(tracing::Instrument::in_current_span(make())); // the leader's RPC span
                    let abort = handle.abort_handle();
                    let fut: Work<V> = async move { handle.await.ok() }.boxed().shared();
                    m.insert(
                        key.clone(),
                        Entry {
                            fut: fut.clone(),
                            waiters: 1,
                            abort,
                        },
                    );
                    (fut, false)
                }
            }
        };
        let mut guard = Waiter {
            key,
            map: self.inflight.clone(),
            done: false,
        };
        let out = fut.await;
        guard.done = true;
        drop(guard);
        Joined {
            value: out.unwrap_or_else(on_abort),
            coalesced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let sf: Arc<SingleFlight<String, usize>> = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let sf = sf.clone();
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                sf.run(
                    "k".to_string(),
                    move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        42
                    },
                    || 0,
                )
                .await
            }));
        }
        let mut coalesced = 0;
        for t in tasks {
            let j = t.await.unwrap();
            assert_eq!(j.value, 42);
            coalesced += j.coalesced as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(coalesced, 9);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn last_caller_leaving_aborts_the_work() {
        let sf: Arc<SingleFlight<u8, u8>> = Arc::new(SingleFlight::default());
        let finished = Arc::new(AtomicUsize::new(0));
        let f2 = finished.clone();
        let r = tokio::time::timeout(
            Duration::from_millis(20),
            sf.run(
                1,
                move || async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    f2.fetch_add(1, Ordering::SeqCst);
                    1
                },
                || 0,
            ),
        )
        .await;
        assert!(r.is_err());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "aborted work must not finish"
        );
        assert_eq!(sf.in_flight(), 0);
    }
}
