//! Rate limits per key and per team: requests per minute, tokens per minute and concurrent
//! requests, with the OpenAI `x-ratelimit-*` headers and `retry-after`.
//!
//! **Window.** Requests and tokens are counted over a *rolling 60 s window*, exactly: a
//! [`RollingWindow`] is a log of what was admitted, with one entry per one-second slot that saw
//! admissions — the slot's total and the time of its *latest* admission — and an entry counts until
//! 60 s after that time. A request is admitted only if what the window holds plus the request fits
//! the limit. Hence, with the host clock moving forward:
//!
//! - **At most `limit` in any 60 s.** For every interval `[a, a + 60 s)`, what was admitted at times
//!   inside it totals at most `limit`: at the last admission in the interval, every earlier one in
//!   it is still counted (an entry's time is never earlier than any admission it holds) and the
//!   check passed. There is no burst allowance on top: a burst at the end of one minute and another
//!   at the end of the next cannot add up to more than `limit` within 60 s.
//! - **It forgets within 60 s.** An admission stops counting at most 60 s + 1 s after it happened
//!   (it shares its entry's time with later admissions of the same second: the only approximation,
//!   always on the strict side), and every entry's time is at most *now*, so the window is back to
//!   full — `x-ratelimit-reset-*` — within 60 s, and a refused request that fits the limit at all
//!   fits within 60 s (`retry-after`, exact: at that millisecond it passes, one earlier it does
//!   not). A request larger than the whole limit never fits (no `retry-after`).
//! - **Bounded state.** Entries are at most 60 s old and one per second: at most 61 of them (64
//!   allowed), each a varint time difference and a varint amount; an idle window is one byte.
//!
//! **Tokens.** A request is charged its prompt estimate when admitted ([`RateState::admit`]) and
//! corrected to the real total when it ends ([`RateState::settle`]): an over-estimate is refunded to
//! the entry the estimate went to (if that entry is still in the window; otherwise it has already
//! stopped counting), an under-estimate charges the difference at settlement time. The window thus
//! counts the real usage of the requests that ended and the estimates of those still running, and an
//! admission never takes it over the limit. An under-estimate can: the window then holds more than
//! the limit (the "bucket" is below zero), `remaining` reads 0, and later requests are refused until
//! enough has left the window — at most 60 s after the settlement that charged it. (Because a refund
//! makes room again, the *estimates* admitted within 60 s can add up to more than the limit when
//! the answers used less; what the window counts never does, except by under-estimates.)
//!
//! **Concurrency.** Concurrent requests are *leases*, not a bare counter: each admitted request
//! adds one to a bucket keyed by its lease expiry (`now + lease_secs`, rounded up to a coarse
//! granularity so that there are at most ~32 buckets), and its settlement removes it from that same
//! bucket. Expired buckets are dropped on every update, so a request whose settlement never comes
//! (a VM crash, a filter bug) frees its slot after `lease_secs` instead of leaking it forever.
//! Budget reservations use the same [`Leases`].

use serde::Deserialize;

use super::store::{Reader, Writer};

/// Length of a rate-limit window.
pub const WINDOW_MS: u64 = 60_000;

/// Per-scope limits (`limits` of a key or a team). Absent fields are unlimited.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(default)]
    pub max_concurrent: Option<u64>,
}

