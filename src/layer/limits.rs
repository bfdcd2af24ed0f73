//! Hard limits on what one layer (and one pull) may make the node do: a
//! registry's bytes are untrusted, and the native applier writes them as
//! root. The defaults are far above what real images reach (the largest
//! layers seen hold a few hundred thousand entries, expand 3-10× and nest a
//! few dozen directories deep) and below what hostile ones need.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::LayerError;

/// The `limits:` section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Tar entries in one layer.
    pub layer_max_entries: u64,
    /// Path components in one entry's name.
    pub layer_max_depth: u64,
    /// Bytes of one entry's extension headers (PAX records, GNU long names),
    /// which are held in memory while the entry is read.
    pub layer_max_header_bytes: u64,
    /// Decompressed bytes of a layer may be this many times its compressed
    /// size (or `layer_min_bytes`, whichever is larger): a decompression
    /// bomb stops here.
    pub layer_expansion_ratio: u64,
    /// The decompressed bytes every layer may have whatever its ratio.
    pub layer_min_bytes: u64,
    /// Decompressed bytes of all the layers one pull writes.
    pub pull_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            layer_max_entries: 500_000,
            layer_max_depth: 128,
            layer_max_header_bytes: 1 << 20,
            layer_expansion_ratio: 100,
            layer_min_bytes: 256 << 20,
            pull_max_bytes: 256 << 30,
        }
    }
}

impl Limits {
    /// The decompressed bytes a layer of `compressed` bytes may have.
    pub fn layer_bytes(&self, compressed: u64) -> u64 {
        self.layer_expansion_ratio
            .saturating_mul(compressed)
            .max(self.layer_min_bytes)
    }

    /// Every limit must be set (a zero would refuse every layer).
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("layer_max_entries", self.layer_max_entries),
            ("layer_max_depth", self.layer_max_depth),
            ("layer_max_header_bytes", self.layer_max_header_bytes),
            ("layer_expansion_ratio", self.layer_expansion_ratio),
            ("layer_min_bytes", self.layer_min_bytes),
            ("pull_max_bytes", self.pull_max_bytes),
        ];
        match named.iter().find(|(_, v)| *v == 0) {
            Some((k, _)) => Err(format!("limits.{k} must be greater than 0")),
            None => Ok(()),
        }
    }
}

/// The decompressed bytes a layer's decoder may still produce: its own
/// share and what is left of the pull's (shared by the pull's decoders).
#[derive(Debug, Clone)]
pub struct Budget {
    layer: u64,
    pull: Arc<AtomicU64>,
    pull_limit: u64,
}

impl Budget {
    /// A fresh budget for one pull.
    pub fn for_pull(limits: &Limits) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(limits.pull_max_bytes))
    }

    pub fn new(limits: &Limits, compressed: u64, pull: Arc<AtomicU64>) -> Budget {
        Budget {
            layer: limits.layer_bytes(compressed),
            pull,
            pull_limit: limits.pull_max_bytes,
        }
    }

    /// A budget with only a per-layer bound (tests, tools).
    pub fn layer_only(layer: u64) -> Budget {
        Budget {
            layer,
            pull: Arc::new(AtomicU64::new(u64::MAX)),
            pull_limit: u64::MAX,
        }
    }

    /// Take `n` more bytes after `so_far` of this layer.
    pub fn take(&self, so_far: u64, n: u64) -> Result<(), LayerError> {
        if so_far.saturating_add(n) > self.layer {
            return Err(LayerError::Limit {
                message: format!(
                    "the layer decompresses to more than {} bytes (limits.layer_expansion_ratio \
                     times its compressed size, at least limits.layer_min_bytes): a \
                     decompression bomb, or an image that needs higher limits",
                    self.layer
                ),
                setting: "limits.layer_expansion_ratio",
                limit: self.layer,
                exhausted: true,
            });
        }
        let left = self
            .pull
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            });
        left.map(|_| ()).map_err(|_| LayerError::Limit {
            message: format!(
                "the image's layers decompress to more than {} bytes in all \
                 (limits.pull_max_bytes)",
                self.pull_limit
            ),
            setting: "limits.pull_max_bytes",
            limit: self.pull_limit,
            exhausted: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_bytes_take_the_ratio_or_the_floor() {
        let l = Limits::default();
        assert_eq!(l.layer_bytes(1), 256 << 20);
        assert_eq!(l.layer_bytes(1 << 30), 100 << 30);
        assert_eq!(l.layer_bytes(u64::MAX), u64::MAX);
        // A 1,000× bomb passes the default limit nowhere: under 262 KiB
        // compressed it stays under the 256 MiB floor, above it the ratio
        // (100×) stops it at a tenth of its size.
        for compressed in [300 << 10, 1 << 20, 1 << 30] {
            assert!(l.layer_bytes(compressed) < 1000 * compressed);
        }
    }

    #[test]
    fn budget_stops_the_layer_and_the_pull() {
        let l = Limits {
            layer_min_bytes: 100,
            layer_expansion_ratio: 2,
            pull_max_bytes: 150,
            ..Limits::default()
        };
        let pull = Budget::for_pull(&l);
        let a = Budget::new(&l, 10, pull.clone());
        assert!(a.take(0, 100).is_ok());
        let e = a.take(100, 1).unwrap_err();
        assert!(e.to_string().contains("more than 100 bytes"), "{e}");
        let b = Budget::new(&l, 10, pull);
        assert!(b.take(0, 50).is_ok());
        let e = b.take(50, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("more than 150 bytes in all (limits.pull_max_bytes)"),
            "{e}"
        );
    }

    /// A gzip bomb: one member of 1 MiB of zeros (about 1 KiB), repeated.
    fn bomb(members: usize) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 1 << 20]).unwrap();
        let one = e.finish().unwrap();
        one.repeat(members)
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        // 64 members: 64 MiB from about 64 KiB, 1,000× and more. With the
        // default ratio the limit is the floor; here a floor of 16 MiB (the
        // default's 256 MiB works the same, 16 times slower in a debug build).
        let blob = bomb(64);
        let digest = crate::manifest::sha256_digest(&blob);
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let drain =
            std::thread::spawn(move || rx.iter().map(|c: Vec<u8>| c.len() as u64).sum::<u64>());
        let l = Limits {
            layer_min_bytes: 16 << 20,
            ..Limits::default()
        };
        let budget = Budget::new(&l, blob.len() as u64, Budget::for_pull(&l));
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let pool = crate::layer::ChunkPool::default();
        let b = crate::layer::Blob {
            digest: &digest,
            size: blob.len() as u64,
            check: crate::layer::Check::Digest,
        };
        let e = crate::layer::decode(&blob[..], b, tx, &cancel, &pool, &budget).unwrap_err();
        let passed = drain.join().unwrap();
        assert!(
            matches!(
                e,
                LayerError::Limit {
                    exhausted: true,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("more than 16777216 bytes"), "{e}");
        assert!(passed <= 16 << 20, "{passed} bytes went on to the applier");
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(Limits::default().validate().is_ok());
        let l = Limits {
            layer_max_depth: 0,
            ..Limits::default()
        };
        assert_eq!(
            l.validate().unwrap_err(),
            "limits.layer_max_depth must be greater than 0"
        );
    }
}
