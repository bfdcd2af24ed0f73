//! Mounts: find and lazily unmount what a test left, and small tmpfs mounts.
use std::path::{Path, PathBuf};

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points (from /proc/self/mountinfo) equal to or below `dir`,
/// deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(&dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

/// Lazily unmount everything strictly below `dir` (and `dir` itself if
/// `include_self`). Repeats until nothing is left (stacked mounts).
pub fn unmount_under(dir: &Path, include_self: bool) {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for _ in 0..10 {
        let ms: Vec<PathBuf> = mounts_under(&canon)
            .into_iter()
            .filter(|m| include_self || m != &canon)
            .collect();
        if ms.is_empty() {
            return;
        }
        for m in ms {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().to_string_lossy().as_bytes()) {
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

/// A tmpfs of a given size mounted on a fresh temp dir; unmounted on drop.
/// Handy for "disk full" tests: `ContainerdOpts { root: Some(tmpfs.path().into()), .. }`
/// (or use `ContainerdOpts::root_tmpfs_bytes`, which manages one for you).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size_bytes: u64) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("rig-tmpfs-")
            .tempdir()
            .unwrap();
        mount_tmpfs(dir.path(), size_bytes);
        Tmpfs { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn mount_tmpfs(path: &Path, size_bytes: u64) {
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_bytes},mode=0755"),
            "tmpfs",
        ])
        .arg(path)
        .status()
        .expect("run mount");
    assert!(st.success(), "mount tmpfs on {} failed", path.display());
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount_under(self.dir.path(), true);
    }
}
