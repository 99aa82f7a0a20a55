//! The vCPU kick, on this host's /dev/kvm, with user-mode payloads (they run
//! at native speed even where guest kernel code does not).
//!
//! These tests need /dev/kvm and fail (they do not skip) without it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::payload::{PayloadVm, USER_CODE};
use vmm::vcpu::{VcpuContext, VcpuHook};
use vmm::VmOutcome;

fn require_kvm() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm (KVM plumbing tests); run them on a host with KVM"
    );
}

struct RecordRip {
    rips: Arc<Mutex<Vec<u64>>>,
    runs: Arc<AtomicU64>,
}

impl VcpuHook for RecordRip {
    fn on_kick(&mut self, vcpu: &mut VcpuContext<'_>) {
        let rip = vcpu.regs().map(|r| r.rip).unwrap_or(0);
        self.rips.lock().unwrap().push(rip);
        self.runs.fetch_add(1, Ordering::Relaxed);
    }
}

/// `jmp $` forever.
const SPIN: &[u8] = &[0xeb, 0xfe];

#[test]
fn every_kick_runs_the_hook_with_the_guest_rip() {
    require_kvm();
    let mut vm = PayloadVm::new(SPIN, &[]).unwrap();
    let rips = Arc::new(Mutex::new(Vec::new()));
    let runs = Arc::new(AtomicU64::new(0));
    vm.set_hook(Box::new(RecordRip {
        rips: rips.clone(),
        runs: runs.clone(),
    }));
    vm.start().unwrap();
    let h = vm.handle();
    // Let the guest get going.
    std::thread::sleep(Duration::from_millis(20));
    for _ in 0..300 {
        h.kick_and_wait(Duration::from_secs(5))
            .expect("kick acknowledged");
    }
    assert!(h.kicks_served() >= 300);
    let rips = rips.lock().unwrap();
    assert_eq!(rips.len() as u64, runs.load(Ordering::Relaxed));
    assert!(
        rips.len() >= 300,
        "one hook run per waited kick, got {}",
        rips.len()
    );
    // After the first entry the guest is always at its loop.
    assert!(
        rips[1..].iter().all(|&r| r == USER_CODE),
        "RIPs: {:x?}",
        &rips[..rips.len().min(8)]
    );
    drop(rips);
    assert_eq!(vm.stop(VmOutcome::Halt), VmOutcome::Halt);
}

