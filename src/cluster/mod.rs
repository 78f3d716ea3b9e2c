//! Everything on the far side of a cluster connection: the wire protocol, the neromum agent with
//! its journal and wardens, and the client neroman uses to reach a mum (starting it when none
//! answers). Knows nothing about workbooks; the neroman core joins this with `sheet`.

pub mod bridge;
pub mod client;
pub mod mum;
pub mod protocol;
pub mod ssh;
pub mod transport;
pub mod workdir_lock;

use std::path::{Path, PathBuf};

/// Where the mum serving `workdir` listens. Unix socket paths are limited to ~108 bytes, so a deep
/// workdir gets a socket under /tmp named by a hash of the workdir.
pub fn socket_path(workdir: &Path) -> PathBuf {
    let direct = workdir.join("mum.sock");
    if direct.as_os_str().len() < 100 {
        return direct;
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("neronet-{uid}"));
    let _ = std::fs::create_dir_all(&dir);
    let hash = short_hash(workdir.as_os_str().as_encoded_bytes());
    dir.join(format!("{hash:016x}.sock"))
}

/// FNV-1a: a short stable name for a long key (socket paths must stay short).
pub(crate) fn short_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// A sibling program installed next to the running one (`target/debug/nerokid` beside
/// `target/debug/neroman`), else found on PATH.
pub fn sibling_binary(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
            // Test binaries live in target/debug/deps.
            if let Some(up) = dir.parent().map(|d| d.join(name)).filter(|c| c.is_file()) {
                return up;
            }
        }
    }
    PathBuf::from(name)
}
