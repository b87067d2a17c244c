//! Budgets in money per key and per team over a window (a UTC day, a UTC calendar month, or all
//! time), enforced with reservations.
//!
//! Money is integer micro-USD (`u64`) everywhere in the state; there are no floats in accounting.
//!
//! **Reservations.** Before a request is forwarded its worst-case cost is reserved
//! ([`BudgetState::reserve`]); it is admitted only if `spent + reserved + worst_case <= amount`.
//! When the response ends the real cost is added to `spent` and the reservation released
//! ([`BudgetState::settle`]). Every check-and-reserve is one compare-and-swap on the scope's state,
//! so concurrent admissions across all workers are serialised on that value: **the sum of
//! `spent` and all live reservations never exceeds the amount** (tested below with interleaved
//! reservations). Spending can exceed the amount only by what a settled request cost *beyond its
//! own reservation*: that happens when the prompt estimate was low, or a failover served a pricier
//! model than the one reserved for. That excess is bounded per request by
//! `actual - reserved` and is still counted, so the next admission sees it.
//!
//! Reservations are [`Leases`]: one that is never settled (a crashed VM) is freed after the lease
//! time instead of blocking the budget forever.
//!
//! **Windows.** The state keeps the start of its window (Unix seconds, UTC); the first update in
//! a later window starts `spent` from zero again. Reservations in flight carry over (they settle
//! into the window current at settlement). Keeping the window start inside the value rather than
//! in the key means a scope uses one shared-data key forever instead of one per day.

use serde::Deserialize;

use super::limits::Leases;
use super::store::{Reader, Writer};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BudgetWindow {
    /// Resets at 00:00 UTC every day.
    Daily,
    /// Resets at 00:00 UTC on the first day of every month.
    Monthly,
    /// Never resets.
    Total,
}

/// `budget` of a key or a team.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Amount in US dollars per window.
    pub amount_usd: f64,
    pub window: BudgetWindow,
}

/// A budget ready for use: the amount converted once to micro-USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub amount_micros: u64,
    pub window: BudgetWindow,
}

impl BudgetConfig {
    pub fn compile(&self, what: &str) -> Result<Budget, String> {
        let amount_micros = super::pricing::usd_f64_to_units(self.amount_usd, 6)
            .ok_or_else(|| format!("{what}: budget.amount_usd must be a non-negative number of dollars"))?;
        Ok(Budget { amount_micros, window: self.window })
    }
}

// ---------------------------------------------------------------------------------------------
// Calendar (proleptic Gregorian, UTC), after Howard Hinnant's `days_from_civil` /
// `civil_from_days` algorithms.
// ---------------------------------------------------------------------------------------------

/// Days since 1970-01-01 of the civil date `y-m-d` (`m` in 1..=12, `d` in 1..=31).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = m as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March-based month [0, 11]
    let doy = (153 * mp + 2) / 5 + d as i64 - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The civil date `(y, m, d)` of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

const DAY: u64 = 86_400;

/// Start (Unix seconds, UTC) of the window containing `now_secs`.
pub fn window_start(window: BudgetWindow, now_secs: u64) -> u64 {
    match window {
        BudgetWindow::Total => 0,
        BudgetWindow::Daily => now_secs - now_secs % DAY,
        BudgetWindow::Monthly => {
            let (y, m, _) = civil_from_days((now_secs / DAY) as i64);
            (days_from_civil(y, m, 1).max(0) as u64) * DAY
        }
    }
}

/// End (exclusive, Unix seconds) of the window containing `now_secs`; `None` for `total`.
pub fn window_end(window: BudgetWindow, now_secs: u64) -> Option<u64> {
    match window {
        BudgetWindow::Total => None,
        BudgetWindow::Daily => Some(window_start(window, now_secs) + DAY),
        BudgetWindow::Monthly => {
            let (y, m, _) = civil_from_days((now_secs / DAY) as i64);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some((days_from_civil(ny, nm, 1).max(0) as u64) * DAY)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// One scope's spending in its current window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetState {
    pub window_start: u64,
    pub spent_micros: u64,
    pub reserved: Leases,
}

/// A reservation to settle exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub expiry: u64,
    pub amount_micros: u64,
}

/// The budget refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// What was left before this request (amount − spent − live reservations).
    pub remaining_micros: u64,
    pub requested_micros: u64,
}

