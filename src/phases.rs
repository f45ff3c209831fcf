//! Phase timings of one run: for the JSON report, the state and the miss history; as one
//! `tracing` event per phase (`-v` prints `penv-guard: install 1.9 s`, one line per phase) and
//! one `tracing` span per phase (the span detail, with busy and idle times, is for
//! `PENV_GUARD_LOG=debug`). With no subscriber (no `-v`, no `PENV_GUARD_LOG`) neither costs a
//! hit more than a disabled callsite's check.
//!
//! The timings are kept by name (a `BTreeMap`, as the state's JSON keeps them); [`ORDER`] is the
//! order a run goes through them, and [`in_order`] is how people are shown them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::messages::human_ms;

/// Every phase `ensure` ends, in the order it runs them (a run skips those it does not need).
pub const ORDER: [&str; 10] = [
    "check",
    "lock_wait",
    "recheck",
    "venv",
    "uv_bootstrap",
    "install",
    "record_check",
    "validate",
    "record",
    "report",
];

/// Phase timings for the JSON report and the state, and one `tracing` span and event per phase.
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
        tracing::debug_span!("phase", name = tracing::field::Empty).entered()
    }

    /// Ends the phase that ran since the last `end`, naming it.
    pub fn end(&mut self, phase: &str) {
        let now = Instant::now();
        let took = ms(now - self.last);
        *self.ms.entry(phase.to_owned()).or_default() += took;
        self.last = now;
        tracing::info!("{} {}", words(phase), human_ms(took));
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
        let total = ms(self.start.elapsed());
        tracing::info!("total {}", human_ms(total));
        self.ms.insert("total".into(), total);
        self.ms
    }
}

/// A phase's name for people: `lock_wait` → `lock wait`.
pub fn words(phase: &str) -> String {
    match phase {
        "recheck" => "re-check".to_owned(),
        "record_check" => "RECORD check".to_owned(),
        other => other.replace('_', " "),
    }
}

/// `timings` (as the state and the history keep them) in the order the run went through them,
/// names in words, and the total last: `check 1.2 ms, lock wait 0.1 ms, install 1.9 s; total
/// 2.3 s` (without a recorded total, the phases' sum). Names penv-guard does not know (a newer
/// version's) come after the known ones.
pub fn in_order(timings: &BTreeMap<String, f64>) -> String {
    let rank = |name: &str| ORDER.iter().position(|p| *p == name).unwrap_or(ORDER.len());
    let mut phases: Vec<(&String, &f64)> = timings
        .iter()
        .filter(|(name, _)| *name != "total")
        .collect();
    phases.sort_by_key(|(name, _)| rank(name));
    let mut text = phases
        .iter()
        .map(|(name, ms)| format!("{} {}", words(name), human_ms(**ms)))
        .collect::<Vec<_>>()
        .join(", ");
    // The state's install timings end at the record, before a total: theirs is the sum.
    let total = timings
        .get("total")
        .copied()
        .unwrap_or_else(|| phases.iter().map(|(_, ms)| **ms).sum());
    if !text.is_empty() {
        text.push_str("; ");
    }
    text.push_str("total ");
    text.push_str(&human_ms(total));
    text
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_read_in_the_order_they_ran_with_the_total_last() {
        let timings: BTreeMap<String, f64> = [
            ("validate", 310.0),
            ("check", 1.25),
            ("install", 18_800.0),
            ("lock_wait", 0.04),
            ("record_check", 12.0),
            ("venv", 40.0),
            ("record", 2.0),
            ("total", 19_140.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(
            in_order(&timings),
            "check 1.2 ms, lock wait 0.0 ms, venv 40 ms, install 18.8 s, RECORD check 12 ms, \
             validate 310 ms, record 2.0 ms; total 19.1 s"
        );
        let mut without_total = timings.clone();
        without_total.remove("total");
        without_total.insert("newer_phase".into(), 3.0);
        assert!(
            in_order(&without_total).ends_with("record 2.0 ms, newer phase 3.0 ms; total 19.2 s"),
            "{}",
            in_order(&without_total)
        );
    }
}
