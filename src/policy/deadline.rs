//! First-token deadlines and hedging: what the configuration asks of Envoy, and what happened.
//!
//! Mechanism (checked on Envoy 1.40): the gateway sets Envoy's own per-attempt timeout header
//! (`x-envoy-upstream-rq-per-try-timeout-ms`, and `x-envoy-hedge-on-per-try-timeout` for hedging)
//! from the route's `first_token_timeout_ms`; the backend (upstream) filter holds the provider's
//! response headers until the first content token of a stream, or the whole non-stream answer, has
//! arrived. Until then Envoy's router has seen no response, so the per-try timeout is still armed
//! and its expiry retries (or hedges) on the next candidate; once the headers are released the
//! router ignores the per-try timeout and the stream runs to its end.
//!
//! Timings of the attempts are recorded by the backend filter; [`report`] turns them into what
//! the metrics and access log say: how many deadlines fired, which attempt won, its time to first
//! token.

/// A route's deadline, validated and pre-rendered (no allocation on the request path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    pub timeout_ms: u32,
    /// Start the next candidate on the deadline without cancelling the first; the first to
    /// produce a token wins (Envoy's `hedge_on_per_try_timeout`).
    pub hedge: bool,
    /// `timeout_ms` as the header value.
    pub header_value: String,
}

/// Envoy's per-try timeout header (read and removed by the router).
pub const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
/// Envoy's hedging header (read and removed by the router).
pub const HEDGE_HEADER: &str = "x-envoy-hedge-on-per-try-timeout";

/// Longest deadline accepted (an hour): anything longer is a configuration mistake.
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;

impl Deadline {
    pub fn new(timeout_ms: Option<u32>, hedge: bool) -> Result<Option<Deadline>, String> {
        match timeout_ms {
            None if hedge => Err("`hedge` needs `first_token_timeout_ms` (hedging starts on that deadline)".into()),
            None => Ok(None),
            Some(0) => Err("first_token_timeout_ms must be positive".into()),
            Some(t) if t > MAX_TIMEOUT_MS => Err(format!("first_token_timeout_ms must be at most {MAX_TIMEOUT_MS}")),
            Some(t) => Ok(Some(Deadline { timeout_ms: t, hedge, header_value: t.to_string() })),
        }
    }
}

/// One upstream attempt as the backend filter saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptTiming {
    /// When the attempt started (its request headers reached the backend filter).
    pub start_ms: u64,
    /// When it was settled: released to the client (first token, or the whole answer), answered
    /// with an error, or ended (reset, cancelled, timed out). `None`: still pending.
    pub settled_ms: Option<u64>,
    /// Its answer was released to the router (it is the one the client got).
    pub released: bool,
    /// It ended with the provider's error answer (not cancelled by Envoy).
    pub failed: bool,
}

/// What the deadlines did to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadlineReport {
    /// Attempts still without a first token when their deadline passed.
    pub fired: u32,
    /// 1-based number of the attempt whose answer the client got.
    pub winner: Option<u32>,
    /// The winner's time from its own start to its first token (stream) or whole answer.
    pub winner_ttft_ms: Option<u64>,
}

/// Reads the attempts of a request (in start order) at `now_ms`. An attempt's deadline fired when it
/// was still pending `timeout_ms` after it started: abandoned by the per-try timeout, or, when
/// hedging, overtaken or answering late. Attempts that failed or were reset earlier do not count.
pub fn report(attempts: &[AttemptTiming], timeout_ms: u32, now_ms: u64) -> DeadlineReport {
    let mut r = DeadlineReport::default();
    // Envoy's timer and the VM's clock are different clocks read at millisecond resolution: an
    // attempt abandoned at its deadline may appear to have ended a little before it. Failures end
    // long before (a reset or a refused connection within milliseconds).
    let slack = u64::from(timeout_ms / 20).min(50);
    for (i, a) in attempts.iter().enumerate() {
        let end = a.settled_ms.unwrap_or(now_ms);
        let limit = if a.released { u64::from(timeout_ms) } else { u64::from(timeout_ms) - slack };
        if end.saturating_sub(a.start_ms) >= limit {
            r.fired += 1;
        }
        if a.released && r.winner.is_none() {
            r.winner = Some(i as u32 + 1);
            r.winner_ttft_ms = a.settled_ms.map(|s| s.saturating_sub(a.start_ms));
        }
    }
    r
}

