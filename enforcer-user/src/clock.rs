//! Wall time, CLOCK_BOOTTIME and the boot id, read together so a session's expiry can be
//! computed from boot time within one boot and from wall time after a reboot.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A moment recorded on both clocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instant {
    pub wall_unix_ns: u64,
    pub boot_ns: u64,
    /// `/proc/sys/kernel/random/boot_id` when `boot_ns` was read.
    pub boot_id: String,
}

/// Source of the current time; tests use `ManualClock` to step the wall clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The host's clocks.
#[derive(Debug)]
pub struct SystemClock {
    boot_id: String,
}

impl SystemClock {
    /// Reads the boot id once; it cannot change while the process runs.
    pub fn new() -> std::io::Result<Self> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
        Ok(Self {
            boot_id: boot_id.trim().to_owned(),
        })
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        let wall_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        Instant {
            wall_unix_ns,
            boot_ns: boot_time_ns(),
            boot_id: self.boot_id.clone(),
        }
    }
}

/// Returns CLOCK_BOOTTIME in nanoseconds, the clock of `bpf_ktime_get_boot_ns()`.
pub fn boot_time_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec. CLOCK_BOOTTIME exists since Linux 2.6.39, so
    // the only failure left (EFAULT) cannot happen with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A clock for tests that moves only through `advance`, `step_wall` and `reboot`.
#[derive(Debug)]
pub struct ManualClock {
    now: std::sync::Mutex<Instant>,
}

impl ManualClock {
    pub fn new(start: Instant) -> Self {
        Self {
            now: std::sync::Mutex::new(start),
        }
    }

    /// Moves both clocks forward by `elapsed`.
    pub fn advance(&self, elapsed: Duration) {
        let mut now = self.lock();
        now.wall_unix_ns += elapsed.as_nanos() as u64;
        now.boot_ns += elapsed.as_nanos() as u64;
    }

    /// Steps the wall clock alone, as an NTP correction or an operator would.
    pub fn step_wall(&self, offset_ns: i64) {
        let mut now = self.lock();
        now.wall_unix_ns = now.wall_unix_ns.saturating_add_signed(offset_ns);
    }

    /// Simulates a reboot: a new boot id and boot time restarting from `boot_ns`.
    pub fn reboot(&self, boot_id: &str, boot_ns: u64) {
        let mut now = self.lock();
        now.boot_id = boot_id.to_owned();
        now.boot_ns = boot_ns;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.lock().clone()
    }
}

/// Converts the expiry `start + duration` to CLOCK_BOOTTIME of the boot `now` belongs to.
///
/// Within the boot that recorded `start`, the expiry is `start.boot_ns + duration`, so a
/// wall-clock step cannot move it. After a reboot it is the wall-time remainder added to
/// `now.boot_ns`, and never later than the boot-time expiry would have been. Returns 0 (already
/// expired) when no time is left.
pub fn expiry_boot_ns(start: &Instant, duration: Duration, now: &Instant) -> u64 {
    expiry_boot_ns_of(
        start.wall_unix_ns,
        start.boot_ns,
        &start.boot_id,
        duration,
        now,
    )
}

/// Computes `expiry_boot_ns` for a start given by its wall time, boot time and boot id, the
/// fields of a stored session view.
pub fn expiry_boot_ns_of(
    start_wall_unix_ns: u64,
    start_boot_ns: u64,
    start_boot_id: &str,
    duration: Duration,
    now: &Instant,
) -> u64 {
    let duration_ns = duration.as_nanos() as u64;
    if start_boot_id == now.boot_id {
        return start_boot_ns.saturating_add(duration_ns);
    }
    let expires_wall = start_wall_unix_ns.saturating_add(duration_ns);
    let remaining = expires_wall.saturating_sub(now.wall_unix_ns);
    if remaining == 0 {
        return 0;
    }
    // A wall clock stepped back after the reboot must not extend the session either.
    now.boot_ns.saturating_add(remaining.min(duration_ns))
}