impl LimitsConfig {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_concurrent.is_none()
    }

    pub fn validate(&self, what: &str) -> Result<(), String> {
        for (name, v) in [("rpm", self.rpm), ("tpm", self.tpm), ("max_concurrent", self.max_concurrent)] {
            if v == Some(0) {
                return Err(format!("{what}: limits.{name} must be positive (disable the key instead)"));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Rolling window
// ---------------------------------------------------------------------------------------------

/// Granularity of a [`RollingWindow`]'s entries: admissions within the same slot share an entry.
pub const SLOT_MS: u64 = 1_000;

/// Most entries a window holds. With a clock moving forward a window never holds more than
/// `WINDOW_MS / SLOT_MS + 1` (61); past this bound the oldest entries are folded into the next
/// one (later, so still on the strict side), and a decoded value holding more is refused.
const MAX_ENTRIES: usize = 64;

fn slot(t_ms: u64) -> u64 {
    t_ms / SLOT_MS
}

/// Whether an entry stamped `stamp_ms` still counts at `t_ms`.
fn counts_at(stamp_ms: u64, t_ms: u64) -> bool {
    stamp_ms.saturating_add(WINDOW_MS) > t_ms
}

/// What was admitted over the last 60 s (see the module notes): entries `(stamp_ms, amount)`,
/// oldest first, at most one per [`SLOT_MS`] slot, with strictly increasing stamps; `stamp_ms` is
/// the time of the latest admission the entry holds, and the entry counts while
/// `t < stamp_ms + 60 s`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollingWindow {
    entries: Vec<(u64, u64)>,
}

/// What a window was charged, to correct or undo it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The stamp the charge was recorded at (its entry is the one of that slot).
    pub at_ms: u64,
    pub amount: u64,
}

impl RollingWindow {
    /// Drops the entries that no longer count at `now_ms` (a prefix: stamps are increasing).
    pub fn purge(&mut self, now_ms: u64) {
        let gone = self.entries.iter().take_while(|&&(s, _)| !counts_at(s, now_ms)).count();
        self.entries.drain(..gone);
    }

    /// What counts at `t_ms`: everything admitted in the 60 s before it (and, if the clock went
    /// back, after it).
    pub fn used_at(&self, t_ms: u64) -> u64 {
        self.entries.iter().filter(|&&(s, _)| counts_at(s, t_ms)).fold(0u64, |a, &(_, n)| a.saturating_add(n))
    }

    /// Everything the window holds, whether it still counts or not (tests and diagnostics).
    pub fn total(&self) -> u64 {
        self.entries.iter().fold(0u64, |a, &(_, n)| a.saturating_add(n))
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Milliseconds from `now_ms` until `used + amount <= limit` (0 if it already holds): the
    /// moment the entry whose expiry makes room stops counting. `None` when it never will
    /// (`amount > limit`). With a clock moving forward it is at most 60 s.
    pub fn ms_until_fits(&self, now_ms: u64, amount: u64, limit: u64) -> Option<u64> {
        if amount > limit {
            return None;
        }
        let mut used = self.used_at(now_ms);
        if used.saturating_add(amount) <= limit {
            return Some(0);
        }
        for &(s, n) in self.entries.iter().filter(|&&(s, _)| counts_at(s, now_ms)) {
            used = used.saturating_sub(n);
            if used.saturating_add(amount) <= limit {
                return Some(s.saturating_add(WINDOW_MS).saturating_sub(now_ms));
            }
        }
        // Only reachable if the sum saturated: once everything has expired, it fits.
        Some(self.ms_until_empty(now_ms))
    }

    /// Milliseconds until nothing counts any more (the limit is back to full): 60 s after the
    /// newest entry, so at most 60 s.
    pub fn ms_until_empty(&self, now_ms: u64) -> u64 {
        self.entries.last().map_or(0, |&(s, _)| s.saturating_add(WINDOW_MS).saturating_sub(now_ms))
    }

    /// Charges unconditionally (usage past the limit is still counted). Admissions in the slot of
    /// the newest entry (or, with a clock behind it, earlier) join that entry, whose stamp moves to
    /// `now_ms` if later; others start a new entry.
    pub fn charge(&mut self, now_ms: u64, amount: u64) -> Charge {
        self.purge(now_ms);
        if amount == 0 {
            return Charge { at_ms: now_ms, amount };
        }
        if let Some(last) = self.entries.last_mut() {
            if slot(now_ms) <= slot(last.0) {
                last.0 = last.0.max(now_ms);
                last.1 = last.1.saturating_add(amount);
                return Charge { at_ms: last.0, amount };
            }
        }
        self.entries.push((now_ms, amount));
        self.cap();
        Charge { at_ms: now_ms, amount }
    }

    /// Replaces an earlier charge by `actual` (0 undoes it). Less than charged: the difference is
    /// taken off the charge's entry while it still counts (once it has expired, the charge has
    /// stopped counting anyway). More: the difference is charged now.
    pub fn correct(&mut self, now_ms: u64, charge: Charge, actual: u64) {
        self.purge(now_ms);
        if actual < charge.amount {
            let refund = charge.amount - actual;
            if let Some(e) = self.entries.iter_mut().find(|e| slot(e.0) == slot(charge.at_ms)) {
                e.1 = e.1.saturating_sub(refund);
            }
            self.entries.retain(|&(_, n)| n > 0);
        } else if actual > charge.amount {
            self.charge(now_ms, actual - charge.amount);
        }
    }

    /// Folds the oldest entries into the next one while there are more than [`MAX_ENTRIES`].
    fn cap(&mut self) {
        let excess = self.entries.len().saturating_sub(MAX_ENTRIES);
        if excess == 0 {
            return;
        }
        let folded = self.entries.iter().take(excess).fold(0u64, |a, &(_, n)| a.saturating_add(n));
        self.entries.drain(..excess);
        if let Some(first) = self.entries.first_mut() {
            first.1 = first.1.saturating_add(folded);
        }
    }

    /// `count: u8`, then if not empty the oldest entry's stamp (`u64`) and amount, then for each
    /// later entry the milliseconds since the previous one and its amount; the amounts and the
    /// differences (at most 60 s) as LEB128 varints.
    fn encode(&self, w: &mut Writer) {
        if self.entries.len() > MAX_ENTRIES {
            let mut capped = self.clone();
            capped.cap();
            return capped.encode(w);
        }
        w.u8(self.entries.len() as u8);
        let mut prev: Option<u64> = None;
        for &(s, n) in &self.entries {
            match prev {
                None => {
                    w.u64(s);
                }
                Some(p) => put_varint(w, s.saturating_sub(p)),
            }
            put_varint(w, n);
            prev = Some(s);
        }
    }

    /// Refuses (`None`) anything [`Self::encode`] cannot have written: too many entries, zero
    /// amounts, stamps not in strictly increasing slots.
    fn decode(r: &mut Reader) -> Option<Self> {
        let n = r.u8()? as usize;
        if n > MAX_ENTRIES {
            return None;
        }
        let mut entries: Vec<(u64, u64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let stamp = match entries.last() {
                None => r.u64()?,
                Some(&(prev, _)) => {
                    let s = prev.checked_add(get_varint(r)?)?;
                    if slot(s) <= slot(prev) {
                        return None;
                    }
                    s
                }
            };
            let amount = get_varint(r)?;
            if amount == 0 {
                return None;
            }
            entries.push((stamp, amount));
        }
        Some(RollingWindow { entries })
    }
}

fn put_varint(w: &mut Writer, mut v: u64) {
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            w.u8(low);
            return;
        }
        w.u8(low | 0x80);
    }
}