impl BudgetState {
    /// Starts a new window if `now` is past the stored one; drops expired reservations.
    pub fn roll(&mut self, window: BudgetWindow, now_ms: u64) {
        let start = window_start(window, now_ms / 1000);
        if start > self.window_start {
            self.window_start = start;
            self.spent_micros = 0;
        }
        self.reserved.purge(now_ms);
    }

    /// What a new reservation may still take.
    pub fn remaining(&self, budget: &Budget) -> u64 {
        budget.amount_micros.saturating_sub(self.spent_micros).saturating_sub(self.reserved.total())
    }

    /// Reserves `amount_micros` (the request's worst case) if it fits; changes nothing otherwise.
    pub fn reserve(&mut self, budget: &Budget, now_ms: u64, amount_micros: u64, expiry: u64) -> Result<Reservation, OverBudget> {
        self.roll(budget.window, now_ms);
        let remaining = self.remaining(budget);
        if amount_micros > remaining {
            return Err(OverBudget { remaining_micros: remaining, requested_micros: amount_micros });
        }
        self.reserved.add(expiry, amount_micros);
        Ok(Reservation { expiry, amount_micros })
    }

    /// Charges the real cost and releases the reservation (`actual_micros == 0` is a plain
    /// release, for a request that was never served). Returns what is left.
    pub fn settle(&mut self, budget: &Budget, now_ms: u64, reservation: Option<Reservation>, actual_micros: u64) -> u64 {
        self.roll(budget.window, now_ms);
        if let Some(r) = reservation {
            self.reserved.remove(r.expiry, r.amount_micros);
        }
        self.spent_micros = self.spent_micros.saturating_add(actual_micros);
        self.remaining(budget)
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u64(self.window_start).u64(self.spent_micros);
        self.reserved.encode(w);
    }

    pub(crate) fn decode(r: &mut Reader) -> Option<Self> {
        Some(BudgetState { window_start: r.u64()?, spent_micros: r.u64()?, reserved: Leases::decode(r)? })
    }
}

#[cfg(test)]
mod tests {
    use super::super::limits::lease_expiry;
    use super::*;

    fn ts(y: i64, m: u32, d: u32, hh: u64, mm: u64, ss: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * DAY + hh * 3600 + mm * 60 + ss
    }