/// Places a past wall time (an ID token's `auth_time`) on both clocks of `now`'s boot. A time
/// in the future, from a skewed IdP clock, is taken as `now`, so it cannot extend a session.
pub fn instant_at_wall(now: &Instant, wall_unix_ns: u64) -> Instant {
    let elapsed = now
        .wall_unix_ns
        .saturating_sub(wall_unix_ns)
        .min(now.boot_ns);
    Instant {
        wall_unix_ns: now.wall_unix_ns - elapsed,
        boot_ns: now.boot_ns - elapsed,
        boot_id: now.boot_id.clone(),
    }
}

/// Wall time, in Unix nanoseconds, at which a boot-time expiry falls, for display.
pub fn expiry_wall_ns(expires_boot_ns: u64, now: &Instant) -> u64 {
    if expires_boot_ns >= now.boot_ns {
        now.wall_unix_ns
            .saturating_add(expires_boot_ns - now.boot_ns)
    } else {
        // An expiry in the past stays where it was, rather than moving along with now.
        now.wall_unix_ns
            .saturating_sub(now.boot_ns - expires_boot_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_expiry_keeps_its_wall_time() {
        let now = instant(10_000_000_000_000, 500_000_000_000, "boot");
        assert_eq!(expiry_wall_ns(440_000_000_000, &now), 9_940_000_000_000);
        assert_eq!(expiry_wall_ns(560_000_000_000, &now), 10_060_000_000_000);
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn instant(wall_unix_ns: u64, boot_ns: u64, boot_id: &str) -> Instant {
        Instant {
            wall_unix_ns,
            boot_ns,
            boot_id: boot_id.to_owned(),
        }
    }

    #[test]
    fn same_boot_expiry_ignores_wall_step() {
        let start = instant(1_000 * 1_000_000_000, 50_000_000_000, "a");
        let clock = ManualClock::new(start.clone());
        let before = expiry_boot_ns(&start, HOUR, &clock.now());
        clock.step_wall(-(24 * 3600 * 1_000_000_000));
        let after = expiry_boot_ns(&start, HOUR, &clock.now());
        assert_eq!(before, 50_000_000_000 + 3600 * 1_000_000_000);
        assert_eq!(after, before);
    }

    #[test]
    fn past_auth_time_moves_boot_time_back() {
        let now = instant(10_000 * 1_000_000_000, 500 * 1_000_000_000, "a");
        let at = instant_at_wall(&now, now.wall_unix_ns - 60 * 1_000_000_000);
        assert_eq!(at.boot_ns, 440 * 1_000_000_000);
        assert_eq!(at.wall_unix_ns, now.wall_unix_ns - 60 * 1_000_000_000);
    }

    #[test]
    fn future_auth_time_is_clamped_to_now() {
        let now = instant(10_000 * 1_000_000_000, 500 * 1_000_000_000, "a");
        let at = instant_at_wall(&now, now.wall_unix_ns + 3600 * 1_000_000_000);
        assert_eq!(at, now);
    }

    #[test]
    fn reboot_uses_wall_remainder() {
        let start = instant(10_000 * 1_000_000_000, 50_000_000_000, "a");
        let now = instant(start.wall_unix_ns + 600 * 1_000_000_000, 7_000_000_000, "b");
        let expiry = expiry_boot_ns(&start, HOUR, &now);
        assert_eq!(expiry, 7_000_000_000 + 3000 * 1_000_000_000);
    }

    #[test]
    fn reboot_with_wall_clock_behind_is_capped() {
        let start = instant(10_000 * 1_000_000_000, 50_000_000_000, "a");
        let now = instant(
            start.wall_unix_ns - 3600 * 1_000_000_000,
            7_000_000_000,
            "b",
        );
        let expiry = expiry_boot_ns(&start, HOUR, &now);
        assert_eq!(expiry, 7_000_000_000 + 3600 * 1_000_000_000);
    }

    #[test]
    fn reboot_after_expiry_is_expired() {
        let start = instant(10_000 * 1_000_000_000, 50_000_000_000, "a");
        let now = instant(start.wall_unix_ns + 2 * 3600 * 1_000_000_000, 7, "b");
        assert_eq!(expiry_boot_ns(&start, HOUR, &now), 0);
    }
}