#[test]
fn kicks_do_not_disturb_a_finishing_payload() {
    require_kvm();
    // mov rcx, 1_000_000_000; 1: dec rcx; jnz 1b; mov al, 7; out 0xf4, al; jmp $
    // (about half a second at native speed)
    let mut code = vec![0x48, 0xc7, 0xc1];
    code.extend_from_slice(&1_000_000_000u32.to_le_bytes());
    code.extend_from_slice(&[
        0x48, 0xff, 0xc9, 0x75, 0xfb, 0xb0, 0x07, 0xe6, 0xf4, 0xeb, 0xfe,
    ]);
    let mut vm = PayloadVm::new(&code, &[]).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    vm.set_hook(Box::new(RecordRip {
        rips: Arc::new(Mutex::new(Vec::new())),
        runs: runs.clone(),
    }));
    vm.start().unwrap();
    let h = vm.handle();
    let kicker = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(30) {
            if h.kick().is_err() {
                break; // the vCPU thread ended: the payload is done
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    let outcome = vm.wait(Duration::from_secs(30));
    assert_eq!(
        outcome,
        VmOutcome::Status(7),
        "the payload ran to its end despite kicks"
    );
    let sent = kicker.join().unwrap();
    // The hook ran for kicks served while the loop ran (and for the stop's
    // own kicks); kicks that arrive before one is served coalesce.
    assert!(
        sent > 0 && runs.load(Ordering::Relaxed) > 0,
        "sent {sent}, hook runs {}",
        runs.load(Ordering::Relaxed)
    );
}

#[test]
fn stop_interrupts_a_spinning_guest_promptly() {
    require_kvm();
    let mut vm = PayloadVm::new(SPIN, &[]).unwrap();
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let t = Instant::now();
    assert_eq!(vm.stop(VmOutcome::UserQuit), VmOutcome::UserQuit);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn probe_reports_a_clear_verdict() {
    require_kvm();
    let p = vmm::probe::probe(Duration::from_secs(5)).unwrap();
    println!(
        "probe: capable={} ({}) in {:?}",
        p.capable, p.detail, p.elapsed
    );
    assert!(
        p.detail.contains("SYSCALL") || p.detail.contains("within") || p.detail.contains("vCPU")
    );
}

/// Names and values read on the vCPU thread, or why not.
type StatsResult = Result<(Vec<String>, Vec<u64>), String>;

struct ReadStats {
    out: Arc<Mutex<Option<StatsResult>>>,
}

impl VcpuHook for ReadStats {
    fn on_kick(&mut self, vcpu: &mut VcpuContext<'_>) {
        let r = vmm::kvm_stats::VcpuStats::open(vcpu.fd())
            .map_err(|e| e.to_string())
            .and_then(|mut s| {
                let mut v = Vec::new();
                s.read(&mut v).map_err(|e| e.to_string())?;
                Ok((s.names().to_vec(), v))
            });
        *self.out.lock().unwrap() = Some(r);
    }
}

#[test]
fn kvm_binary_stats_are_readable_on_the_vcpu_thread() {
    require_kvm();
    let mut vm = PayloadVm::new(SPIN, &[]).unwrap();
    let out = Arc::new(Mutex::new(None));
    vm.set_hook(Box::new(ReadStats { out: out.clone() }));
    vm.start().unwrap();
    vm.handle().kick_and_wait(Duration::from_secs(5)).unwrap();
    vm.stop(VmOutcome::Halt);
    let (names, values) = out
        .lock()
        .unwrap()
        .take()
        .expect("hook ran")
        .expect("KVM_GET_STATS_FD works");
    println!(
        "{} KVM vCPU statistics, e.g. {:?}",
        names.len(),
        names.iter().zip(&values).take(5).collect::<Vec<_>>()
    );
    assert_eq!(names.len(), values.len());
    assert!(names.iter().any(|n| n == "exits"), "{names:?}");
}

#[test]
fn a_faulting_guest_ends_with_its_rip_instead_of_hanging() {
    require_kvm();
    // ud2 at CPL3 with no IDT: #UD, then a double and a triple fault.
    let mut vm = PayloadVm::new(&[0x0f, 0x0b], &[]).unwrap();
    vm.start().unwrap();
    match vm.wait(Duration::from_secs(10)) {
        VmOutcome::TripleFault { vcpu, rip } => {
            assert_eq!(vcpu, 0);
            println!("triple fault reported at RIP 0x{rip:x}");
        }
        VmOutcome::Error(e) => {
            // Some KVMs report the fault as an internal error instead; it
            // must still name the vCPU and RIP.
            assert!(e.contains("vCPU 0") && e.contains("RIP"), "{e}");
        }
        other => panic!("expected a triple fault, got {other:?}"),
    }
}

/// The peak resident memory of this process (VmHWM, /proc/self/status):
/// the vCPU thread's exit tally is freed when the thread ends, so only
/// the peak shows what it held.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Issue 12, finding 1: a guest that touches 10^6 distinct unmapped
/// guest-physical addresses (one MMIO exit each) must not grow the VMM's
/// memory with them. The exit tally keeps at most `MAX_KEYS` addresses and
/// one overflow bucket per kind; before that cap it kept one map entry per
/// address (about 50 MiB for this payload).
#[test]
fn a_million_unmapped_mmio_addresses_keep_memory_bounded() {
    require_kvm();
    use vmm::payload::UNMAPPED;
    const N: u32 = 1_000_000;
    // mov rax, UNMAPPED; mov ecx, N
    // 1: mov [rax], ecx; add rax, 64; dec ecx; jnz 1b
    // mov al, 0; out 0xf4, al; jmp $
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&UNMAPPED.to_le_bytes());
    code.push(0xb9);
    code.extend_from_slice(&N.to_le_bytes());
    code.extend_from_slice(&[
        0x89, 0x08, // mov [rax], ecx
        0x48, 0x83, 0xc0, 0x40, // add rax, 64
        0xff, 0xc9, // dec ecx
        0x75, 0xf6, // jnz -10 (to the mov)
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al
        0xeb, 0xfe, // jmp $
    ]);
    let mut vm = PayloadVm::new(&code, &[]).unwrap();
    let before = peak_rss_kib();
    vm.start().unwrap();
    let start = Instant::now();
    let outcome = vm.wait(Duration::from_secs(240));
    let after = peak_rss_kib();
    println!(
        "{N} MMIO writes to distinct unmapped addresses in {:.1} s; peak RSS {before} KiB -> {after} KiB",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        outcome,
        VmOutcome::Status(0),
        "the guest ran through all {N} exits and kept running"
    );
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "peak RSS grew by {} KiB over 10^6 distinct MMIO addresses (bound 8 MiB)",
        after.saturating_sub(before)
    );
}