    #[test]
    fn civil_round_trip_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 1_700_000_000 is 2023-11-14T22:13:20Z.
        assert_eq!(civil_from_days(1_700_000_000 / 86_400), (2023, 11, 14));
        assert_eq!(ts(2023, 11, 14, 22, 13, 20), 1_700_000_000);
        for z in -800_000..800_000i64 {
            if z % 37 != 0 {
                continue;
            }
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn leap_years() {
        // 2024 is a leap year, 2100 is not, 2000 is.
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 28) + 1), (2024, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29) + 1), (2024, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(2100, 2, 28) + 1), (2100, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 28) + 1), (2000, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(2023, 2, 28) + 1), (2023, 3, 1));
        assert_eq!(days_from_civil(2025, 1, 1) - days_from_civil(2024, 1, 1), 366);
    }

    #[test]
    fn daily_windows() {
        let t = ts(2024, 2, 29, 23, 59, 59);
        assert_eq!(window_start(BudgetWindow::Daily, t), ts(2024, 2, 29, 0, 0, 0));
        assert_eq!(window_end(BudgetWindow::Daily, t), Some(ts(2024, 3, 1, 0, 0, 0)));
        assert_eq!(window_start(BudgetWindow::Daily, t + 1), ts(2024, 3, 1, 0, 0, 0));
        assert_eq!(window_start(BudgetWindow::Total, t), 0);
        assert_eq!(window_end(BudgetWindow::Total, t), None);
    }

    #[test]
    fn monthly_windows_across_year_end_and_february() {
        let dec = ts(2024, 12, 31, 23, 59, 59);
        assert_eq!(window_start(BudgetWindow::Monthly, dec), ts(2024, 12, 1, 0, 0, 0));
        assert_eq!(window_end(BudgetWindow::Monthly, dec), Some(ts(2025, 1, 1, 0, 0, 0)));
        assert_eq!(window_start(BudgetWindow::Monthly, dec + 1), ts(2025, 1, 1, 0, 0, 0));
        let feb_leap = ts(2024, 2, 29, 12, 0, 0);
        assert_eq!(window_start(BudgetWindow::Monthly, feb_leap), ts(2024, 2, 1, 0, 0, 0));
        assert_eq!(window_end(BudgetWindow::Monthly, feb_leap), Some(ts(2024, 3, 1, 0, 0, 0)));
        assert_eq!(window_end(BudgetWindow::Monthly, ts(2023, 2, 10, 0, 0, 0)), Some(ts(2023, 3, 1, 0, 0, 0)));
        assert_eq!(window_start(BudgetWindow::Monthly, ts(2023, 3, 1, 0, 0, 0)), ts(2023, 3, 1, 0, 0, 0));
        assert_eq!(window_start(BudgetWindow::Monthly, ts(2023, 2, 28, 23, 59, 59)), ts(2023, 2, 1, 0, 0, 0));
    }

    #[test]
    fn reserve_settle_release_arithmetic() {
        let b = Budget { amount_micros: 1_000_000, window: BudgetWindow::Daily };
        let now = ts(2024, 5, 5, 10, 0, 0) * 1000;
        let exp = lease_expiry(now, 600);
        let mut s = BudgetState::default();
        let r1 = s.reserve(&b, now, 600_000, exp).unwrap();
        assert_eq!(s.remaining(&b), 400_000);
        let e = s.reserve(&b, now, 400_001, exp).unwrap_err();
        assert_eq!(e, OverBudget { remaining_micros: 400_000, requested_micros: 400_001 });
        let r2 = s.reserve(&b, now, 400_000, exp).unwrap();
        assert_eq!(s.remaining(&b), 0);
        // r1 cost 250_000 in the end: 350_000 come back.
        assert_eq!(s.settle(&b, now + 5, Some(r1), 250_000), 350_000);
        // r2 was never served: released, nothing charged.
        assert_eq!(s.settle(&b, now + 6, Some(r2), 0), 750_000);
        assert_eq!(s.spent_micros, 250_000);
        assert_eq!(s.reserved.total(), 0);
    }

    #[test]
    fn new_window_resets_spend_but_keeps_in_flight_reservations() {
        let b = Budget { amount_micros: 100, window: BudgetWindow::Daily };
        let late = ts(2024, 12, 31, 23, 59, 50) * 1000;
        let mut s = BudgetState::default();
        let r = s.reserve(&b, late, 30, lease_expiry(late, 600)).unwrap();
        s.settle(&b, late, None, 60);
        assert_eq!(s.remaining(&b), 10);
        let next_day = ts(2025, 1, 1, 0, 0, 5) * 1000;
        s.roll(b.window, next_day);
        assert_eq!(s.spent_micros, 0);
        assert_eq!(s.remaining(&b), 70, "the in-flight reservation still counts");
        assert_eq!(s.settle(&b, next_day, Some(r), 20), 80, "and settles into the new day");
    }

    #[test]
    fn an_unsettled_reservation_expires() {
        let b = Budget { amount_micros: 100, window: BudgetWindow::Total };
        let now = 1_700_000_000_000;
        let mut s = BudgetState::default();
        s.reserve(&b, now, 100, lease_expiry(now, 60)).unwrap();
        assert!(s.reserve(&b, now + 30_000, 1, lease_expiry(now + 30_000, 60)).is_err());
        let after = (lease_expiry(now, 60) + 1) * 1000;
        assert!(s.reserve(&b, after, 100, lease_expiry(after, 60)).is_ok());
    }

    #[test]
    fn overspend_is_visible_and_blocks_the_next_request() {
        let b = Budget { amount_micros: 100, window: BudgetWindow::Total };
        let mut s = BudgetState::default();
        let r = s.reserve(&b, 0, 50, 10).unwrap();
        assert_eq!(s.settle(&b, 0, Some(r), 130), 0);
        assert_eq!(s.spent_micros, 130);
        assert!(s.reserve(&b, 0, 0, 10).is_ok(), "a zero-cost request still fits");
        assert!(s.reserve(&b, 0, 1, 10).is_err());
    }

    #[test]
    fn interleaved_reservations_never_exceed_the_budget() {
        // 200 workers race for a budget that fits 100 of them. Each worker reads the state,
        // decides, and tries a compare-and-swap write; the schedule interleaves reads and writes
        // so most writes are made from stale reads and must retry.
        use crate::policy::store::{update, MemStore, SharedStore, UpdateError};
        let b = Budget { amount_micros: 100 * 7_000, window: BudgetWindow::Monthly };
        let now = ts(2024, 7, 1, 0, 0, 0) * 1000;
        let store = MemStore::new();
        let enc = |s: &BudgetState| {
            let mut w = Writer::new();
            s.encode(&mut w);
            w.finish()
        };
        store.set("b", &enc(&BudgetState::default()), 0).unwrap();
        // Phase 1: everybody reads; phase 2: writes in a scrambled order from stale reads.
        let reads: Vec<(Option<Vec<u8>>, u32)> = (0..200).map(|_| store.get("b")).collect();
        let mut order: Vec<usize> = (0..200).collect();
        let mut x = 12345u64;
        for i in (1..order.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (x >> 33) as usize % (i + 1));
        }
        let mut admitted = 0;
        let mut rejected = 0;
        for i in order {
            let (stale, cas) = &reads[i];
            let try_reserve = |cur: Option<&[u8]>| -> Result<Vec<u8>, OverBudget> {
                let mut s = cur.and_then(|v| BudgetState::decode(&mut Reader::new(v))).unwrap_or_default();
                s.reserve(&b, now, 7_000, lease_expiry(now, 600))?;
                Ok(enc(&s))
            };
            // First attempt from the stale read; on mismatch, the real retry loop.
            let first = try_reserve(stale.as_deref()).map(|v| store.set("b", &v, *cas));
            match first {
                Ok(Ok(())) => admitted += 1,
                Err(_) => rejected += 1,
                Ok(Err(_)) => match update(&store, "b", try_reserve) {
                    Ok(()) => admitted += 1,
                    Err(UpdateError::Rejected(_)) => rejected += 1,
                    Err(UpdateError::Contention) => unreachable!("single-threaded"),
                },
            }
            let s = BudgetState::decode(&mut Reader::new(&store.get("b").0.unwrap())).unwrap();
            assert!(s.spent_micros + s.reserved.total() <= b.amount_micros);
        }
        let s = BudgetState::decode(&mut Reader::new(&store.get("b").0.unwrap())).unwrap();
        assert_eq!((admitted, rejected), (100, 100));
        assert_eq!(s.reserved.total(), b.amount_micros);
    }

    #[test]
    fn compile_converts_dollars_exactly() {
        let c = BudgetConfig { amount_usd: 12.34, window: BudgetWindow::Daily };
        assert_eq!(c.compile("k").unwrap().amount_micros, 12_340_000);
        let c = BudgetConfig { amount_usd: 0.1, window: BudgetWindow::Total };
        assert_eq!(c.compile("k").unwrap().amount_micros, 100_000);
        assert!(BudgetConfig { amount_usd: -1.0, window: BudgetWindow::Total }.compile("k").is_err());
        assert!(BudgetConfig { amount_usd: f64::NAN, window: BudgetWindow::Total }.compile("k").is_err());
    }
}
