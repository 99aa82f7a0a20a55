//! perfvisor's guest-event port: the guest kernel's own notifiers (the guest
//! image's `pv_events` module: panic, power-off, halt, restart) tell the VMM
//! how the VM is ending, so that console text, which guest user space can
//! print too, never decides it (docs/security.md).
//!
//! The port is one byte wide. A read returns [`GUEST_EVENTS_MAGIC`], so the
//! module can tell perfvisor from a VMM without the port (reads of an
//! unclaimed port return 0xff). A write is one [`GuestEvent`]; anything else
//! is counted, logged (rate-limited) and ignored.

use rate_limited::{warn_rate_limited, RateLimiter};

use crate::bus::BusDevice;

/// What a read of the port returns.
pub const GUEST_EVENTS_MAGIC: u8 = 0x9e;

/// One event the guest kernel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// The notifiers are registered: from now on the guest's kernel reports
    /// its end, and console text decides nothing.
    Attached,
    /// The panic notifier ran (after the kernel printed its panic report).
    Panic,
    /// The power-off handler ran: the kernel finished shutting down.
    PowerOff,
    /// The kernel is halting (reboot notifier, `SYS_HALT`).
    Halt,
    /// The kernel is restarting (reboot notifier, `SYS_RESTART`); the reset
    /// itself comes through the i8042 or a triple fault.
    Restart,
}

impl GuestEvent {
    /// The event a written byte stands for (guest-image/include/pv_events_if.h).
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => GuestEvent::Attached,
            2 => GuestEvent::Panic,
            3 => GuestEvent::PowerOff,
            4 => GuestEvent::Halt,
            5 => GuestEvent::Restart,
            _ => return None,
        })
    }
}

/// Called with each valid event.
pub type EventHandler = Box<dyn FnMut(GuestEvent) + Send>;

/// The guest-event device.
pub struct GuestEvents {
    on_event: EventHandler,
    rejected: u64,
    limiter: RateLimiter,
}

impl GuestEvents {
    /// A device that calls `on_event` for every valid one-byte write.
    pub fn new(on_event: EventHandler) -> Self {
        Self {
            on_event,
            rejected: 0,
            limiter: RateLimiter::default(),
        }
    }

    /// Writes that were not a valid event.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

impl BusDevice for GuestEvents {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == 0 && data.len() == 1 {
            data[0] = GUEST_EVENTS_MAGIC;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let event = match data {
            [b] if offset == 0 => GuestEvent::from_byte(*b),
            _ => None,
        };
        match event {
            Some(e) => (self.on_event)(e),
            None => {
                self.rejected = self.rejected.saturating_add(1);
                warn_rate_limited!(
                    self.limiter,
                    "guest-event port: ignored a {}-byte write of {:02x?} at offset {offset} \
                     ({} rejected so far)",
                    data.len(),
                    &data[..data.len().min(8)],
                    self.rejected
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The guest module's header (guest-image/include/pv_events_if.h)
    /// names the same port, magic and event codes.
    #[test]
    fn the_module_header_agrees() {
        let header = include_str!("../../../guest-image/include/pv_events_if.h");
        let defs: Vec<(&str, u64)> = header
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("#define ")?.split_whitespace();
                let (name, value) = (w.next()?, w.next()?);
                let v = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                    None => value.parse().ok()?,
                };
                Some((name, v))
            })
            .collect();
        let mut events = 0;
        for (name, v) in &defs {
            match *name {
                "PV_EVENTS_PORT" => assert_eq!(*v, crate::legacy::GUEST_EVENTS_PORT),
                "PV_EVENTS_MAGIC" => assert_eq!(*v, u64::from(GUEST_EVENTS_MAGIC)),
                event => {
                    let want = match event {
                        "PV_EVENT_ATTACHED" => GuestEvent::Attached,
                        "PV_EVENT_PANIC" => GuestEvent::Panic,
                        "PV_EVENT_POWER_OFF" => GuestEvent::PowerOff,
                        "PV_EVENT_HALT" => GuestEvent::Halt,
                        "PV_EVENT_RESTART" => GuestEvent::Restart,
                        other => panic!("{other} in the header has no Rust counterpart"),
                    };
                    let b = u8::try_from(*v).unwrap();
                    assert_eq!(GuestEvent::from_byte(b), Some(want), "{event}");
                    events += 1;
                }
            }
        }
        assert_eq!(events, 5, "every event is in the header");
        assert_eq!((1..=255).filter_map(GuestEvent::from_byte).count(), 5);
    }

    #[test]
    fn events_and_rejections() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let mut dev = GuestEvents::new(Box::new(move |e| g.lock().unwrap().push(e)));
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [GUEST_EVENTS_MAGIC]);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        for w in [
            &[1u8][..],
            &[2],
            &[0],
            &[6],
            &[0xff],
            &[2, 0],
            &[3],
            &[4],
            &[5],
        ] {
            dev.write(0, w);
        }
        dev.write(1, &[2]);
        assert_eq!(
            *got.lock().unwrap(),
            vec![
                GuestEvent::Attached,
                GuestEvent::Panic,
                GuestEvent::PowerOff,
                GuestEvent::Halt,
                GuestEvent::Restart
            ]
        );
        assert_eq!(dev.rejected(), 5);
    }
}
