//! Kernel timestamps to wall-clock time.
//!
//! The eBPF programs stamp events with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC). The offset to
//! CLOCK_REALTIME is sampled at start and refreshed by the agent, so NTP slews are followed.

/// Converts monotonic nanoseconds to Unix nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct KtimeClock {
    realtime_minus_monotonic_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl KtimeClock {
    /// Samples the current offset between the two clocks.
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono2 = clock_ns(libc::CLOCK_MONOTONIC);
        Self {
            realtime_minus_monotonic_ns: real - (mono + mono2) / 2,
        }
    }

    /// A clock with a fixed offset, for tests and replays.
    pub fn with_offset(realtime_minus_monotonic_ns: i128) -> Self {
        Self {
            realtime_minus_monotonic_ns,
        }
    }

    /// Current CLOCK_MONOTONIC in nanoseconds, the kernel's `bpf_ktime_get_ns()` scale.
    pub fn monotonic_now_ns() -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
    }

    pub fn to_unix_ns(&self, ktime_ns: u64) -> i128 {
        i128::from(ktime_ns) + self.realtime_minus_monotonic_ns
    }
}

/// Formats Unix nanoseconds as RFC 3339 UTC with nanoseconds: `2026-11-28T00:16:48.123456789Z`.
pub fn rfc3339_nanos(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339_nanos(1_795_825_008_500_000_000),
            "2026-11-28T00:16:48.500000000Z"
        );
    }

    #[test]
    fn ktime_maps_onto_realtime() {
        let clock = KtimeClock::now();
        let mono = KtimeClock::monotonic_now_ns();
        let real = clock_ns(libc::CLOCK_REALTIME);
        let diff = (clock.to_unix_ns(mono) - real).abs();
        assert!(diff < 50_000_000, "offset off by {diff} ns");
    }
}
