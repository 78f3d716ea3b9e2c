//! The static cluster binaries (what neroman uploads to a login node) need no shared library:
//! built for x86_64-unknown-linux-musl they run inside an empty chroot, so an old glibc, or none,
//! on the cluster does not matter.

mod common;

use std::process::Command;

#[test]
fn static_neromum_and_nerokid_run_in_an_empty_chroot() {
    let built = common::services::static_binaries();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::create_dir_all(root.path().join("proc")).unwrap();
    for name in ["neromum", "nerokid"] {
        std::fs::copy(built.join(name), root.path().join("bin").join(name)).unwrap();
    }
    // Nothing but the two programs: no loader, no libc, no /etc.
    let mut inside: Vec<String> = walk(root.path());
    inside.sort();
    assert_eq!(inside, ["bin/nerokid", "bin/neromum"]);
    // A dynamically linked program would fail at once here: no loader (/lib64/ld-linux...).
    for (name, arg, says) in [
        ("neromum", "--help", "Usage: neromum"),
        ("nerokid", "--version", "nerokid "),
    ] {
        let out = Command::new("chroot")
            .arg(root.path())
            .arg(format!("/bin/{name}"))
            .arg(arg)
            .output()
            .expect("chroot (run the tests as root, as scripts/test.sh does)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "chroot {} /bin/{name} {arg}: {}; stderr: {}",
            root.path().display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(says), "{name} {arg} printed: {stdout}");
    }
}

/// The files under `dir`, relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(
                walk(&p)
                    .into_iter()
                    .map(|f| format!("{}/{f}", e.file_name().to_string_lossy())),
            );
        } else {
            files.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    files
}
