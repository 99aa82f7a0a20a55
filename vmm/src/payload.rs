//! Bare payload VMs: a few bytes of 64-bit code that start directly in user
//! mode (CPL3), with no kernel.
//!
//! On hosts whose KVM runs guest kernel code slowly (see
//! docs/platform.md), user-mode code still runs at native speed, so payloads
//! serve the KVM capability probe, the kick tests and CPU-bound sampling
//! benchmarks. A payload ends by writing a status byte to the debug-exit
//! port 0xf4 (IOPL is 3, so `out` works from user mode).
//!
//! Memory: one user-accessible 2 MiB identity page. User code at
//! [`USER_CODE`], the `SYSCALL` target (`LSTAR`) at [`KERNEL_CODE`].

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::{Cap, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use devices::bus::Bus;
use devices::legacy::{DebugExit, DEBUG_EXIT_PORT};

use crate::arch::regs::{gdt_entry, segment_from_gdt};
use crate::end::{VmEnd, VmOutcome};
use crate::memory::GuestRam;
use crate::vcpu::{Vcpu, VcpuHandle, VcpuHook};
use crate::vm::{create_vm, open_kvm, VmError};

/// Where the user-mode code is loaded and entered.
pub const USER_CODE: u64 = 0x1000;
/// Where `SYSCALL` lands (`LSTAR`), at CPL0.
pub const KERNEL_CODE: u64 = 0x2000;
/// Top of the user stack.
pub const USER_STACK: u64 = 0x8000;
/// Start of a scratch data area payloads may use (up to 2 MiB).
pub const DATA: u64 = 0x10_0000;
/// 1 GiB of user virtual addresses mapped to guest-physical addresses where
/// there is neither RAM nor a device ([`UNMAPPED_GPA`] on): every access
/// there is an MMIO exit to an unclaimed address.
pub const UNMAPPED: u64 = 0x4000_0000;
/// The guest-physical address [`UNMAPPED`] maps to: 4 GiB, above the
/// payload's RAM, where no device is.
pub const UNMAPPED_GPA: u64 = 0xc000_0000;

const GDT: u64 = 0x500;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
const PD: u64 = 0xb000;
const PD_UNMAPPED: u64 = 0xc000;
const MAX_CODE: usize = (KERNEL_CODE - USER_CODE) as usize;

/// A one-vCPU VM running a payload.
pub struct PayloadVm {
    vcpu: Option<Vcpu>,
    handle: Arc<VcpuHandle>,
    end: Arc<VmEnd>,
    thread: Option<JoinHandle<()>>,
    // Dropped after the vCPU thread is joined.
    _vm: VmFd,
    ram: GuestRam,
}

fn write_guest(
    mem: &GuestMemoryMmap,
    user: &[u8],
    kernel: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    // GDT: null, kernel code 0x08, kernel data 0x10, user data 0x18, user code 0x20, TSS 0x28.
    let gdt = [
        0u64,
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0xc0f3, 0, 0xfffff),
        gdt_entry(0xa0fb, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
        0,
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + 8 * i as u64))?;
    }
    mem.write_obj(PDPT | 0x07, GuestAddress(PML4))?;
    mem.write_obj(PD | 0x07, GuestAddress(PDPT))?;
    mem.write_obj(0x87u64, GuestAddress(PD))?;
    // PDPT[1]: 512 user 2 MiB pages onto UNMAPPED_GPA.
    mem.write_obj(PD_UNMAPPED | 0x07, GuestAddress(PDPT + 8))?;
    for i in 0..512u64 {
        mem.write_obj(
            (UNMAPPED_GPA + (i << 21)) | 0x87,
            GuestAddress(PD_UNMAPPED + 8 * i),
        )?;
    }
    mem.write_slice(user, GuestAddress(USER_CODE))?;
    mem.write_slice(kernel, GuestAddress(KERNEL_CODE))?;
    Ok(())
}

