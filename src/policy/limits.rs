//! Rate limits per key and per team: requests per minute, tokens per minute and concurrent
//! requests, with the OpenAI `x-ratelimit-*` headers and `retry-after`.
//!
//! **Window.** Requests and tokens use a *sliding window estimate over two fixed one-minute
//! buckets* (the one Cloudflare and Envoy's own local rate limiters describe): the counter keeps
//! the current UTC minute's count and the previous minute's; at a time `e` ms into the current
//! minute the estimated usage over the last 60 s is
//! `cur + ceil(prev * (60000 - e) / 60000)`. Unlike a fixed window it does not let a client spend
//! twice the limit across a minute boundary, and it needs three integers of state.
//!
//! **Tokens.** A request is charged its prompt estimate when admitted ([`RateState::admit`]) and
//! corrected to the real total when it ends ([`RateState::settle`]); the correction lands in the
//! bucket the estimate went to, if that bucket is still one of the two kept.
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
// Sliding window
// ---------------------------------------------------------------------------------------------

/// Two one-minute buckets: `cur` counts minute `minute` (minutes since the Unix epoch), `prev` the
/// minute before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlidingWindow {
    pub minute: u64,
    pub cur: u64,
    pub prev: u64,
}

/// What a window was charged, to correct or undo it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub minute: u64,
    pub amount: u64,
}

impl SlidingWindow {
    /// Moves the buckets forward to `now_ms`'s minute. A clock behind the stored minute (another
    /// worker's clock ahead of this one) leaves the buckets as they are.
    pub fn rotate(&mut self, now_ms: u64) {
        let m = now_ms / WINDOW_MS;
        if m == self.minute {
            return;
        }
        if m == self.minute.saturating_add(1) {
            self.prev = self.cur;
            self.cur = 0;
            self.minute = m;
        } else if m > self.minute {
            self.prev = 0;
            self.cur = 0;
            self.minute = m;
        }
    }

    /// Estimated usage over the 60 s before `t_ms`, assuming nothing more is added.
    pub fn estimate_at(&self, t_ms: u64) -> u64 {
        let m = t_ms / WINDOW_MS;
        let weighted = |count: u64, elapsed: u64| -> u64 {
            let left = WINDOW_MS.saturating_sub(elapsed) as u128;
            ((count as u128 * left).div_ceil(WINDOW_MS as u128)).min(u64::MAX as u128) as u64
        };
        if m <= self.minute {
            // Behind or at the current minute: a clock behind counts both buckets in full.
            let e = if m == self.minute { t_ms % WINDOW_MS } else { 0 };
            self.cur.saturating_add(weighted(self.prev, e))
        } else if m == self.minute.saturating_add(1) {
            weighted(self.cur, t_ms % WINDOW_MS)
        } else {
            0
        }
    }

    /// Milliseconds from `now_ms` until `estimate + amount <= limit` (0 if it already holds);
    /// `None` when it never will (`amount > limit`). The estimate never grows without new
    /// charges, so a binary search over the next two minutes finds the first such time.
    pub fn ms_until_fits(&self, now_ms: u64, amount: u64, limit: u64) -> Option<u64> {
        if amount > limit {
            return None;
        }
        let fits = |t: u64| self.estimate_at(t).saturating_add(amount) <= limit;
        if fits(now_ms) {
            return Some(0);
        }
        // Upper bound: two minutes after the current bucket's start, the estimate is 0.
        let start = now_ms.max(self.minute.saturating_mul(WINDOW_MS));
        let (mut lo, mut hi) = (now_ms, start.saturating_add(2 * WINDOW_MS));
        while lo.saturating_add(1) < hi {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi - now_ms)
    }

    /// Milliseconds until the estimate is back to zero (the window "resets to its initial state").
    pub fn ms_until_empty(&self, now_ms: u64) -> u64 {
        self.ms_until_fits(now_ms, 0, 0).unwrap_or(0)
    }

    /// Charges `amount` if the estimate stays within `limit`.
    pub fn try_charge(&mut self, now_ms: u64, amount: u64, limit: u64) -> Result<Charge, Option<u64>> {
        self.rotate(now_ms);
        if self.estimate_at(now_ms).saturating_add(amount) > limit {
            return Err(self.ms_until_fits(now_ms, amount, limit));
        }
        Ok(self.charge(now_ms, amount))
    }

    /// Charges unconditionally (usage past the limit is still counted).
    pub fn charge(&mut self, now_ms: u64, amount: u64) -> Charge {
        self.rotate(now_ms);
        self.cur = self.cur.saturating_add(amount);
        Charge { minute: self.minute, amount }
    }

