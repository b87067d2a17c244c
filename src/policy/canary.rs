//! Canary rollouts with gates and automatic rollback.
//!
//! A route names a `canary` model and the share of its traffic that goes there. Every finished
//! request adds to a sliding window of its arm (stable or canary): requests, errors, cost and a
//! latency histogram, in `SLOTS` time slots of `window_secs / SLOTS` each. Once both arms have
//! `min_samples` in the window, the gates compare the canary with the stable model: error rate
//! (absolute increase), p95 latency and cost per request (ratios). A failing gate rolls the canary
//! back: its share becomes 0 and stays there (a metric and a log line say which gate and why) until
//! the configuration names another canary model. While every gate holds with a margin
//! (`step_margin` of each allowance, for hysteresis) for `step_after_secs`, the share steps up by
//! `step` to at most `max_share`.
//!
//! The state is one value in proxy-wasm shared data per route and canary model, updated with
//! compare-and-swap: every worker sees the same share, and it survives a configuration reload of
//! the same VM (shared data belongs to the VM id, not to the plugin configuration).

use serde::Deserialize;

use crate::policy::store::{self, SharedStore};

pub const KEY_PREFIX: &str = "switchyard/canary/";
pub const SLOTS: usize = 6;
/// Upper bounds (ms) of the latency histogram's buckets; the last is open-ended.
pub const LATENCY_BOUNDS_MS: [u64; 15] = [50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 60000];
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
const PPM: u64 = 1_000_000;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// A configured model (or alias) that serves the canary share.
    pub model: String,
    /// Share of the route's requests sent to the canary at first (0 to 1).
    pub share: f64,
    /// Ceiling the share may step up to (default: `share`, no stepping).
    #[serde(default)]
    pub max_share: Option<f64>,
    /// Step added each time the gates have held for `step_after_secs` (default 0.05).
    #[serde(default)]
    pub step: Option<f64>,
    #[serde(default)]
    pub step_after_secs: Option<u64>,
    /// The sliding window the gates look at (default 300 s).
    #[serde(default)]
    pub window_secs: Option<u64>,
    /// Requests each arm needs in the window before any gate is judged (default 20).
    #[serde(default)]
    pub min_samples: Option<u32>,
    /// Fraction of each allowance the canary must stay within to step up (default 0.8).
    #[serde(default)]
    pub step_margin: Option<f64>,
    #[serde(default)]
    pub gates: Gates,
}

/// Allowances relative to the stable model; an absent gate is not judged.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Canary error rate may exceed the stable one by at most this (0.02 = 2 points).
    #[serde(default)]
    pub max_error_rate_increase: Option<f64>,
    /// Canary p95 latency may be at most this times the stable one.
    #[serde(default)]
    pub max_p95_ratio: Option<f64>,
    /// Canary cost per request may be at most this times the stable one.
    #[serde(default)]
    pub max_cost_ratio: Option<f64>,
}

/// A validated canary with its shared-data key.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    pub cfg: CanaryConfig,
    pub key: String,
    share_ppm: u64,
    max_share_ppm: u64,
    step_ppm: u64,
    step_after_ms: u64,
    slot_ms: u64,
    min_samples: u32,
    step_margin: f64,
}

impl Canary {
    pub fn new(route: &str, cfg: CanaryConfig) -> Result<Canary, String> {
        let frac = |v: f64, what: &str| {
            if (0.0..=1.0).contains(&v) {
                Ok((v * PPM as f64).round() as u64)
            } else {
                Err(format!("canary {what} must be between 0 and 1"))
            }
        };
        let share_ppm = frac(cfg.share, "share")?;
        let max_share_ppm = frac(cfg.max_share.unwrap_or(cfg.share), "max_share")?.max(share_ppm);
        let step_ppm = frac(cfg.step.unwrap_or(0.05), "step")?;
        let step_margin = cfg.step_margin.unwrap_or(0.8);
        if !(0.0..=1.0).contains(&step_margin) {
            return Err("canary step_margin must be between 0 and 1".into());
        }
        let window_ms = cfg.window_secs.unwrap_or(300).saturating_mul(1000);
        if window_ms < SLOTS as u64 * 1000 {
            return Err(format!("canary window_secs must be at least {SLOTS}"));
        }
        let g = cfg.gates;
        for v in [g.max_error_rate_increase, g.max_p95_ratio, g.max_cost_ratio].into_iter().flatten() {
            if !(v.is_finite() && v >= 0.0) {
                return Err("canary gates must be non-negative numbers".into());
            }
        }
        Ok(Canary {
            key: format!("{KEY_PREFIX}{route}/{}", cfg.model),
            share_ppm,
            max_share_ppm,
            step_ppm,
            step_after_ms: cfg.step_after_secs.unwrap_or(300).saturating_mul(1000),
            slot_ms: window_ms / SLOTS as u64,
            min_samples: cfg.min_samples.unwrap_or(20).max(1),
            step_margin,
            cfg,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Stable,
    Canary,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    ErrorRate,
    P95Latency,
    Cost,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::ErrorRate => "error_rate",
            Gate::P95Latency => "p95_latency",
            Gate::Cost => "cost",
        }
    }
}

/// One finished request of an arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub latency_ms: Option<u64>,
    pub error: bool,
    pub cost_micros: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    epoch: u64,
    count: u32,
    errors: u32,
    costed: u32,
    cost_micros: u64,
    latency: [u32; BUCKETS],
}