fn get_varint(r: &mut Reader) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10u32 {
        let b = r.u8()?;
        let part = u64::from(b & 0x7f);
        // The tenth byte holds only the top bit of a u64.
        if i == 9 && part > 1 {
            return None;
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------------

/// Amounts held until released or until they expire, bucketed by expiry time (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    buckets: Vec<(u64, u64)>,
}

/// Most buckets a decoded value may hold; [`lease_expiry`]'s rounding keeps real ones near 32.
const MAX_LEASE_BUCKETS: usize = 1024;

/// The expiry of a lease taken at `now_ms`: `now + lease_secs` rounded *up* to a granularity of
/// `lease_secs / 30`, so live leases fall into at most ~32 distinct buckets whatever the load.
pub fn lease_expiry(now_ms: u64, lease_secs: u64) -> u64 {
    let lease_secs = lease_secs.max(1);
    let g = lease_secs.div_ceil(30).max(1);
    let t = (now_ms / 1000).saturating_add(lease_secs);
    t.div_ceil(g).saturating_mul(g)
}

impl Leases {
    /// Drops every bucket that expired at or before `now_ms`.
    pub fn purge(&mut self, now_ms: u64) {
        let now = now_ms / 1000;
        self.buckets.retain(|&(exp, amount)| exp > now && amount > 0);
    }

    pub fn total(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, &(_, n)| a.saturating_add(n))
    }

    pub fn add(&mut self, expiry: u64, amount: u64) {
        if amount == 0 {
            return;
        }
        match self.buckets.iter_mut().find(|(e, _)| *e == expiry) {
            Some(b) => b.1 = b.1.saturating_add(amount),
            None => self.buckets.push((expiry, amount)),
        }
    }

    /// Releases `amount` from the bucket of `expiry`. A bucket that already expired is gone and
    /// releasing from it does nothing (its amount was freed by the expiry).
    pub fn remove(&mut self, expiry: u64, amount: u64) {
        if let Some(b) = self.buckets.iter_mut().find(|(e, _)| *e == expiry) {
            b.1 = b.1.saturating_sub(amount);
        }
        self.buckets.retain(|&(_, n)| n > 0);
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        let n = self.buckets.len().min(MAX_LEASE_BUCKETS);
        w.u16(n as u16);
        for &(e, a) in self.buckets.iter().take(n) {
            w.u64(e).u64(a);
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Option<Self> {
        let n = r.u16()? as usize;
        if n > MAX_LEASE_BUCKETS {
            return None;
        }
        let mut buckets = Vec::with_capacity(n);
        for _ in 0..n {
            buckets.push((r.u64()?, r.u64()?));
        }
        Some(Leases { buckets })
    }
}

// ---------------------------------------------------------------------------------------------
// One scope's rate state
// ---------------------------------------------------------------------------------------------

/// The rate-limit state of one key or team.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateState {
    pub requests: RollingWindow,
    pub tokens: RollingWindow,
    pub concurrent: Leases,
}

/// One dimension's limit and what is left, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the limit is back to full (nothing counts any more): at most 60 s.
    pub reset_ms: u64,
}

/// Requests and tokens quotas of one scope (None where unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSnapshot {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

/// What [`RateState::admit`] took, to give back exactly once in [`RateState::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateGrant {
    pub requests: Option<Charge>,
    pub tokens: Option<Charge>,
    /// Expiry of the concurrency lease, if one was taken.
    pub lease: Option<u64>,
    pub snapshot: RateSnapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Tokens,
    Concurrency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateDenied {
    pub dimension: Dimension,
    pub limit: u64,
    /// What this request asked for in that dimension (1 request, N tokens, 1 slot).
    pub requested: u64,
    /// When a retry can pass, if ever (`None`: the request alone exceeds the limit).
    pub retry_after_ms: Option<u64>,
    pub snapshot: RateSnapshot,
}

impl RateState {
    fn snapshot(&self, limits: &LimitsConfig, now_ms: u64) -> RateSnapshot {
        let quota = |w: &RollingWindow, limit: Option<u64>| {
            limit.map(|limit| Quota {
                limit,
                remaining: limit.saturating_sub(w.used_at(now_ms)),
                reset_ms: w.ms_until_empty(now_ms),
            })
        };
        RateSnapshot { requests: quota(&self.requests, limits.rpm), tokens: quota(&self.tokens, limits.tpm) }
    }

    /// Admits one request estimated at `est_tokens` if every configured limit allows it, taking a
    /// request, the token estimate and a concurrency lease expiring at `lease_expiry`; otherwise
    /// changes nothing and says which limit refused.
    pub fn admit(&mut self, limits: &LimitsConfig, now_ms: u64, est_tokens: u64, lease_expiry: u64) -> Result<RateGrant, RateDenied> {
        self.requests.purge(now_ms);
        self.tokens.purge(now_ms);
        self.concurrent.purge(now_ms);
        let denied = |s: &Self, dimension, limit, requested, retry_after_ms| RateDenied {
            dimension,
            limit,
            requested,
            retry_after_ms,
            snapshot: s.snapshot(limits, now_ms),
        };
        if let Some(max) = limits.max_concurrent {
            if self.concurrent.total() >= max {
                // A slot frees when a request ends, which cannot be predicted: suggest a second.
                return Err(denied(self, Dimension::Concurrency, max, 1, Some(1000)));
            }
        }
        if let Some(rpm) = limits.rpm {
            if self.requests.used_at(now_ms).saturating_add(1) > rpm {
                let wait = self.requests.ms_until_fits(now_ms, 1, rpm);
                return Err(denied(self, Dimension::Requests, rpm, 1, wait));
            }
        }
        if let Some(tpm) = limits.tpm {
            if self.tokens.used_at(now_ms).saturating_add(est_tokens) > tpm {
                let wait = self.tokens.ms_until_fits(now_ms, est_tokens, tpm);
                return Err(denied(self, Dimension::Tokens, tpm, est_tokens, wait));
            }
        }
        // Every check passed: take everything.
        let requests = limits.rpm.map(|_| self.requests.charge(now_ms, 1));
        let tokens = limits.tpm.map(|_| self.tokens.charge(now_ms, est_tokens));
        let lease = limits.max_concurrent.map(|_| {
            self.concurrent.add(lease_expiry, 1);
            lease_expiry
        });
        Ok(RateGrant { requests, tokens, lease, snapshot: self.snapshot(limits, now_ms) })
    }

