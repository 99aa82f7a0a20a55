//! Boots perfvisor's guest image (build/guest-image) with QEMU on the nested
//! /dev/kvm inside the L1 sandbox, and prints the L2 console with wall-clock time
//! stamps taken in the L1. A check of the guest image under real KVM (kvm-clock, KVM
//! CPUID leaves) and of packing a large dynamic binary with its data directories:
//!
//!   cargo run -p sandbox --example l2-qemu -- [L2 kernel args] [-- L2 command]
//!
//! e.g. `cargo run -p sandbox --example l2-qemu -- -- 'dmesg | grep -i clock'`.
use std::path::Path;

fn main() {
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/guest-image");
    for f in ["bzImage", "initramfs.cpio"] {
        assert!(
            image.join(f).exists(),
            "{}/{f} missing: run scripts/build-guest-image.sh",
            image.display()
        );
    }
    let rest: Vec<String> = std::env::args().skip(1).collect();
    let append = if rest.is_empty() {
        "-- cat /proc/uptime".to_string()
    } else {
        rest.join(" ")
    };
    let append = format!("console=ttyS0 panic=-1 {append}");
    let qemu = which("qemu-system-x86_64");
    let script = "set -o pipefail; echo L1: $(cat /proc/uptime); \
         qemu-system-x86_64 -accel kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
           -display none -serial stdio -no-reboot $L2_QEMU_EXTRA -kernel /guest/bzImage -initrd /guest/initramfs.cpio \
           -append \"$L2_APPEND\" | while IFS= read -r l; do echo \"$(cut -d' ' -f1 /proc/uptime) $l\"; done; \
         echo L1: qemu exit status $? $(cat /proc/uptime)";
    let job = sandbox::Job::shell(script)
        .binary(&qemu, "/usr/bin/qemu-system-x86_64")
        .dir("/usr/share/qemu", "/usr/share/qemu")
        .dir("/usr/share/seabios", "/usr/share/seabios")
        .files_in(&image, &["bzImage", "initramfs.cpio"], "/guest")
        .env("L2_APPEND", &append)
        .env(
            "L2_QEMU_EXTRA",
            &std::env::var("L2_QEMU_EXTRA").unwrap_or_default(),
        );
    let sb = sandbox::Sandbox::locate().unwrap_or_else(|e| panic!("{e}"));
    let out = sb
        .run(&job, &mut |l| println!("{l}"))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "status {} | L1 boot to job {:.2?} | total {:.2?}",
        out.status, out.l1_boot, out.total
    );
}

fn which(name: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in PATH"))
}