fn setup_vcpu(fd: &kvm_ioctls::VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut sregs = fd.get_sregs()?;
    let seg = |flags, idx: u16, rpl: u16| {
        let mut s = segment_from_gdt(gdt_entry(flags, 0, 0xfffff), idx);
        s.selector |= rpl;
        s
    };
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 7 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = seg(0xa0fb, 4, 3);
    let data = seg(0xc0f3, 3, 3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = seg(0x808b, 5, 0);
    sregs.cr0 |= 0x8000_0011; // PG | ET | PE
    sregs.cr3 = PML4;
    sregs.cr4 |= 1 << 5; // PAE
    sregs.efer |= (1 << 10) | (1 << 8) | 1; // LMA | LME | SCE
    fd.set_sregs(&sregs)?;
    // IOPL 3: user code may use the report port directly.
    fd.set_regs(&kvm_regs {
        rip: USER_CODE,
        rsp: USER_STACK,
        rflags: 0x3002,
        ..Default::default()
    })?;
    let msrs = Msrs::from_entries(&[
        // STAR: SYSCALL CS = 0x08 (SS 0x10); SYSRET base 0x10.
        kvm_msr_entry {
            index: 0xc000_0081,
            data: (0x10u64 << 48) | (0x08u64 << 32),
            ..Default::default()
        },
        kvm_msr_entry {
            index: 0xc000_0082,
            data: KERNEL_CODE,
            ..Default::default()
        },
        kvm_msr_entry {
            index: 0xc000_0084,
            data: 0,
            ..Default::default()
        },
    ])
    .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    fd.set_msrs(&msrs)?;
    Ok(())
}

impl PayloadVm {
    /// Build a VM that enters `user` at CPL3; `kernel` is the SYSCALL target.
    pub fn new(user: &[u8], kernel: &[u8]) -> Result<Self, VmError> {
        if user.len() > MAX_CODE || kernel.len() > MAX_CODE {
            return Err(VmError::EventLoop(format!(
                "payload code is limited to {MAX_CODE} bytes"
            )));
        }
        let kvm = open_kvm()?;
        let ram = GuestRam::new(crate::vm::MIN_MEM_SIZE)?;
        let mem = ram.memory().clone();
        let vm = create_vm(&kvm, &mem)?;
        write_guest(&mem, user, kernel)
            .map_err(|e| VmError::EventLoop(format!("writing the payload: {e}")))?;
        let end = Arc::new(VmEnd::new().map_err(|source| VmError::Io {
            what: "eventfd",
            source,
        })?);
        let pio = Bus::new();
        let e = end.clone();
        pio.insert(
            Arc::new(Mutex::new(DebugExit::new(Box::new(move |s| {
                e.request(VmOutcome::Status(s))
            })))),
            DEBUG_EXIT_PORT,
            1,
        )?;
        let fd = vm.create_vcpu(0).map_err(|source| VmError::Kvm {
            what: "create vCPU",
            source,
        })?;
        let cpuid = crate::arch::cpuid::supported(&kvm)?;
        crate::arch::cpuid::setup(&fd, &cpuid, 0, 1)?;
        setup_vcpu(&fd).map_err(|source| VmError::Kvm {
            what: "set up the payload vCPU",
            source,
        })?;
        let sync = kvm.check_extension(Cap::SyncRegs);
        let vcpu = Vcpu::new(0, fd, pio, Bus::new(), end.clone(), sync);
        let handle = vcpu.handle();
        Ok(Self {
            vcpu: Some(vcpu),
            handle,
            end,
            thread: None,
            _vm: vm,
            ram,
        })
    }

    /// The payload's guest memory (e.g. to read results from [`DATA`]).
    pub fn memory(&self) -> &std::sync::Arc<GuestMemoryMmap> {
        self.ram.memory()
    }

    /// Kick handle for the vCPU.
    pub fn handle(&self) -> Arc<VcpuHandle> {
        self.handle.clone()
    }

    /// Install a hook before [`PayloadVm::start`].
    pub fn set_hook(&mut self, hook: Box<dyn VcpuHook>) {
        if let Some(v) = self.vcpu.as_mut() {
            v.set_hook(hook);
        }
    }

    /// Start the vCPU thread; returns once it runs (so kicks reach it) or
    /// has already ended.
    pub fn start(&mut self) -> Result<(), VmError> {
        if let Some(v) = self.vcpu.take() {
            let t = v.spawn()?;
            while !self.handle.is_running() && !t.is_finished() {
                std::thread::yield_now();
            }
            self.thread = Some(t);
        }
        Ok(())
    }

    /// Wait for the payload to end, at most `timeout`; stops it on timeout.
    pub fn wait(&mut self, timeout: Duration) -> VmOutcome {
        let start = Instant::now();
        while !self.end.stopping() && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_micros(500));
        }
        self.stop(VmOutcome::Timeout(timeout))
    }

    /// Stop the payload (if still running) and return how it ended.
    pub fn stop(&mut self, reason: VmOutcome) -> VmOutcome {
        self.end.request(reason);
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                let _ = self.handle.kick();
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = t.join();
        }
        self.end
            .outcome()
            .unwrap_or(VmOutcome::Error("payload stopped without a reason".into()))
    }
}

impl Drop for PayloadVm {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(VmOutcome::Halt);
        }
    }
}
