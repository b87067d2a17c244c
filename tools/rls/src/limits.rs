//! The limits file, in envoyproxy/ratelimit's YAML format (so the same file configures either
//! service), and the fixed windows the counters live in.
//!
//! ```yaml
//! domain: switchyard
//! descriptors:
//!   - key: switchyard_key
//!     value: alice               # absent: any value, one counter per value
//!     descriptors:
//!       - key: limit
//!         value: requests
//!         rate_limit: {unit: minute, requests_per_unit: 60}
//! ```

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct LimitsFile {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<Node>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default)]
    pub descriptors: Vec<Node>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RateLimitSpec {
    pub unit: Unit,
    pub requests_per_unit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// The protocol's `RateLimitResponse.RateLimit.Unit` number.
    pub fn proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// The window holding `now` (Unix seconds): its start and its end. Seconds to days are fixed
    /// lengths from the epoch, weeks start on Monday 00:00 UTC, months and years are the UTC
    /// calendar's.
    pub fn window(self, now: u64) -> (u64, u64) {
        let fixed = |len: u64| {
            let start = now - now % len;
            (start, start + len)
        };
        match self {
            Unit::Second => fixed(1),
            Unit::Minute => fixed(60),
            Unit::Hour => fixed(3600),
            Unit::Day => fixed(86_400),
            Unit::Week => {
                // 1970-01-01 was a Thursday: Mondays are 4 days later modulo 7.
                let days = now / 86_400;
                let monday = days - (days + 3) % 7;
                (monday * 86_400, (monday + 7) * 86_400)
            }
            Unit::Month => {
                let (y, m, _) = civil_from_days((now / 86_400) as i64);
                let start = days_from_civil(y, m, 1);
                let end = if m == 12 { days_from_civil(y + 1, 1, 1) } else { days_from_civil(y, m + 1, 1) };
                (start as u64 * 86_400, end as u64 * 86_400)
            }
            Unit::Year => {
                let (y, _, _) = civil_from_days((now / 86_400) as i64);
                (days_from_civil(y, 1, 1) as u64 * 86_400, days_from_civil(y + 1, 1, 1) as u64 * 86_400)
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl LimitsFile {
    pub fn parse(text: &str) -> Result<LimitsFile, String> {
        let f: LimitsFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if f.domain.is_empty() {
            return Err("domain is empty".into());
        }
        Ok(f)
    }

    /// The limit of a request descriptor: walk the tree entry by entry, an exact `value` first,
    /// else a node without `value` (any value); the limit is the last node's `rate_limit`.
    pub fn find<'a, I>(&self, entries: I) -> Option<RateLimitSpec>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut level = &self.descriptors;
        let mut found: Option<&Node> = None;
        for (k, v) in entries {
            let exact = level.iter().find(|n| n.key == k && n.value.as_deref() == Some(v));
            let any = || level.iter().find(|n| n.key == k && n.value.is_none());
            let node = exact.or_else(any)?;
            found = Some(node);
            level = &node.descriptors;
        }
        found.and_then(|n| n.rate_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
domain: switchyard
descriptors:
  - key: switchyard_key
    value: alice
    descriptors:
      - key: limit
        value: requests
        rate_limit: {unit: minute, requests_per_unit: 10}
  - key: switchyard_key
    descriptors:
      - key: limit
        value: requests
        rate_limit: {unit: minute, requests_per_unit: 99}
"#;

    #[test]
    fn exact_value_before_any_value_and_only_whole_paths() {
        let f = LimitsFile::parse(FILE).unwrap();
        assert_eq!(f.find([("switchyard_key", "alice"), ("limit", "requests")]).unwrap().requests_per_unit, 10);
        assert_eq!(f.find([("switchyard_key", "bob"), ("limit", "requests")]).unwrap().requests_per_unit, 99);
        assert!(f.find([("switchyard_key", "alice"), ("limit", "tokens")]).is_none());
        assert!(f.find([("switchyard_key", "alice")]).is_none());
        assert!(f.find([("other", "alice"), ("limit", "requests")]).is_none());
    }

    #[test]
    fn windows() {
        // 2026-12-05 12:34:56 UTC, a Saturday.
        let t = 1_796_474_096;
        assert_eq!(Unit::Minute.window(t), (t - 56, t + 4));
        assert_eq!(Unit::Day.window(t), (t - 45_296, t - 45_296 + 86_400));
        let (ws, we) = Unit::Week.window(t);
        assert_eq!((t - ws) / 86_400, 5, "Monday 2026-11-30");
        assert_eq!(we - ws, 7 * 86_400);
        let (ms, me) = Unit::Month.window(t);
        assert_eq!(ms, days_from_civil(2026, 12, 1) as u64 * 86_400);
        assert_eq!(me, days_from_civil(2027, 1, 1) as u64 * 86_400);
        let (ys, ye) = Unit::Year.window(t);
        assert_eq!((ye - ys) / 86_400, 365);
    }
}
