//! Shared helpers of the integration tests: the guest image, the static
//! pv-workload binary and the host's perf are required; when one is missing
//! the test fails and says what to install or run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSymbol};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("record/ is inside the repository")
        .to_path_buf()
}

fn require_file(rel: &str, how: &str) -> PathBuf {
    let p = repo().join(rel);
    assert!(p.is_file(), "missing {}: {how}", p.display());
    p
}

pub fn system_map() -> PathBuf {
    require_file(
        "build/guest-image/System.map",
        "build the guest image with scripts/build-guest-image.sh (after scripts/setup.sh)",
    )
}

pub fn vmlinux() -> PathBuf {
    require_file(
        "build/guest-image/vmlinux",
        "build the guest image with scripts/build-guest-image.sh (after scripts/setup.sh)",
    )
}

pub fn pv_workload() -> PathBuf {
    require_file(
        "target/guest/x86_64-unknown-linux-gnu/release/pv-workload",
        "scripts/build-guest-image.sh builds the static guest tools (pv-workload) into target/guest/",
    )
}

/// The host's perf: `perf` on PATH (Debian's linux-perf, /usr/bin/perf).
pub fn perf() -> PathBuf {
    let p = PathBuf::from("perf");
    match Command::new(&p).arg("version").output() {
        Ok(o) if o.status.success() => p,
        other => panic!(
            "the host's perf is missing or broken ({other:?}): install it with \
             scripts/setup.sh (Debian package linux-perf, /usr/bin/perf)"
        ),
    }
}

/// (start, end) of a System.map text symbol: end is the next address.
pub fn kernel_fn(name: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(system_map()).expect("System.map is readable");
    let mut addrs: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let a = u64::from_str_radix(it.next()?, 16).ok()?;
            let _ty = it.next()?;
            Some((a, it.next()?.to_string()))
        })
        .collect();
    addrs.sort();
    let i = addrs
        .iter()
        .position(|(_, n)| n == name)
        .unwrap_or_else(|| panic!("{name} is not in System.map"));
    let start = addrs[i].0;
    let end = addrs[i..]
        .iter()
        .map(|(a, _)| *a)
        .find(|a| *a > start)
        .expect("a symbol follows");
    (start, end)
}

/// (start, size) of a function of pv-workload.
pub fn user_fn(name: &str) -> (u64, u64) {
    let data = std::fs::read(pv_workload()).expect("pv-workload is readable");
    let file = object::File::parse(&*data).expect("pv-workload is ELF");
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} is not in pv-workload"));
    (sym.address(), sym.size())
}

/// Address `off` bytes into a function, kept inside it.
pub fn inside((start, end_or_size): (u64, u64), off: u64, is_size: bool) -> u64 {
    let size = if is_size {
        end_or_size
    } else {
        end_or_size - start
    };
    start + off.min(size.saturating_sub(1))
}

pub struct PerfOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Runs the host's perf with a private HOME (no user config, no build-id
/// cache) and returns its output; a non-zero exit fails the test.
pub fn run_perf(args: &[&str]) -> PerfOutput {
    let home = tempfile::tempdir().expect("temp dir");
    let out = Command::new(perf())
        .arg("--no-pager")
        .args(args)
        .env("HOME", home.path())
        .env_remove("PERF_PAGER")
        .output()
        .expect("perf runs");
    let r = PerfOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        out.status.success(),
        "perf {args:?} failed ({}):\n{}\n{}",
        out.status,
        r.stderr,
        r.stdout
    );
    r
}

/// perf said nothing on stderr: no warning about the file.
pub fn assert_quiet(what: &str, o: &PerfOutput) {
    assert!(
        o.stderr.trim().is_empty(),
        "{what} printed on stderr (a warning about the file?):\n{}\n--- stdout ---\n{}",
        o.stderr,
        o.stdout
    );
}