    /// Ends a request admitted with `grant`: corrects its token charge to `actual_tokens`, releases
    /// its concurrency lease and, when `undo_request` (a rollback: the request never went out),
    /// gives its request back too.
    pub fn settle(&mut self, grant: &RateGrant, now_ms: u64, actual_tokens: u64, undo_request: bool) {
        if let Some(c) = grant.tokens {
            self.tokens.correct(now_ms, c, actual_tokens);
        }
        if let (Some(c), true) = (grant.requests, undo_request) {
            self.requests.correct(now_ms, c, 0);
        }
        if let Some(exp) = grant.lease {
            self.concurrent.remove(exp, 1);
        }
        self.concurrent.purge(now_ms);
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        self.requests.encode(w);
        self.tokens.encode(w);
        self.concurrent.encode(w);
    }

    pub(crate) fn decode(r: &mut Reader) -> Option<Self> {
        Some(RateState {
            requests: RollingWindow::decode(r)?,
            tokens: RollingWindow::decode(r)?,
            concurrent: Leases::decode(r)?,
        })
    }

    /// Reads the rate state of the previous encoding (two-bucket windows of three `u64` each,
    /// then the leases): its windows start afresh, its concurrency leases are kept.
    pub(crate) fn decode_v1(r: &mut Reader) -> Option<Self> {
        for _ in 0..6 {
            r.u64()?;
        }
        Some(RateState { concurrent: Leases::decode(r)?, ..RateState::default() })
    }
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/// The binding quota among several scopes (key, team): the one with the least remaining.
fn tightest(quotas: impl Iterator<Item = Quota>) -> Option<Quota> {
    quotas.min_by_key(|q| (q.remaining, std::cmp::Reverse(q.reset_ms)))
}

/// OpenAI's six `x-ratelimit-*` headers for the tightest of `snapshots`; a dimension no scope
/// limits gets no headers.
pub fn rate_limit_headers(snapshots: &[RateSnapshot]) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    if let Some(q) = tightest(snapshots.iter().filter_map(|s| s.requests)) {
        out.push(("x-ratelimit-limit-requests", q.limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", q.remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", format_duration_ms(q.reset_ms)));
    }
    if let Some(q) = tightest(snapshots.iter().filter_map(|s| s.tokens)) {
        out.push(("x-ratelimit-limit-tokens", q.limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", q.remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", format_duration_ms(q.reset_ms)));
    }
    out
}

/// `retry-after` (whole seconds, rounded up, at least 1) and `retry-after-ms`, which the OpenAI
/// SDKs read first.
pub fn retry_after_headers(ms: u64) -> Vec<(&'static str, String)> {
    let ms = ms.max(1);
    vec![("retry-after", ms.div_ceil(1000).to_string()), ("retry-after-ms", ms.to_string())]
}