/// The attempts (indexes, in start order) that Envoy cancelled after they had been sent to their
/// provider: abandoned at their deadline (the per-try timeout), or, when hedging, overtaken by
/// another attempt's first token (reset when the winner was released). A provider that bills a
/// request it started processing bills these too. Attempts that failed on their own (an error
/// answer, a refused connection) are not among them.
pub fn cancelled(attempts: &[AttemptTiming], timeout_ms: u32, now_ms: u64) -> Vec<usize> {
    let slack = u64::from(timeout_ms / 20).min(50);
    let won_at = attempts.iter().find(|a| a.released).and_then(|a| a.settled_ms);
    attempts
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.released && !a.failed)
        .filter(|(_, a)| {
            let end = a.settled_ms.unwrap_or(now_ms);
            let at_deadline = end.saturating_sub(a.start_ms) >= u64::from(timeout_ms) - slack;
            let overtaken = won_at.is_some_and(|w| a.start_ms <= w && end + slack >= w);
            at_deadline || overtaken
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelled_attempts_are_those_envoy_ended() {
        // Abandoned at its deadline, then a winner: the first was cancelled.
        assert_eq!(cancelled(&[at(1000, Some(1500), false), at(1560, Some(1700), true)], 500, 9000), vec![0]);
        // Hedging, the first wins late: the hedge (started at the deadline) is reset as the first
        // is released, before its own deadline.
        assert_eq!(cancelled(&[at(0, Some(700), true), at(500, Some(700), false)], 500, 800), vec![1]);
        assert_eq!(cancelled(&[at(0, Some(650), false), at(500, Some(650), true)], 500, 800), vec![0]);
        // Quick failures (a refused connection, an error answer) were not cancelled; nor the winner.
        let failed = AttemptTiming { failed: true, ..at(60, Some(260), false) };
        assert!(cancelled(&[at(0, Some(10), false), failed, at(310, Some(700), true)], 500, 60_000).is_empty());
        // An error answer arriving exactly at the winner's release is still the provider's own.
        let failed = AttemptTiming { failed: true, ..at(500, Some(700), false) };
        assert!(cancelled(&[at(0, Some(700), true), failed], 500, 800).is_empty());
        // Every attempt abandoned (a 504): all cancelled, the last one still pending at the end.
        assert_eq!(cancelled(&[at(0, Some(500), false), at(550, None, false)], 500, 1060), vec![0, 1]);
        // Without a deadline passing or a winner, nothing.
        assert!(cancelled(&[at(0, None, false)], 500, 400).is_empty());
    }

    fn at(start_ms: u64, settled_ms: Option<u64>, released: bool) -> AttemptTiming {
        AttemptTiming { start_ms, settled_ms, released, failed: false }
    }

    #[test]
    fn configuration() {
        assert_eq!(Deadline::new(None, false), Ok(None));
        assert!(Deadline::new(None, true).is_err());
        assert!(Deadline::new(Some(0), false).is_err());
        assert!(Deadline::new(Some(MAX_TIMEOUT_MS + 1), false).is_err());
        let d = Deadline::new(Some(1500), true).unwrap().unwrap();
        assert_eq!((d.timeout_ms, d.hedge, d.header_value.as_str()), (1500, true, "1500"));
    }

    #[test]
    fn first_attempt_in_time_fires_nothing() {
        let r = report(&[at(1000, Some(1400), true)], 500, 9000);
        assert_eq!(r, DeadlineReport { fired: 0, winner: Some(1), winner_ttft_ms: Some(400) });
    }

    #[test]
    fn stalled_primary_abandoned_then_secondary_wins() {
        // Attempt 1 timed out at its deadline (ended by the router at 1500), attempt 2 answered.
        let r = report(&[at(1000, Some(1500), false), at(1560, Some(1700), true)], 500, 9000);
        assert_eq!(r, DeadlineReport { fired: 1, winner: Some(2), winner_ttft_ms: Some(140) });
    }

    #[test]
    fn abandonment_read_a_millisecond_early_still_counts() {
        let r = report(&[at(1000, Some(1999), false), at(2050, Some(2200), true)], 1000, 9000);
        assert_eq!(r.fired, 1);
        // A winner that released just in time did not hit its deadline.
        let r = report(&[at(1000, Some(1990), true)], 1000, 9000);
        assert_eq!(r.fired, 0);
        // Far from the deadline: a failure, not a deadline.
        let r = report(&[at(1000, Some(1900), false)], 1000, 9000);
        assert_eq!(r.fired, 0);
    }

    #[test]
    fn quick_failures_are_not_deadlines() {
        // A connection refused at 10 ms and a 503 at 200 ms, then a success: no deadline fired,
        // however long the request lasted afterwards.
        let r = report(&[at(0, Some(10), false), at(60, Some(260), false), at(310, Some(700), true)], 500, 60_000);
        assert_eq!(r, DeadlineReport { fired: 0, winner: Some(3), winner_ttft_ms: Some(390) });
    }

    #[test]
    fn hedging_first_attempt_wins_late() {
        // Hedge started at the deadline (500); attempt 1 produced its token at 700, attempt 2 was
        // cancelled at 700: the deadline fired once, attempt 1 won.
        let r = report(&[at(0, Some(700), true), at(500, Some(700), false)], 500, 800);
        assert_eq!(r, DeadlineReport { fired: 1, winner: Some(1), winner_ttft_ms: Some(700) });
    }

    #[test]
    fn hedging_second_attempt_wins() {
        let r = report(&[at(0, Some(650), false), at(500, Some(650), true)], 500, 800);
        assert_eq!(r, DeadlineReport { fired: 1, winner: Some(2), winner_ttft_ms: Some(150) });
    }

    #[test]
    fn every_attempt_timed_out() {
        // Nothing released; the last attempt is still pending when the request ends (504).
        let r = report(&[at(0, Some(500), false), at(550, None, false)], 500, 1060);
        assert_eq!(r, DeadlineReport { fired: 2, winner: None, winner_ttft_ms: None });
        // Pending but not yet at its deadline (the client went away): not fired.
        let r = report(&[at(0, None, false)], 500, 400);
        assert_eq!(r.fired, 0);
    }
}