/// The shared state of one canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub share_ppm: u64,
    pub rolled_back: Option<Gate>,
    /// Since when the share has been what it is.
    pub since_ms: u64,
    slots: [[Slot; SLOTS]; 2],
}

/// Totals of an arm over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ArmStats {
    pub count: u64,
    pub error_rate: f64,
    pub p95_ms: Option<u64>,
    pub cost_per_request: Option<f64>,
}

/// What an update changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    RolledBack { gate: Gate, canary: f64, stable: f64 },
    SteppedUp { share_ppm: u64 },
}

impl State {
    pub fn initial(c: &Canary, now_ms: u64) -> State {
        State { share_ppm: c.share_ppm, rolled_back: None, since_ms: now_ms, slots: [[Slot::default(); SLOTS]; 2] }
    }

    /// Which arm serves a request, from a uniform `roll` in [0, 1).
    pub fn pick(&self, roll: f64) -> Arm {
        if roll * (PPM as f64) < self.share_ppm as f64 {
            Arm::Canary
        } else {
            Arm::Stable
        }
    }

    pub fn stats(&self, c: &Canary, arm: Arm, now_ms: u64) -> ArmStats {
        let current = now_ms / c.slot_ms;
        let mut count = 0u64;
        let (mut errors, mut costed, mut cost) = (0u64, 0u64, 0u64);
        let mut hist = [0u64; BUCKETS];
        for s in &self.slots[arm as usize] {
            if s.count == 0 || s.epoch + SLOTS as u64 <= current || s.epoch > current {
                continue;
            }
            count += u64::from(s.count);
            errors += u64::from(s.errors);
            costed += u64::from(s.costed);
            cost = cost.saturating_add(s.cost_micros);
            for (h, v) in hist.iter_mut().zip(s.latency.iter()) {
                *h += u64::from(*v);
            }
        }
        let timed: u64 = hist.iter().sum();
        let p95_ms = (timed > 0).then(|| {
            let need = (timed * 95).div_ceil(100);
            let mut acc = 0;
            let mut bound = u64::MAX;
            for (i, n) in hist.iter().enumerate() {
                acc += n;
                if acc >= need {
                    bound = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(u64::MAX);
                    break;
                }
            }
            bound
        });
        ArmStats {
            count,
            error_rate: if count > 0 { errors as f64 / count as f64 } else { 0.0 },
            p95_ms,
            cost_per_request: (costed > 0).then(|| cost as f64 / costed as f64),
        }
    }