/// A duration as OpenAI's reset headers (and Go's `Duration.String`) write it: `20ms`, `1s`,
/// `1.5s`, `6m0s`, `1h2m3s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s = (ms / 1000) % 60;
    let frac = ms % 1000;
    let mut secs = s.to_string();
    if frac != 0 {
        let f = format!("{frac:03}");
        secs.push('.');
        secs.push_str(f.trim_end_matches('0'));
    }
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_040_000; // a minute boundary (1_700_000_040 = 28_333_334 min)

    /// A small deterministic generator for the property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The largest total admitted at times inside any interval `[a, a + 60 s)` of a log sorted by
    /// time (the maximum is reached by an interval starting at an admission).
    fn max_in_any_60s(log: &[(u64, u64)]) -> u64 {
        (0..log.len())
            .map(|i| log[i..].iter().take_while(|&&(t, _)| t < log[i].0 + WINDOW_MS).map(|&(_, n)| n).sum::<u64>())
            .max()
            .unwrap_or(0)
    }

    fn rpm(n: u64) -> LimitsConfig {
        LimitsConfig { rpm: Some(n), ..Default::default() }
    }

    fn tpm(n: u64) -> LimitsConfig {
        LimitsConfig { tpm: Some(n), ..Default::default() }
    }

    #[test]
    fn t0_is_a_minute_boundary() {
        assert_eq!(T0 % WINDOW_MS, 0);
    }

    #[test]
    fn window_counts_the_last_60_seconds_exactly() {
        let mut w = RollingWindow::default();
        w.charge(T0 + 10_000, 5);
        assert_eq!(w.used_at(T0 + 10_000), 5);
        w.charge(T0 + 30_000, 2);
        assert_eq!(w.used_at(T0 + 69_999), 7);
        assert_eq!(w.used_at(T0 + 70_000), 2, "60 s after it, an admission no longer counts");
        assert_eq!(w.used_at(T0 + 89_999), 2);
        assert_eq!(w.used_at(T0 + 90_000), 0);
        // No minute buckets: nothing happens at a minute boundary.
        assert_eq!(w.used_at(T0 + WINDOW_MS - 1), w.used_at(T0 + WINDOW_MS));
    }

    #[test]
    fn admissions_of_one_second_share_an_entry_stamped_by_the_latest() {
        let mut w = RollingWindow::default();
        w.charge(T0 + 10_100, 1);
        w.charge(T0 + 10_900, 1);
        assert_eq!(w.entry_count(), 1);
        // Both count until 60 s after the later one: the earlier is remembered 0.8 s longer than
        // needed (the only approximation, on the strict side).
        assert_eq!(w.used_at(T0 + 70_100), 2);
        assert_eq!(w.used_at(T0 + 70_899), 2);
        assert_eq!(w.used_at(T0 + 70_900), 0);
        w.charge(T0 + 11_000, 1); // the next second: a new entry
        assert_eq!(w.entry_count(), 2);
    }

    #[test]
    fn bursts_at_the_ends_of_two_minutes_pass_the_limit_once() {
        let limits = rpm(10);
        let admit_all = |s: &mut RateState, t: u64| (0..20).take_while(|_| s.admit(&limits, t, 0, 0).is_ok()).count();
        let mut s = RateState::default();
        assert_eq!(admit_all(&mut s, T0 + 59_999), 10);
        assert_eq!(admit_all(&mut s, T0 + WINDOW_MS), 0);
        // The old two-bucket estimate let 9 more through here (19 within 59 s).
        assert_eq!(admit_all(&mut s, T0 + WINDOW_MS + 59_000), 0);
        assert_eq!(admit_all(&mut s, T0 + WINDOW_MS + 59_998), 0);
        // 60 s after the burst, the whole limit again.
        assert_eq!(admit_all(&mut s, T0 + WINDOW_MS + 59_999), 10);
    }

    #[test]
    fn never_more_than_the_limit_in_any_60s_and_retry_after_is_exact() {
        // Random arrivals — bursts, quiet spells, minute boundaries, amounts from 1 to the limit —
        // against rpm-like (amount 1) and tpm-like limits; every refusal's retry-after is checked
        // against the state: within 60 s, admitted at that millisecond, refused one earlier.
        for (seed, limit, max_amount) in [(1u64, 10u64, 1u64), (2, 3, 1), (3, 100, 1), (4, 1000, 300), (5, 50, 50), (6, 7, 3)] {
            let limits = LimitsConfig { tpm: Some(limit), ..Default::default() };
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
            let mut s = RateState::default();
            let mut log = Vec::new();
            let mut t = T0 + rng.below(WINDOW_MS);
            for _ in 0..20_000 {
                t += match rng.below(10) {
                    0..=5 => 0,
                    6..=7 => rng.below(1_000),
                    8 => rng.below(30_000),
                    _ => rng.below(70_000),
                };
                let amount = 1 + rng.below(max_amount);
                match s.admit(&limits, t, amount, 0) {
                    Ok(g) => {
                        log.push((t, amount));
                        let q = g.snapshot.tokens.unwrap();
                        assert!(q.reset_ms <= WINDOW_MS, "{q:?}");
                        assert_eq!(q.remaining, limit - s.tokens.used_at(t));
                    }
                    Err(d) => {
                        let q = d.snapshot.tokens.unwrap();
                        assert!(q.reset_ms <= WINDOW_MS, "{q:?}");
                        let wait = d.retry_after_ms.expect("fits the limit, so it fits some time");
                        assert!((1..=WINDOW_MS).contains(&wait), "{wait}");
                        assert!(wait <= q.reset_ms);
                        assert!(s.clone().admit(&limits, t + wait - 1, amount, 0).is_err());
                        assert!(s.clone().admit(&limits, t + wait, amount, 0).is_ok());
                    }
                }
                assert!(s.tokens.entry_count() <= 61);
            }
            assert!(log.len() > 1000, "{}", log.len());
            assert!(max_in_any_60s(&log) <= limit, "seed {seed}: {} > {limit}", max_in_any_60s(&log));
        }
    }

    #[test]
    fn the_exact_rate_passes_and_sub_second_traffic_loses_at_most_a_second() {
        // One request every 6 s against 10 rpm, for 10 minutes: every one of them passes.
        let limits = rpm(10);
        let mut s = RateState::default();
        for i in 0..100 {
            assert!(s.admit(&limits, T0 + 123 + i * 6_000, 0, 0).is_ok(), "request {i}");
        }
        // 10 requests a second against 600 rpm: an entry is remembered until 60 s after the last
        // request of its second, so at least 600 pass in any 61 s.
        let limits = rpm(600);
        let mut s = RateState::default();
        let mut ok = 0u64;
        for i in 0..6_100 {
            ok += u64::from(s.admit(&limits, T0 + i * 100, 0, 0).is_ok());
        }
        assert!(ok >= 6_000, "{ok}");
    }

    #[test]
    fn rpm_limit_and_retry_after() {
        let limits = rpm(3);
        let mut s = RateState::default();
        s.admit(&limits, T0 + 1_000, 0, 0).unwrap();
        s.admit(&limits, T0 + 20_500, 0, 0).unwrap();
        let g = s.admit(&limits, T0 + 40_000, 0, 0).unwrap();
        assert_eq!(g.snapshot.requests.unwrap(), Quota { limit: 3, remaining: 0, reset_ms: WINDOW_MS });
        let d = s.admit(&limits, T0 + 45_000, 0, 0).unwrap_err();
        assert_eq!(d.dimension, Dimension::Requests);
        // The first request stops counting 60 s after it: 16 s from now.
        assert_eq!(d.retry_after_ms, Some(16_000));
        // Back to full 60 s after the last one.
        assert_eq!(d.snapshot.requests.unwrap(), Quota { limit: 3, remaining: 0, reset_ms: 55_000 });
        assert!(s.clone().admit(&limits, T0 + 60_999, 0, 0).is_err());
        let g = s.admit(&limits, T0 + 61_000, 0, 0).unwrap();
        assert_eq!(g.snapshot.requests.unwrap(), Quota { limit: 3, remaining: 0, reset_ms: WINDOW_MS });
    }

    #[test]
    fn retry_after_waits_for_as_many_entries_as_the_request_needs() {
        let mut w = RollingWindow::default();
        w.charge(T0, 400);
        w.charge(T0 + 10_000, 300);
        w.charge(T0 + 20_000, 200);
        let now = T0 + 30_000;
        // 900 used: 600 more fits once 400 and 300 have left (at T0 + 70 s), not after 400 alone.
        assert_eq!(w.ms_until_fits(now, 600, 1000), Some(40_000));
        assert_eq!(w.ms_until_fits(now, 100, 1000), Some(0));
        assert_eq!(w.ms_until_fits(now, 500, 1000), Some(30_000));
        assert_eq!(w.ms_until_fits(now, 1000, 1000), Some(50_000));
        assert_eq!(w.ms_until_fits(now, 1001, 1000), None, "larger than the limit: never");
        assert_eq!(w.ms_until_empty(now), 50_000);
    }

    #[test]
    fn refills_after_idle() {
        let limits = LimitsConfig { rpm: Some(5), tpm: Some(1000), ..Default::default() };
        let mut s = RateState::default();
        for _ in 0..5 {
            s.admit(&limits, T0 + 30_000, 200, 0).unwrap();
        }
        assert!(s.clone().admit(&limits, T0 + 89_999, 1, 0).is_err());
        // 60 s after the burst everything is back, and the headers say so.
        let g = s.clone().admit(&limits, T0 + 90_000, 1, 0).unwrap();
        assert_eq!(g.snapshot.requests.unwrap().remaining, 4);
        assert_eq!(g.snapshot.tokens.unwrap().remaining, 999);
        // An hour of silence: the entries are gone, not merely ignored.
        let later = T0 + 3_600_000;
        let g = s.admit(&limits, later, 0, 0).unwrap();
        assert_eq!(g.snapshot.requests.unwrap(), Quota { limit: 5, remaining: 4, reset_ms: WINDOW_MS });
        assert_eq!(g.snapshot.tokens.unwrap(), Quota { limit: 1000, remaining: 1000, reset_ms: 0 });
        assert_eq!((s.requests.entry_count(), s.tokens.entry_count()), (1, 0));
    }

    #[test]
    fn tpm_reserve_then_refund() {
        let limits = tpm(1000);
        let mut s = RateState::default();
        let g = s.admit(&limits, T0 + 1000, 400, 0).unwrap();
        assert_eq!(g.snapshot.tokens.unwrap().remaining, 600);
        // Larger than what is left: refused, state unchanged.
        let before = s.clone();
        let d = s.admit(&limits, T0 + 1000, 700, 0).unwrap_err();
        assert_eq!(d.dimension, Dimension::Tokens);
        assert_eq!(d.retry_after_ms, Some(WINDOW_MS));
        assert_eq!(s, before);
        // The real usage was 150 tokens: 250 come back, to the entry of the admission (which
        // still leaves at T0 + 61 s).
        s.settle(&g, T0 + 2000, 150, false);
        assert_eq!(s.tokens.used_at(T0 + 2000), 150);
        assert_eq!(s.tokens.entry_count(), 1);
        assert_eq!(s.tokens.used_at(T0 + 61_000), 0);
        assert!(s.clone().admit(&limits, T0 + 2000, 850, 0).is_ok());
        // A request larger than the whole limit can never pass.
        let d = s.admit(&limits, T0 + 2000, 5000, 0).unwrap_err();
        assert_eq!(d.retry_after_ms, None);
    }

    #[test]
    fn tpm_under_estimate_is_charged_at_settlement_and_delays_later_requests() {
        let limits = tpm(1000);
        let mut s = RateState::default();
        let g = s.admit(&limits, T0, 100, 0).unwrap();
        // The answer used 1300 tokens: 1200 more are charged when that is known.
        s.settle(&g, T0 + 5_000, 1300, false);
        assert_eq!(s.tokens.used_at(T0 + 5_000), 1300);
        // Over the limit ("below zero"): nothing is left and even 10 tokens wait until the
        // correction has left the window, 60 s after the settlement.
        let d = s.admit(&limits, T0 + 6_000, 10, 0).unwrap_err();
        let q = d.snapshot.tokens.unwrap();
        assert_eq!((q.remaining, q.reset_ms), (0, 59_000));
        assert_eq!(d.retry_after_ms, Some(59_000));
        assert!(s.clone().admit(&limits, T0 + 60_000, 10, 0).is_err(), "the estimate left; 1200 still count");
        assert!(s.admit(&limits, T0 + 65_000, 1000, 0).is_ok());
    }

    #[test]
    fn corrections_after_the_window_moved_on() {
        let mut w = RollingWindow::default();
        let c = w.charge(T0 + 50_000, 100);
        w.charge(T0 + 70_000, 10);
        // The estimate's entry has expired: a refund has nothing left to take back (and must not
        // take it from the later entry).
        w.correct(T0 + 110_000, c, 40);
        assert_eq!(w.used_at(T0 + 110_000), 10);
        // An extra charge lands now, whatever happened to the estimate.
        w.correct(T0 + 110_000, c, 130);
        assert_eq!(w.used_at(T0 + 110_000), 40);
        assert_eq!(w.used_at(T0 + 169_999), 30);
        // Refunding more than an entry holds (another charge's refund already took from it)
        // saturates at zero and drops the entry.
        let mut w = RollingWindow::default();
        let a = w.charge(T0, 5);
        let b = w.charge(T0 + 500, 5);
        assert_eq!(a.at_ms / SLOT_MS, b.at_ms / SLOT_MS);
        w.correct(T0 + 600, a, 0);
        w.correct(T0 + 600, b, 0);
        assert_eq!((w.total(), w.entry_count()), (0, 0));
    }

    #[test]
    fn a_rolled_back_request_is_given_back() {
        let limits = rpm(2);
        let mut s = RateState::default();
        let g = s.admit(&limits, T0 + 10_000, 0, 0).unwrap();
        s.admit(&limits, T0 + 20_000, 0, 0).unwrap();
        assert!(s.clone().admit(&limits, T0 + 30_000, 0, 0).is_err());
        s.settle(&g, T0 + 30_000, 0, true);
        assert!(s.admit(&limits, T0 + 30_000, 0, 0).is_ok());
        // A settlement that is not a rollback keeps the request counted.
        let mut s = RateState::default();
        let g = s.admit(&limits, T0, 0, 0).unwrap();
        s.settle(&g, T0 + 1, 0, false);
        assert_eq!(s.requests.used_at(T0 + 1), 1);
    }

    #[test]
    fn a_clock_behind_the_newest_entry_is_counted_on_the_strict_side() {
        let mut w = RollingWindow::default();
        w.charge(T0 + 30_000, 1);
        // Another worker's clock 10 s behind: its admission joins the newest entry.
        let c = w.charge(T0 + 20_000, 1);
        assert_eq!((w.entry_count(), c.at_ms), (1, T0 + 30_000));
        assert_eq!(w.used_at(T0 + 20_000), 2);
        assert_eq!(w.used_at(T0 + 89_999), 2);
        assert_eq!(w.used_at(T0 + 90_000), 0);
        // Its correction finds that entry.
        w.correct(T0 + 21_000, c, 0);
        assert_eq!(w.total(), 1);
    }

    #[test]
    fn state_stays_small() {
        // A busy key: a request every 97 ms for 16 minutes.
        let limits = LimitsConfig { rpm: Some(1_000_000), tpm: Some(u64::MAX / 2), ..Default::default() };
        let mut s = RateState::default();
        for i in 0..10_000u64 {
            let g = s.admit(&limits, T0 + i * 97, 3_000, 0).unwrap();
            s.settle(&g, T0 + i * 97 + 50, 2_500 + i % 1000, false);
            assert!(s.requests.entry_count() <= 61 && s.tokens.entry_count() <= 61);
        }
        let mut w = Writer::new();
        s.encode(&mut w);
        let len = w.finish().len();
        // 61 entries each: the count, one stamp, then 2-byte time differences (about a second)
        // with 1-byte request counts and 3-byte token amounts; 2 bytes for no leases.
        assert!(len <= 2 * (1 + 8) + 61 * (2 + 1) + 61 * (2 + 3) + 2, "{len}");
        // Idle windows are one byte each.
        let mut w = Writer::new();
        RateState::default().encode(&mut w);
        assert_eq!(w.finish().len(), 1 + 1 + 2);
        // `charge` purges before it adds, so a window never holds more than 61 entries; should one
        // hold more than MAX_ENTRIES anyway, the oldest are folded into the next (later) one:
        // the total stays counted, and encoding writes the folded form.
        let mut w = RollingWindow { entries: (0..75u64).map(|i| (T0 + i * 1000, 1)).collect() };
        let mut folded = w.clone();
        folded.cap();
        assert_eq!((folded.entry_count(), folded.total()), (MAX_ENTRIES, 75));
        assert_eq!(folded.entries.first(), Some(&(T0 + 11_000, 12)));
        let mut out = Writer::new();
        w.encode(&mut out);
        assert_eq!(RollingWindow::decode(&mut Reader::new(&out.finish())), Some(folded));
        w.cap();
        assert_eq!(w.entry_count(), MAX_ENTRIES);
    }

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let mut s = RateState::default();
        s.requests.charge(T0, 3);
        s.requests.charge(T0 + 1_500, 1);
        s.requests.charge(T0 + 59_999, u64::MAX / 3);
        s.tokens.charge(T0 + 10, 300);
        s.concurrent.add(123, 2);
        let mut w = Writer::new();
        s.encode(&mut w);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(RateState::decode(&mut r), Some(s.clone()));
        assert!(r.is_at_end());
        assert_eq!(RateState::decode(&mut Reader::new(&bytes[..bytes.len() - 1])), None);
        // Window values encode cannot write.
        let window = |w: &RollingWindow| {
            let mut out = Writer::new();
            w.encode(&mut out);
            out.finish()
        };
        let decode = |b: &[u8]| RollingWindow::decode(&mut Reader::new(b));
        assert_eq!(decode(&window(&s.requests)), Some(s.requests.clone()));
        for bad in [
            RollingWindow { entries: vec![(T0, 1), (T0 + 500, 1)] },   // two entries in one slot
            RollingWindow { entries: vec![(T0 + 5_000, 1), (T0, 1)] }, // out of order
            RollingWindow { entries: vec![(T0, 0)] },                  // empty entry
        ] {
            assert_eq!(decode(&window(&bad)), None, "{bad:?}");
        }
        let mut too_many = vec![65u8];
        too_many.extend_from_slice(&T0.to_le_bytes());
        too_many.extend(std::iter::repeat_n(1u8, 130));
        assert_eq!(decode(&too_many), None);
        // A stamp past u64::MAX is refused.
        let mut overflow = vec![2u8];
        overflow.extend_from_slice(&(u64::MAX - 5).to_le_bytes());
        overflow.extend([1, 0xe8, 0x07, 1]); // +1000 ms
        assert_eq!(decode(&overflow), None);
        // Varints: every width round-trips, an overlong one is refused.
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut w = Writer::new();
            put_varint(&mut w, v);
            let b = w.finish();
            let mut r = Reader::new(&b);
            assert_eq!(get_varint(&mut r), Some(v));
            assert!(r.is_at_end());
        }
        assert_eq!(get_varint(&mut Reader::new(&[0xff; 10])), None);
        assert_eq!(get_varint(&mut Reader::new(&[0x80; 3])), None);
    }

    #[test]
    fn the_previous_encoding_keeps_its_leases_and_forgets_its_windows() {
        let mut w = Writer::new();
        for v in [28_333_334u64, 5, 7, 28_333_334, 500, 700] {
            w.u64(v);
        }
        let mut leases = Leases::default();
        leases.add(1_700_000_900, 2);
        leases.encode(&mut w);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(RateState::decode_v1(&mut r), Some(RateState { concurrent: leases, ..RateState::default() }));
        assert!(r.is_at_end());
        assert_eq!(RateState::decode_v1(&mut Reader::new(&bytes[..40])), None);
    }

    #[test]
    fn what_the_window_allows_and_remembers() {
        // The properties the README states, for an rpm of 10.
        let limits = rpm(10);
        let admit_all = |s: &mut RateState, t: u64| (0..20).take_while(|_| s.admit(&limits, t, 0, 0).is_ok()).count();
        // 1. A burst at the end of a minute is not repeated after the boundary, nor at the end of
        //    the next minute: 10 in any 60 s.
        let mut s = RateState::default();
        assert_eq!(admit_all(&mut s, T0 + 59_999), 10);
        assert_eq!(admit_all(&mut s, T0 + WINDOW_MS), 0);
        assert_eq!(admit_all(&mut s, T0 + WINDOW_MS + 59_000), 0);
        // 2. A burst is forgotten exactly 60 s later: reset and retry-after are at most 60 s.
        let mut s = RateState::default();
        assert_eq!(admit_all(&mut s, T0 + 1_000), 10);
        let d = s.admit(&limits, T0 + 1_000, 0, 0).unwrap_err();
        assert_eq!(d.snapshot.requests.unwrap().reset_ms, WINDOW_MS);
        assert_eq!(d.retry_after_ms, Some(WINDOW_MS));
        let d = s.admit(&limits, T0 + 31_000, 0, 0).unwrap_err();
        assert_eq!((d.snapshot.requests.unwrap().reset_ms, d.retry_after_ms), (30_000, Some(30_000)));
        assert_eq!(admit_all(&mut s, T0 + 61_000), 10);
        // 3. Spread requests free one slot at a time: remaining is what is left now, reset is
        //    when the last one leaves, retry-after when the first one does.
        let mut s = RateState::default();
        for i in 0..10 {
            s.admit(&limits, T0 + i * 5_000, 0, 0).unwrap();
        }
        let d = s.admit(&limits, T0 + 50_000, 0, 0).unwrap_err();
        assert_eq!(d.snapshot.requests.unwrap(), Quota { limit: 10, remaining: 0, reset_ms: 55_000 });
        assert_eq!(d.retry_after_ms, Some(10_000));
        let g = s.admit(&limits, T0 + 65_000, 0, 0).unwrap();
        assert_eq!(g.snapshot.requests.unwrap(), Quota { limit: 10, remaining: 1, reset_ms: WINDOW_MS });
    }

    #[test]
    fn concurrency_tickets_release_exactly_once_and_expire() {
        let limits = LimitsConfig { max_concurrent: Some(2), ..Default::default() };
        let mut s = RateState::default();
        let exp = lease_expiry(T0, 600);
        let a = s.admit(&limits, T0, 0, exp).unwrap();
        let b = s.admit(&limits, T0, 0, exp).unwrap();
        let d = s.admit(&limits, T0, 0, exp).unwrap_err();
        assert_eq!(d.dimension, Dimension::Concurrency);
        s.settle(&a, T0 + 1, 0, false);
        assert_eq!(s.concurrent.total(), 1);
        let c = s.admit(&limits, T0 + 2, 0, exp).unwrap();
        s.settle(&b, T0 + 3, 0, false);
        s.settle(&c, T0 + 3, 0, false);
        assert_eq!(s.concurrent.total(), 0);
        // A lost settlement (leak) frees itself once its lease expires.
        let _leaked = s.admit(&limits, T0, 0, exp).unwrap();
        let _leaked2 = s.admit(&limits, T0, 0, exp).unwrap();
        assert!(s.admit(&limits, T0 + 10_000, 0, lease_expiry(T0 + 10_000, 600)).is_err());
        let later = exp * 1000;
        assert!(s.admit(&limits, later, 0, lease_expiry(later, 600)).is_ok());
        assert_eq!(s.concurrent.total(), 1);
    }

    #[test]
    fn lease_buckets_stay_few() {
        let mut l = Leases::default();
        for i in 0..10_000u64 {
            let now = T0 + i * 97; // ~16 minutes of arrivals
            l.purge(now);
            l.add(lease_expiry(now, 900), 1);
        }
        assert!(l.bucket_count() <= 32, "{}", l.bucket_count());
        let exp = lease_expiry(T0, 900);
        assert!((T0 / 1000 + 900..T0 / 1000 + 900 + 30).contains(&exp));
    }

    #[test]
    fn reset_durations_look_like_openai() {
        assert_eq!(format_duration_ms(0), "0s");
        assert_eq!(format_duration_ms(20), "20ms");
        assert_eq!(format_duration_ms(1000), "1s");
        assert_eq!(format_duration_ms(1500), "1.5s");
        assert_eq!(format_duration_ms(8_640), "8.64s");
        assert_eq!(format_duration_ms(360_000), "6m0s");
        assert_eq!(format_duration_ms(90_500), "1m30.5s");
        assert_eq!(format_duration_ms(3_723_000), "1h2m3s");
    }

    #[test]
    fn headers_pick_the_tightest_scope() {
        let key = RateSnapshot {
            requests: Some(Quota { limit: 100, remaining: 90, reset_ms: 1000 }),
            tokens: Some(Quota { limit: 10_000, remaining: 500, reset_ms: 60_000 }),
        };
        let team = RateSnapshot { requests: Some(Quota { limit: 1000, remaining: 20, reset_ms: 20 }), tokens: None };
        let h = rate_limit_headers(&[key, team]);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("x-ratelimit-limit-requests"), Some("1000"));
        assert_eq!(get("x-ratelimit-remaining-requests"), Some("20"));
        assert_eq!(get("x-ratelimit-reset-requests"), Some("20ms"));
        assert_eq!(get("x-ratelimit-limit-tokens"), Some("10000"));
        assert_eq!(get("x-ratelimit-remaining-tokens"), Some("500"));
        assert_eq!(get("x-ratelimit-reset-tokens"), Some("1m0s"));
        assert!(rate_limit_headers(&[RateSnapshot::default()]).is_empty());
        assert_eq!(retry_after_headers(1), vec![("retry-after", "1".to_string()), ("retry-after-ms", "1".to_string())]);
        assert_eq!(retry_after_headers(20_001)[0].1, "21");
    }
}