    /// Replaces an earlier charge by `actual` (0 undoes it). The difference goes to the bucket the
    /// charge went to while that bucket is kept; after that the window has moved on and there is
    /// nothing left to correct.
    pub fn correct(&mut self, now_ms: u64, charge: Charge, actual: u64) {
        self.rotate(now_ms);
        let bucket = if charge.minute == self.minute {
            &mut self.cur
        } else if charge.minute.saturating_add(1) == self.minute {
            &mut self.prev
        } else {
            return;
        };
        if actual >= charge.amount {
            *bucket = bucket.saturating_add(actual - charge.amount);
        } else {
            *bucket = bucket.saturating_sub(charge.amount - actual);
        }
    }

    fn encode(&self, w: &mut Writer) {
        w.u64(self.minute).u64(self.cur).u64(self.prev);
    }

    fn decode(r: &mut Reader) -> Option<Self> {
        Some(SlidingWindow { minute: r.u64()?, cur: r.u64()?, prev: r.u64()? })
    }
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
    pub requests: SlidingWindow,
    pub tokens: SlidingWindow,
    pub concurrent: Leases,
}

/// One dimension's limit and what is left, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the window is back to its initial state.
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
        let quota = |w: &SlidingWindow, limit: Option<u64>| {
            limit.map(|limit| Quota {
                limit,
                remaining: limit.saturating_sub(w.estimate_at(now_ms)),
                reset_ms: w.ms_until_empty(now_ms),
            })
        };
        RateSnapshot { requests: quota(&self.requests, limits.rpm), tokens: quota(&self.tokens, limits.tpm) }
    }

    /// Admits one request estimated at `est_tokens` if every configured limit allows it, taking a
    /// request, the token estimate and a concurrency lease expiring at `lease_expiry`; otherwise
    /// changes nothing and says which limit refused.
    pub fn admit(&mut self, limits: &LimitsConfig, now_ms: u64, est_tokens: u64, lease_expiry: u64) -> Result<RateGrant, RateDenied> {
        self.requests.rotate(now_ms);
        self.tokens.rotate(now_ms);
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
            if self.requests.estimate_at(now_ms).saturating_add(1) > rpm {
                let wait = self.requests.ms_until_fits(now_ms, 1, rpm);
                return Err(denied(self, Dimension::Requests, rpm, 1, wait));
            }
        }
        if let Some(tpm) = limits.tpm {
            if self.tokens.estimate_at(now_ms).saturating_add(est_tokens) > tpm {
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
            requests: SlidingWindow::decode(r)?,
            tokens: SlidingWindow::decode(r)?,
            concurrent: Leases::decode(r)?,
        })
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

    #[test]
    fn t0_is_a_minute_boundary() {
        assert_eq!(T0 % WINDOW_MS, 0);
    }

    #[test]
    fn sliding_window_weights_the_previous_minute() {
        let mut w = SlidingWindow::default();
        for _ in 0..60 {
            w.charge(T0 + 10_000, 1);
        }
        assert_eq!(w.estimate_at(T0 + 59_999), 60);
        // 15 s into the next minute: 75% of the previous minute still counts.
        assert_eq!(w.estimate_at(T0 + WINDOW_MS + 15_000), 45);
        // Exactly at the next boundary the previous bucket weighs 100%.
        assert_eq!(w.estimate_at(T0 + WINDOW_MS), 60);
        // Two minutes later nothing is left.
        assert_eq!(w.estimate_at(T0 + 2 * WINDOW_MS), 0);
        // Rounding is up: 1 request with 1 ms of weight left still counts as 1.
        let mut one = SlidingWindow::default();
        one.charge(T0, 1);
        assert_eq!(one.estimate_at(T0 + 2 * WINDOW_MS - 1), 1);
    }

    #[test]
    fn minute_rollover_and_gaps() {
        let mut w = SlidingWindow::default();
        w.charge(T0 + 59_999, 5);
        w.charge(T0 + 60_000, 2); // next minute
        assert_eq!((w.cur, w.prev, w.minute), (2, 5, (T0 + 60_000) / WINDOW_MS));
        w.rotate(T0 + 5 * WINDOW_MS); // long idle: both buckets cleared
        assert_eq!((w.cur, w.prev), (0, 0));
        // A clock behind the stored minute does not rewind; it counts in the current bucket.
        w.charge(T0, 3);
        assert_eq!(w.cur, 3);
        assert_eq!(w.minute, (T0 + 5 * WINDOW_MS) / WINDOW_MS);
        assert_eq!(w.estimate_at(T0), 3);
    }

    #[test]
    fn rpm_limit_and_retry_after() {
        let limits = LimitsConfig { rpm: Some(3), ..Default::default() };
        let mut s = RateState::default();
        for _ in 0..3 {
            s.admit(&limits, T0 + 30_000, 0, 0).unwrap();
        }
        let d = s.admit(&limits, T0 + 30_000, 0, 0).unwrap_err();
        assert_eq!(d.dimension, Dimension::Requests);
        // Need prev weight ceil(3*(60000-e)/60000) <= 2 in the next minute: e >= 20000.
        assert_eq!(d.retry_after_ms, Some(30_000 + 20_000));
        assert_eq!(d.snapshot.requests.unwrap().remaining, 0);
        // Retrying at that moment passes, one millisecond earlier does not.
        assert!(s.clone().admit(&limits, T0 + 30_000 + 49_999, 0, 0).is_err());
        assert!(s.admit(&limits, T0 + 30_000 + 50_000, 0, 0).is_ok());
    }

    #[test]
    fn tpm_reserve_then_correct() {
        let limits = LimitsConfig { tpm: Some(1000), ..Default::default() };
        let mut s = RateState::default();
        let g = s.admit(&limits, T0 + 1000, 400, 0).unwrap();
        assert_eq!(g.snapshot.tokens.unwrap().remaining, 600);
        // Larger than what is left: refused, state unchanged.
        let before = s.clone();
        let d = s.admit(&limits, T0 + 1000, 700, 0).unwrap_err();
        assert_eq!(d.dimension, Dimension::Tokens);
        assert_eq!(s, before);
        // The real usage was 150 tokens: 250 come back.
        s.settle(&g, T0 + 2000, 150, false);
        assert_eq!(s.tokens.cur, 150);
        assert!(s.admit(&limits, T0 + 2000, 700, 0).is_ok());
        // A request larger than the whole limit can never pass.
        let d = s.admit(&limits, T0 + 2000, 5000, 0).unwrap_err();
        assert_eq!(d.retry_after_ms, None);
    }

    #[test]
    fn correction_after_rollover_goes_to_the_previous_bucket_or_nowhere() {
        let mut w = SlidingWindow::default();
        let c = w.charge(T0 + 50_000, 100);
        w.charge(T0 + WINDOW_MS + 1, 10);
        w.correct(T0 + WINDOW_MS + 5, c, 40);
        assert_eq!((w.prev, w.cur), (40, 10));
        let c2 = w.charge(T0 + WINDOW_MS + 6, 50);
        w.correct(T0 + 3 * WINDOW_MS, c2, 500); // both buckets gone: nothing to correct
        assert_eq!((w.prev, w.cur), (0, 0));
        // Undoing more than is there saturates at zero.
        let mut w = SlidingWindow::default();
        let c = w.charge(T0, 5);
        w.cur = 2;
        w.correct(T0, c, 0);
        assert_eq!(w.cur, 0);
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
    fn what_the_estimate_allows_and_remembers() {
        // The properties the README states, for an rpm of 10.
        let limits = LimitsConfig { rpm: Some(10), ..Default::default() };
        let admit_all = |s: &mut RateState, t: u64| (0..20).take_while(|_| s.admit(&limits, t, 0, 0).is_ok()).count();
        // 1. A burst at the end of a minute cannot be repeated right after the boundary (the flaw
        //    of a fixed window): at the boundary the previous minute weighs in full.
        let mut s = RateState::default();
        assert_eq!(admit_all(&mut s, T0 + 59_999), 10);
        assert_eq!(admit_all(&mut s, T0 + WINDOW_MS), 0);
        // 2. It is an estimate: bursts at the end of two consecutive minutes, 59 s apart, pass
        //    19 requests within one 60 s span.
        assert_eq!(admit_all(&mut s, T0 + WINDOW_MS + 59_000), 9);
        // 3. A burst at the start of a minute weighs until the end of the next one: the reset
        //    (back to empty) is 60-120 s away, and so can be the retry.
        let mut s = RateState::default();
        assert_eq!(admit_all(&mut s, T0 + 1_000), 10);
        let d = s.admit(&limits, T0 + 1_000, 0, 0).unwrap_err();
        assert_eq!(d.snapshot.requests.unwrap().reset_ms, 2 * WINDOW_MS - 1_000);
        // ceil(10 × (60000 − e) / 60000) <= 9 needs e >= 6000 into the next minute.
        assert_eq!(d.retry_after_ms, Some(WINDOW_MS - 1_000 + 6_000));
        let g = RateState::default().admit(&limits, T0 + 59_000, 0, 0).unwrap();
        assert_eq!(g.snapshot.requests.unwrap().reset_ms, WINDOW_MS + 1_000);
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

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let mut s = RateState::default();
        s.requests.charge(T0, 3);
        s.tokens.charge(T0, 300);
        s.concurrent.add(123, 2);
        let mut w = Writer::new();
        s.encode(&mut w);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(RateState::decode(&mut r), Some(s));
        assert!(r.is_at_end());
        assert_eq!(RateState::decode(&mut Reader::new(&bytes[..bytes.len() - 1])), None);
    }
}