    /// Adds a sample of `arm`, then judges the gates: a rollback, a step up, or nothing.
    pub fn observe(&mut self, c: &Canary, arm: Arm, s: Sample, now_ms: u64) -> Option<Event> {
        let epoch = now_ms / c.slot_ms;
        let slot = &mut self.slots[arm as usize][(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slot { epoch, ..Slot::default() };
        }
        slot.count = slot.count.saturating_add(1);
        slot.errors = slot.errors.saturating_add(u32::from(s.error));
        if let Some(cost) = s.cost_micros {
            slot.costed = slot.costed.saturating_add(1);
            slot.cost_micros = slot.cost_micros.saturating_add(cost);
        }
        if let Some(ms) = s.latency_ms {
            let b = LATENCY_BOUNDS_MS.iter().position(|&bound| ms <= bound).unwrap_or(BUCKETS - 1);
            if let Some(n) = slot.latency.get_mut(b) {
                *n = n.saturating_add(1);
            }
        }
        if self.rolled_back.is_some() {
            return None;
        }
        let (canary, stable) = (self.stats(c, Arm::Canary, now_ms), self.stats(c, Arm::Stable, now_ms));
        let min = u64::from(c.min_samples);
        if canary.count < min || stable.count < min {
            return None;
        }
        if let Some((gate, cv, sv)) = failing_gate(&c.cfg.gates, &canary, &stable, 1.0) {
            self.rolled_back = Some(gate);
            self.share_ppm = 0;
            self.since_ms = now_ms;
            return Some(Event::RolledBack { gate, canary: cv, stable: sv });
        }
        let holds_with_margin = failing_gate(&c.cfg.gates, &canary, &stable, c.step_margin).is_none();
        if !holds_with_margin {
            // Close to a limit: the time the gates must hold starts again.
            self.since_ms = now_ms;
            return None;
        }
        if self.share_ppm < c.max_share_ppm && now_ms.saturating_sub(self.since_ms) >= c.step_after_ms {
            self.share_ppm = (self.share_ppm + c.step_ppm).min(c.max_share_ppm);
            self.since_ms = now_ms;
            return Some(Event::SteppedUp { share_ppm: self.share_ppm });
        }
        None
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 2 * SLOTS * (8 + 16 + 8 + BUCKETS * 4));
        out.push(1u8);
        out.extend_from_slice(&self.share_ppm.to_le_bytes());
        out.push(match self.rolled_back {
            None => 0,
            Some(Gate::ErrorRate) => 1,
            Some(Gate::P95Latency) => 2,
            Some(Gate::Cost) => 3,
        });
        out.extend_from_slice(&self.since_ms.to_le_bytes());
        for arm in &self.slots {
            for s in arm {
                out.extend_from_slice(&s.epoch.to_le_bytes());
                for v in [s.count, s.errors, s.costed] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&s.cost_micros.to_le_bytes());
                for v in s.latency {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out
    }

    /// `None` for anything this version did not write.
    pub fn decode(bytes: &[u8]) -> Option<State> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.u8()? != 1 {
            return None;
        }
        let share_ppm = r.u64()?;
        let rolled_back = match r.u8()? {
            0 => None,
            1 => Some(Gate::ErrorRate),
            2 => Some(Gate::P95Latency),
            3 => Some(Gate::Cost),
            _ => return None,
        };
        let since_ms = r.u64()?;
        let mut slots = [[Slot::default(); SLOTS]; 2];
        for arm in slots.iter_mut() {
            for s in arm.iter_mut() {
                s.epoch = r.u64()?;
                s.count = r.u32()?;
                s.errors = r.u32()?;
                s.costed = r.u32()?;
                s.cost_micros = r.u64()?;
                for v in s.latency.iter_mut() {
                    *v = r.u32()?;
                }
            }
        }
        (r.at == bytes.len() && share_ppm <= PPM).then_some(State { share_ppm, rolled_back, since_ms, slots })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.b.get(self.at..self.at + N)?;
        self.at += N;
        s.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take()?))
    }
}

/// The first gate the canary fails with allowances scaled by `scale` (1 = the limits; below 1 =
/// the margin stepping up requires), with the canary's and the stable model's values.
fn failing_gate(g: &Gates, canary: &ArmStats, stable: &ArmStats, scale: f64) -> Option<(Gate, f64, f64)> {
    if let Some(max) = g.max_error_rate_increase {
        if canary.error_rate > stable.error_rate + max * scale {
            return Some((Gate::ErrorRate, canary.error_rate, stable.error_rate));
        }
    }
    let ratio_limit = |r: f64| 1.0 + (r - 1.0) * scale;
    if let (Some(max), Some(cp), Some(sp)) = (g.max_p95_ratio, canary.p95_ms, stable.p95_ms) {
        if cp as f64 > sp as f64 * ratio_limit(max) {
            return Some((Gate::P95Latency, cp as f64, sp as f64));
        }
    }
    if let (Some(max), Some(cc), Some(sc)) = (g.max_cost_ratio, canary.cost_per_request, stable.cost_per_request) {
        if cc > sc * ratio_limit(max) {
            return Some((Gate::Cost, cc, sc));
        }
    }
    None
}

