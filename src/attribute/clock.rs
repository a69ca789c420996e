//! Kernel timestamps are CLOCK_BOOTTIME; the log shows wall-clock UTC.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Wall-clock time at boot, sampled once so that event order is preserved.
    boot: SystemTime,
}

impl BootClock {
    pub fn now() -> Self {
        let since_boot = Duration::from_nanos(boottime_ns());
        Self {
            boot: SystemTime::now()
                .checked_sub(since_boot)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(ktime_ns)
    }

    pub fn rfc3339(&self, ktime_ns: u64) -> String {
        crate::event::rfc3339(self.wall(ktime_ns))
    }
}

pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
