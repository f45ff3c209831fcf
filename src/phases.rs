//! Phase timings of one run: for the JSON report, the state and the miss history, and as one
//! `tracing` span per phase, so that `PENV_GUARD_LOG=info` (or `-v`) shows each phase's duration.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Phase timings for the JSON report and the state, and one `tracing` span per phase: with
/// `PENV_GUARD_LOG=info` (or `-v`) each phase's close line shows its duration.
pub struct Phases {
    pub start: Instant,
    last: Instant,
    ms: BTreeMap<String, f64>,
    span: Option<tracing::span::EnteredSpan>,
}

impl Phases {
    pub fn new(start: Instant) -> Phases {
        Phases {
            start,
            last: start,
            ms: BTreeMap::new(),
            span: Some(Phases::open()),
        }
    }

    fn open() -> tracing::span::EnteredSpan {
        tracing::info_span!("phase", name = tracing::field::Empty).entered()
    }

    /// Ends the phase that ran since the last `end`, naming it.
    pub fn end(&mut self, phase: &str) {
        let now = Instant::now();
        *self.ms.entry(phase.to_owned()).or_default() += ms(now - self.last);
        self.last = now;
        if let Some(span) = self.span.take() {
            span.record("name", phase);
        }
        self.span = Some(Phases::open());
    }

    /// The phases ended so far, without a total.
    pub fn ended(&self) -> BTreeMap<String, f64> {
        self.ms.clone()
    }

    pub fn so_far(&self) -> BTreeMap<String, f64> {
        let mut ms = self.ms.clone();
        ms.insert("total".into(), self::ms(self.start.elapsed()));
        ms
    }

    pub fn total(mut self) -> BTreeMap<String, f64> {
        if let Some(span) = self.span.take() {
            span.record("name", "report");
        }
        self.ms.insert("total".into(), ms(self.start.elapsed()));
        self.ms
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
