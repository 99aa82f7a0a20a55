//! A minimal MC146818 CMOS RTC at ports 0x70/0x71.
//!
//! Linux's `rtc_cmos` and the early `mach_get_cmos_time` read the wall clock
//! here. Without a device the reads return 0xff, the "update in progress" bit
//! looks stuck, and the probe waits seconds for it to clear. This model keeps
//! UIP clear and serves the host's UTC time in BCD, 24-hour mode. Guest writes
//! to the clock registers are stored but the clock keeps following the host.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status B: 24-hour mode, BCD values (bit 2 clear), no interrupts.
const B_24H: u8 = 0x02;
/// Status B bit 2: values are binary rather than BCD.
const B_BINARY: u8 = 0x04;
/// Status A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) never set.
const A_DEFAULT: u8 = 0x26;
/// Status D: "valid RAM and time".
const D_VRT: u8 = 0x80;

/// The CMOS RTC and its 128 bytes of NVRAM.
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    now: fn() -> u64,
}

fn host_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    /// A CMOS clock that follows the host's UTC time.
    pub fn new() -> Self {
        Self::with_clock(host_now)
    }

    /// A CMOS clock reading seconds since the Unix epoch from `now` (for tests).
    pub fn with_clock(now: fn() -> u64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A as usize] = A_DEFAULT;
        nvram[REG_B as usize] = B_24H;
        nvram[REG_D as usize] = D_VRT;
        Self {
            index: 0,
            nvram,
            now,
        }
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.nvram[REG_B as usize] & B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        let secs = (self.now)();
        let days = (secs / 86_400) as i64;
        let tod = (secs % 86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        match reg {
            REG_SECONDS => self.encode(tod % 60),
            REG_MINUTES => self.encode(tod / 60 % 60),
            REG_HOURS => self.encode(tod / 3600),
            // 1970-01-01 was a Thursday; CMOS counts Sunday as 1.
            REG_WEEKDAY => self.encode(((days + 4).rem_euclid(7) + 1) as u32),
            REG_DAY => self.encode(day),
            REG_MONTH => self.encode(month),
            REG_YEAR => self.encode((year % 100) as u32),
            REG_CENTURY => self.encode((year / 100) as u32),
            REG_A => self.nvram[REG_A as usize] & 0x7f,
            REG_C => std::mem::take(&mut self.nvram[REG_C as usize]),
            _ => self.nvram[reg as usize & 0x7f],
        }
    }
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 1) => data[0] = self.index,
            (1, 1) => data[0] = self.read_reg(self.index),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 of the index port masks NMIs on real hardware; ignore it.
            (0, [v]) => self.index = v & 0x7f,
            (1, [v]) => match self.index {
                REG_C | REG_D => {}
                REG_A => self.nvram[REG_A as usize] = v & 0x7f,
                i => self.nvram[i as usize] = *v,
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(c: &mut Cmos, r: u8) -> u8 {
        c.write(0, &[r | 0x80]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn serves_bcd_time_with_uip_clear() {
        // 2026-11-27 19:23:10 UTC, a Friday.
        let mut c = Cmos::with_clock(|| 1_795_807_390);
        assert_eq!(reg(&mut c, REG_A) & 0x80, 0);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x10);
        assert_eq!(reg(&mut c, REG_MINUTES), 0x23);
        assert_eq!(reg(&mut c, REG_HOURS), 0x19);
        assert_eq!(reg(&mut c, REG_DAY), 0x27);
        assert_eq!(reg(&mut c, REG_MONTH), 0x11);
        assert_eq!(reg(&mut c, REG_YEAR), 0x26);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut c, REG_WEEKDAY), 0x06);
        assert_eq!(reg(&mut c, REG_D), D_VRT);
        // Binary mode.
        c.write(0, &[REG_B]);
        c.write(1, &[B_24H | B_BINARY]);
        assert_eq!(reg(&mut c, REG_MINUTES), 23);
    }

    #[test]
    fn calendar_edges() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn nvram_and_odd_accesses() {
        let mut c = Cmos::new();
        c.write(0, &[0x40]);
        c.write(1, &[0x5a]);
        assert_eq!(reg(&mut c, 0x40), 0x5a);
        let mut w = [0u8; 2];
        c.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        c.write(5, &[1, 2]);
    }
}
