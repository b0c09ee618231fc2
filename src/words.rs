//! Words for people: how durations and sizes read on the status page, in `phygate status`,
//! in `check-config` and in the device reasons they show. Never a Rust debug name, never
//! humantime's compact `7days` / `30m`.

use std::time::Duration;

/// "250 ms", "1.5 s", "45 s", "30 min", "1 h 30 min", "1 day", "7 days", "2 days 3 h".
/// At most two units, the larger first; what is smaller than the second unit is left out.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0 s".into();
    }
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        return if ms % 1000 == 0 {
            format!("{} s", ms / 1000)
        } else {
            format!("{:.1} s", d.as_secs_f64())
        };
    }
    let s = d.as_secs();
    let units = [
        (s / 86_400, if s / 86_400 == 1 { "day" } else { "days" }),
        (s % 86_400 / 3600, "h"),
        (s % 3600 / 60, "min"),
        (s % 60, "s"),
    ];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    units[first..(first + 2).min(units.len())]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// "512 bytes", "64 KiB", "256 MiB", "1.5 GiB": binary units, one decimal when not whole.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// "1 device", "3 devices".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_words() {
        let s = Duration::from_secs;
        for (d, text) in [
            (Duration::from_millis(0), "0 s"),
            (Duration::from_millis(300), "300 ms"),
            (Duration::from_millis(1500), "1.5 s"),
            (s(45), "45 s"),
            (s(60), "1 min"),
            (s(90), "1 min 30 s"),
            (s(30 * 60), "30 min"),
            (s(3600), "1 h"),
            (s(5400), "1 h 30 min"),
            (s(5400 + 7), "1 h 30 min"),
            (s(86_400), "1 day"),
            (s(7 * 86_400), "7 days"),
            (s(2 * 86_400 + 3 * 3600 + 60), "2 days 3 h"),
            (s(86_400 + 60), "1 day"),
        ] {
            assert_eq!(duration(d), text, "{d:?}");
        }
    }

    #[test]
    fn sizes_read_as_words() {
        for (n, text) in [
            (0, "0 bytes"),
            (1023, "1023 bytes"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (256 << 20, "256 MiB"),
            (3 << 29, "1.5 GiB"),
        ] {
            assert_eq!(bytes(n), text, "{n}");
        }
        assert_eq!(count(1, "device", "devices"), "1 device");
        assert_eq!(count(0, "device", "devices"), "0 devices");
    }
}