/// The canary's current state (its initial one when nothing is stored yet).
pub fn load(store: &impl SharedStore, c: &Canary, now_ms: u64) -> State {
    store.get(&c.key).0.as_deref().and_then(State::decode).unwrap_or_else(|| State::initial(c, now_ms))
}

/// Adds a finished request to the shared state; returns the event it caused and the share after it.
pub fn record(store: &impl SharedStore, c: &Canary, arm: Arm, s: Sample, now_ms: u64) -> Option<(Option<Event>, u64)> {
    let mut out = None;
    let res = store::update::<_, (), _>(store, &c.key, |cur| {
        let mut st = cur.and_then(State::decode).unwrap_or_else(|| State::initial(c, now_ms));
        let ev = st.observe(c, arm, s, now_ms);
        out = Some((ev, st.share_ppm));
        Ok(st.encode())
    });
    res.ok().and(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::store::MemStore;

    fn canary(json: &str) -> Canary {
        Canary::new("chat", serde_json::from_str(json).unwrap()).unwrap()
    }

    const OK: Sample = Sample { latency_ms: Some(80), error: false, cost_micros: Some(100) };
    const FAIL: Sample = Sample { latency_ms: None, error: true, cost_micros: None };

    #[test]
    fn configuration() {
        let c = canary(r#"{"model":"new","share":0.05}"#);
        assert_eq!((c.share_ppm, c.max_share_ppm, c.min_samples, c.slot_ms), (50_000, 50_000, 20, 50_000));
        assert_eq!(c.key, "switchyard/canary/chat/new");
        for bad in [r#"{"model":"n","share":1.5}"#, r#"{"model":"n","share":0.1,"window_secs":3}"#, r#"{"model":"n","share":0.1,"gates":{"max_p95_ratio":-1}}"#] {
            assert!(Canary::new("r", serde_json::from_str(bad).unwrap()).is_err(), "{bad}");
        }
        let st = State::initial(&c, 0);
        assert_eq!(st.pick(0.0499), Arm::Canary);
        assert_eq!(st.pick(0.05), Arm::Stable);
    }

    #[test]
    fn error_rate_gate_rolls_back_only_after_min_samples() {
        let c = canary(r#"{"model":"new","share":0.5,"min_samples":5,"window_secs":60,"gates":{"max_error_rate_increase":0.2}}"#);
        let mut st = State::initial(&c, 0);
        for i in 0..5 {
            assert_eq!(st.observe(&c, Arm::Stable, OK, 1000 + i), None);
        }
        for i in 0..4 {
            assert_eq!(st.observe(&c, Arm::Canary, FAIL, 2000 + i), None, "below min_samples");
        }
        let ev = st.observe(&c, Arm::Canary, FAIL, 3000);
        assert_eq!(ev, Some(Event::RolledBack { gate: Gate::ErrorRate, canary: 1.0, stable: 0.0 }));
        assert_eq!((st.share_ppm, st.rolled_back), (0, Some(Gate::ErrorRate)));
        assert_eq!(st.pick(0.0), Arm::Stable);
        // Rolled back for good: healthy samples afterwards change nothing.
        for i in 0..50 {
            assert_eq!(st.observe(&c, Arm::Canary, OK, 4000 + i), None);
        }
        assert_eq!(st.share_ppm, 0);
    }

    #[test]
    fn latency_and_cost_gates() {
        let c = canary(r#"{"model":"new","share":0.1,"min_samples":3,"gates":{"max_p95_ratio":1.5,"max_cost_ratio":1.2}}"#);
        let mut st = State::initial(&c, 0);
        for i in 0..3 {
            st.observe(&c, Arm::Stable, Sample { latency_ms: Some(180), ..OK }, i);
        }
        assert_eq!(st.stats(&c, Arm::Stable, 10).p95_ms, Some(200));
        st.observe(&c, Arm::Canary, Sample { latency_ms: Some(250), ..OK }, 5);
        st.observe(&c, Arm::Canary, Sample { latency_ms: Some(250), ..OK }, 6);
        // 300 ms ≤ 1.5 × 200: holds.
        assert_eq!(st.observe(&c, Arm::Canary, Sample { latency_ms: Some(250), ..OK }, 7), None);
        let ev = st.observe(&c, Arm::Canary, Sample { latency_ms: Some(900), ..OK }, 8);
        assert_eq!(ev, Some(Event::RolledBack { gate: Gate::P95Latency, canary: 1000.0, stable: 200.0 }));

        let mut st = State::initial(&c, 0);
        for i in 0..3 {
            st.observe(&c, Arm::Stable, OK, i);
            st.observe(&c, Arm::Canary, Sample { cost_micros: Some(110), ..OK }, i);
        }
        assert_eq!(st.rolled_back, None, "1.1 ≤ 1.2");
        let ev = st.observe(&c, Arm::Canary, Sample { cost_micros: Some(400), ..OK }, 9);
        assert!(matches!(ev, Some(Event::RolledBack { gate: Gate::Cost, .. })), "{ev:?}");
    }

    #[test]
    fn the_window_slides() {
        let c = canary(r#"{"model":"new","share":0.5,"min_samples":2,"window_secs":60,"gates":{"max_error_rate_increase":0.1}}"#);
        let mut st = State::initial(&c, 0);
        st.observe(&c, Arm::Canary, FAIL, 0);
        st.observe(&c, Arm::Stable, OK, 0);
        st.observe(&c, Arm::Stable, OK, 1);
        // A minute later the old failure has left the window: two fresh healthy canary samples hold.
        st.observe(&c, Arm::Stable, OK, 61_000);
        st.observe(&c, Arm::Stable, OK, 61_001);
        assert_eq!(st.stats(&c, Arm::Canary, 61_000).count, 0);
        st.observe(&c, Arm::Canary, OK, 61_002);
        assert_eq!(st.observe(&c, Arm::Canary, OK, 61_003), None);
        assert_eq!(st.rolled_back, None);
    }

    #[test]
    fn steps_up_after_holding_with_margin_to_the_ceiling() {
        let c = canary(
            r#"{"model":"new","share":0.1,"max_share":0.25,"step":0.1,"step_after_secs":10,"min_samples":2,
                "gates":{"max_error_rate_increase":0.5}}"#,
        );
        let mut st = State::initial(&c, 0);
        for t in [0, 1] {
            st.observe(&c, Arm::Stable, OK, t);
            st.observe(&c, Arm::Canary, OK, t);
        }
        assert_eq!(st.observe(&c, Arm::Canary, OK, 9_000), None, "not held long enough");
        assert_eq!(st.observe(&c, Arm::Canary, OK, 10_000), Some(Event::SteppedUp { share_ppm: 200_000 }));
        // Within the limit (0.5) but not within the margin (0.8 × 0.5 = 0.4): no step, clock reset.
        for t in 0..3 {
            assert_eq!(st.observe(&c, Arm::Canary, FAIL, 12_000 + t), None);
        }
        let s = st.stats(&c, Arm::Canary, 12_003);
        assert!(s.error_rate > 0.4 && s.error_rate <= 0.5, "{s:?}");
        assert_eq!(st.rolled_back, None);
        assert_eq!(st.since_ms, 12_002);
        for t in 0..6 {
            assert_eq!(st.observe(&c, Arm::Canary, OK, 13_000 + t), None, "held only since 12 002");
        }
        assert_eq!(st.observe(&c, Arm::Canary, OK, 40_000), Some(Event::SteppedUp { share_ppm: 250_000 }), "capped");
        assert_eq!(st.observe(&c, Arm::Canary, OK, 80_000), None, "at the ceiling");
    }

    #[test]
    fn shared_state_round_trips_and_garbage_is_ignored() {
        let c = canary(r#"{"model":"new","share":0.3,"min_samples":1,"gates":{"max_error_rate_increase":0.1}}"#);
        let store = MemStore::new();
        assert_eq!(load(&store, &c, 5).share_ppm, 300_000);
        record(&store, &c, Arm::Stable, OK, 10).unwrap();
        let (ev, share) = record(&store, &c, Arm::Canary, FAIL, 11).unwrap();
        assert!(matches!(ev, Some(Event::RolledBack { gate: Gate::ErrorRate, .. })) && share == 0);
        let st = load(&store, &c, 12);
        assert_eq!((st.share_ppm, st.rolled_back), (0, Some(Gate::ErrorRate)));
        assert_eq!(State::decode(&st.encode()), Some(st));
        assert_eq!(State::decode(b"\x01garbage"), None);
        // Another canary model of the same route starts afresh.
        let next = canary(r#"{"model":"newer","share":0.3}"#);
        assert_eq!(load(&store, &next, 13).share_ppm, 300_000);
    }
}
