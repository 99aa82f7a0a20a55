//! What one return from `KVM_RUN` means, decided from the exit and the two
//! buses alone: port and MMIO accesses go to their bus, system events and
//! shutdowns end the VM, the rest end the vCPU with an error. The vCPU
//! loop (`crate::vcpu`) does what the answer says; anything that needs the
//! vCPU fd (the RIP for a report, the internal-error data) stays there, so
//! this part is tested without /dev/kvm.
//!
//! This module is about KVM exits (a return from `KVM_RUN`, [`ExitKind`]);
//! the VM's end is `crate::end` ([`VmOutcome`]), and a pvpmu trace EXIT
//! record (which reports KVM exits to the guest) is `pvpmu_abi::trace`.

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use devices::bus::Bus;

use crate::end::VmOutcome;
use crate::vcpu::ExitKind;

/// What the vCPU loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Handled on a bus (or a kick): count it and go on.
    Handled {
        kind: ExitKind,
        addr: u64,
        size: u32,
    },
    /// `KVM_RUN` returned EINTR or EAGAIN: a kick to serve.
    Kick,
    /// The VM ends with this outcome.
    End(VmOutcome),
    /// A shutdown (triple fault): the VM ends; the loop adds the RIP.
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR: the loop reads its data from kvm_run.
    InternalError,
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry { reason: u64, cpu: u32 },
    /// An exit perfvisor does not handle (its Debug form, bounded).
    Unhandled(String),
    /// `KVM_RUN` itself failed.
    RunFailed(kvm_ioctls::Error),
}

/// Longest exit description kept for [`Dispatch::Unhandled`].
const MAX_EXIT_NAME: usize = 120;

