//! Host-side recording against hostile guest page tables and frame
//! pointers, on this host's /dev/kvm with user-mode payloads: cyclic
//! page-table entries, entries pointing outside guest RAM, and frame
//! pointers into them. Recording must go on with a bounded cost per sample.

use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm::payload::PayloadVm;
use vmm::recorder::{hooks, RecordConfig};
use vmm::sampler::Backend;
use vmm::VmOutcome;

/// PML4 of the payload VMs (see vmm::payload).
const PML4: u64 = 0x9000;

fn spin_with_rbp(rbp: u64) -> Vec<u8> {
    let mut code = vec![0x48, 0xbd]; // mov rbp, imm64
    code.extend_from_slice(&rbp.to_le_bytes());
    code.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    code
}

#[test]
fn hostile_page_tables_and_frames_cost_a_bounded_walk() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm"
    );
    let cases: [(&str, u64); 4] = [
        // PML4[1] points back at the PML4: every level of the walk reads the
        // same table.
        ("cyclic PML4 entry", 1 << 39),
        // PML4[2] points outside guest RAM.
        ("table outside RAM", 2 << 39),
        // PML4[3] maps a PDPT whose 1 GiB page starts far beyond RAM.
        ("page outside RAM", 3 << 39),
        // A frame that points at itself inside the payload's own page.
        ("self-referencing frame", 0x10_0000),
    ];
    for (what, rbp) in cases {
        let mut vm = PayloadVm::new(&spin_with_rbp(rbp), &[]).unwrap();
        let mem = vm.memory().clone();
        mem.write_obj(PML4 | 7, GuestAddress(PML4 + 8)).unwrap();
        mem.write_obj(0x7fff_ffff_f000u64 | 7, GuestAddress(PML4 + 16))
            .unwrap();
        mem.write_obj(0xc000u64 | 7, GuestAddress(PML4 + 24))
            .unwrap();
        mem.write_obj((0x40u64 << 30) | 0x87, GuestAddress(0xc000))
            .unwrap();
        mem.write_obj(0x10_0000u64, GuestAddress(0x10_0000))
            .unwrap();
        mem.write_obj(0x40_1000u64, GuestAddress(0x10_0008))
            .unwrap();
        let cfg = RecordConfig {
            freq: 1000,
            callchain: true,
            backend: Backend::Kick,
            kernel_info: None,
            orc: None,
        };
        let (mut hs, rec) = hooks(1, cfg, mem);
        vm.set_hook(Box::new(hs.remove(0)));
        vm.start().unwrap();
        let h = vm.handle();
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..200 {
            h.kick_and_wait(Duration::from_secs(5))
                .expect("kick served");
            // Let the guest run between samples.
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(
            vm.stop(VmOutcome::Halt),
            VmOutcome::Halt,
            "{what}: the payload kept running"
        );
        let samples: Vec<_> = rec.samples.try_iter().collect();
        let reads = rec.stats.walk_reads.load(Ordering::Relaxed);
        let walks = rec.stats.walks.load(Ordering::Relaxed);
        println!(
            "{what}: {} samples, {walks} walks, {:.1} guest reads per walk",
            samples.len(),
            reads as f64 / walks.max(1) as f64
        );
        assert!(samples.len() >= 200, "{what}: every kick gave a sample");
        // (The first kick may land before the `mov rbp` ran.)
        let at_loop = samples
            .iter()
            .filter(|s| s.user && s.ip == vmm::payload::USER_CODE + 10)
            .count();
        assert!(
            at_loop + 1 >= samples.len(),
            "{what}: the IP is the spin loop"
        );
        assert!(
            samples.iter().all(|s| s.callchain.len() <= 1),
            "{what}: no frames invented"
        );
        assert!(reads <= walks * 20, "{what}: bounded reads per walk");
    }
}
