//! Human units in configuration: durations (`500ms`, `2s`, `5m`, `1h30m`, `1d`) and byte
//! sizes (`4096`, `512KiB`, `128MiB`, `1GB`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration a setting takes (100 years): beyond it, timers and clocks overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);
/// The largest size a setting takes (1 PiB).
pub const MAX_BYTES: u64 = 1 << 50;

/// A duration written with units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    /// Parses `<number><unit>` groups; units `ms`, `s`, `m`, `h`, `d`.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty duration; write e.g. \"500ms\", \"2s\", \"5m\", \"1h\"".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let n_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
            let (num, tail) = rest.split_at(n_end);
            let u_end = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
            let (unit, next) = tail.split_at(u_end);
            let n: f64 = num.parse().map_err(|_| format!("{text:?} is not a duration; write e.g. \"2s\""))?;
            let secs = match unit.trim() {
                "ms" => n / 1000.0,
                "s" | "sec" => n,
                "m" | "min" => n * 60.0,
                "h" => n * 3600.0,
                "d" => n * 86400.0,
                "" => return Err(format!("{text:?} has no unit; write e.g. \"{num}s\" or \"{num}ms\"")),
                u => return Err(format!("{text:?}: unknown unit {u:?} (use ms, s, m, h, d)")),
            };
            let too_large = || format!("{text:?} is too large (at most 36500d)");
            let part = Duration::try_from_secs_f64(secs).map_err(|_| too_large())?;
            total = total.checked_add(part).filter(|t| *t <= MAX_DURATION).ok_or_else(too_large)?;
            rest = next;
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            _ if !ms.is_multiple_of(1000) => write!(f, "{ms}ms"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ => write!(f, "{}s", ms / 1000),
        }
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Dur::parse(s)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A byte size: an integer, or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a size; write e.g. \"128MiB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            u => return Err(format!("{text:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
        };
        n.checked_mul(mult)
            .filter(|b| *b <= MAX_BYTES)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large (at most 1PiB)"))
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ByteSize::parse(s)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if n <= MAX_BYTES => Ok(ByteSize(n)),
            Raw::N(n) => Err(serde::de::Error::custom(format!("{n} is too large (at most 1PiB)"))),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Dur::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert!(Dur::parse("5").unwrap_err().contains("no unit"));
        assert!(Dur::parse("5 weeks").is_err());
        assert!(Dur::parse("").is_err());
        // Huge values are errors, never a panic or an overflow later.
        for huge in ["99999999999999999999999999d", "36501d", "36500d1s", "1.8e19s", "99999999999999999999h"] {
            assert!(Dur::parse(huge).is_err(), "{huge}");
        }
        assert_eq!(Dur::parse("36500d").unwrap().0, MAX_DURATION);
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("128MiB").unwrap().0, 128 << 20);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert_eq!(ByteSize::parse("1GB").unwrap().0, 1_000_000_000);
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("18446744073709551615").is_err());
        assert!(ByteSize::parse("99999999999GiB").unwrap_err().contains("too large"));
    }
}