/// Decide what `run` (one `KVM_RUN` result) means, doing the bus access
/// it asks for. An access no device claims reads as all ones and a write
/// to it is dropped (port 0x80 delays, probes of absent hardware).
pub fn dispatch(
    run: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    pio: &Bus,
    mmio: &Bus,
    vcpu: u8,
) -> Dispatch {
    let width = |d: &[u8]| u32::try_from(d.len()).unwrap_or(u32::MAX);
    match run {
        Ok(VcpuExit::IoIn(port, data)) => {
            if !pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            Dispatch::Handled {
                kind: ExitKind::IoIn,
                addr: u64::from(port),
                size: width(data),
            }
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            pio.write(u64::from(port), data);
            Dispatch::Handled {
                kind: ExitKind::IoOut,
                addr: u64::from(port),
                size: width(data),
            }
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
            }
            Dispatch::Handled {
                kind: ExitKind::MmioRead,
                addr,
                size: width(data),
            }
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            mmio.write(addr, data);
            Dispatch::Handled {
                kind: ExitKind::MmioWrite,
                addr,
                size: width(data),
            }
        }
        Ok(VcpuExit::Shutdown) => Dispatch::TripleFault,
        Ok(VcpuExit::SystemEvent(kind, _)) => Dispatch::End(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VmOutcome::PowerOff,
            KVM_SYSTEM_EVENT_RESET => VmOutcome::Reboot,
            KVM_SYSTEM_EVENT_CRASH => VmOutcome::Panic("KVM reported a guest crash".into()),
            other => VmOutcome::Error(format!("vCPU {vcpu}: unknown KVM system event {other}")),
        }),
        Ok(VcpuExit::InternalError) => Dispatch::InternalError,
        Ok(VcpuExit::FailEntry(reason, cpu)) => Dispatch::FailEntry { reason, cpu },
        Ok(other) => {
            Dispatch::Unhandled(format!("{other:?}").chars().take(MAX_EXIT_NAME).collect())
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Dispatch::Kick,
        Err(e) => Dispatch::RunFailed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    /// Reads return `offset + i`; writes are recorded.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Probe>>, Arc<Mutex<Probe>>) {
        let (pio, mmio) = (Bus::new(), Bus::new());
        let (p, m) = (
            Arc::new(Mutex::new(Probe::default())),
            Arc::new(Mutex::new(Probe::default())),
        );
        pio.insert(p.clone(), 0x3f8, 8).unwrap();
        mmio.insert(m.clone(), 0xd000_0000, 0x1000).unwrap();
        (pio, mmio, p, m)
    }

    #[test]
    fn port_and_mmio_accesses_reach_their_device() {
        let (pio, mmio, p, m) = buses();
        let mut data = [0u8; 1];
        assert_eq!(
            dispatch(Ok(VcpuExit::IoIn(0x3fa, &mut data)), &pio, &mmio, 0),
            Dispatch::Handled {
                kind: ExitKind::IoIn,
                addr: 0x3fa,
                size: 1
            }
        );
        assert_eq!(data, [2], "offset 2 inside the device");
        dispatch(Ok(VcpuExit::IoOut(0x3f8, b"x")), &pio, &mmio, 0);
        assert_eq!(p.lock().unwrap().writes, vec![(0, vec![b'x'])]);

        let mut data = [0u8; 4];
        let d = dispatch(
            Ok(VcpuExit::MmioRead(0xd000_0010, &mut data)),
            &pio,
            &mmio,
            0,
        );
        assert_eq!(
            d,
            Dispatch::Handled {
                kind: ExitKind::MmioRead,
                addr: 0xd000_0010,
                size: 4
            }
        );
        assert_eq!(data, [0x10, 0x11, 0x12, 0x13]);
        dispatch(
            Ok(VcpuExit::MmioWrite(0xd000_0100, &[1, 2, 3, 4, 5, 6, 7, 8])),
            &pio,
            &mmio,
            0,
        );
        assert_eq!(
            m.lock().unwrap().writes,
            vec![(0x100, vec![1, 2, 3, 4, 5, 6, 7, 8])]
        );
    }

    #[test]
    fn unclaimed_reads_are_all_ones_and_writes_vanish() {
        let (pio, mmio, p, m) = buses();
        let mut data = [0u8; 2];
        dispatch(Ok(VcpuExit::IoIn(0x80, &mut data)), &pio, &mmio, 0);
        assert_eq!(data, [0xff, 0xff]);
        let mut data = [0u8; 8];
        dispatch(
            Ok(VcpuExit::MmioRead(0xfee0_0000, &mut data)),
            &pio,
            &mmio,
            0,
        );
        assert_eq!(data, [0xff; 8]);
        let d = dispatch(Ok(VcpuExit::IoOut(0x80, &[0])), &pio, &mmio, 0);
        assert!(matches!(d, Dispatch::Handled { .. }));
        dispatch(Ok(VcpuExit::MmioWrite(0, &[0; 4])), &pio, &mmio, 0);
        assert!(p.lock().unwrap().writes.is_empty());
        assert!(m.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn system_events_end_the_vm() {
        let (pio, mmio, _, _) = buses();
        let ev = |kind| dispatch(Ok(VcpuExit::SystemEvent(kind, &[])), &pio, &mmio, 3);
        assert_eq!(
            ev(KVM_SYSTEM_EVENT_SHUTDOWN),
            Dispatch::End(VmOutcome::PowerOff)
        );
        assert_eq!(ev(KVM_SYSTEM_EVENT_RESET), Dispatch::End(VmOutcome::Reboot));
        assert!(matches!(
            ev(KVM_SYSTEM_EVENT_CRASH),
            Dispatch::End(VmOutcome::Panic(_))
        ));
        match ev(0xdead) {
            Dispatch::End(VmOutcome::Error(m)) => {
                assert!(m.contains("vCPU 3") && m.contains("57005"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            dispatch(Ok(VcpuExit::Shutdown), &pio, &mmio, 0),
            Dispatch::TripleFault
        );
    }

    #[test]
    fn kicks_failures_and_unknown_exits() {
        let (pio, mmio, _, _) = buses();
        for errno in [libc::EINTR, libc::EAGAIN] {
            assert_eq!(
                dispatch(Err(kvm_ioctls::Error::new(errno)), &pio, &mmio, 0),
                Dispatch::Kick
            );
        }
        assert!(matches!(
            dispatch(Err(kvm_ioctls::Error::new(libc::EFAULT)), &pio, &mmio, 0),
            Dispatch::RunFailed(e) if e.errno() == libc::EFAULT
        ));
        assert_eq!(
            dispatch(Ok(VcpuExit::InternalError), &pio, &mmio, 0),
            Dispatch::InternalError
        );
        assert_eq!(
            dispatch(Ok(VcpuExit::FailEntry(7, 1)), &pio, &mmio, 0),
            Dispatch::FailEntry { reason: 7, cpu: 1 }
        );
        match dispatch(Ok(VcpuExit::Hlt), &pio, &mmio, 0) {
            Dispatch::Unhandled(name) => assert_eq!(name, "Hlt"),
            other => panic!("{other:?}"),
        }
    }
}
