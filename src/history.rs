//! The miss history: every miss that took the lock appends one record (when, why, how it ended,
//! its phase timings, the command line) to `<penv>/.penv-guard-history.jsonl`, beside the state.
//! Hits write nothing. The file keeps the last 50 records and is rewritten atomically under the
//! penv lock; a lost or corrupt history is only an empty one, never an error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Follow};
use crate::penv::Penv;

pub const HISTORY_FILE: &str = ".penv-guard-history.jsonl";
const KEEP: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Miss {
    /// Unix time in seconds.
    pub at: f64,
    /// The miss reason's kind (`stamp_changed`, `deps_changed`, …) and its message.
    pub kind: String,
    pub reason: String,
    /// `hit` (another process had just done the work), `revalidated`, `installed`, or
    /// `error: <exit code>: <message>`.
    pub status: String,
    pub timings_ms: BTreeMap<String, f64>,
    pub command: String,
}

pub fn load(penv: &Penv) -> Vec<Miss> {
    let path = penv.root.join(HISTORY_FILE);
    let Ok(bytes) = fsutil::read_capped(&path, fsutil::OWN_FILE_CAP, Follow::Never) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Appends `miss`, keeping the last 50. Best effort: the history never fails a run.
pub fn append(penv: &Penv, miss: &Miss) {
    let path = penv.root.join(HISTORY_FILE);
    // Something else at the history path (a FIFO, a directory) is not penv-guard's to replace.
    if !penv.root.is_dir() || std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        return;
    }
    let mut misses = load(penv);
    misses.push(miss.clone());
    let skip = misses.len().saturating_sub(KEEP);
    let mut text = String::new();
    for miss in &misses[skip..] {
        if let Ok(line) = serde_json::to_string(miss) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    let _ = fsutil::write_atomic(&path, text.as_bytes(), false);
}

/// "3 misses in the last 24 h: 2× stamp_changed (changed behind penv-guard's back: …) at 12:03
/// and 12:40 UTC, 1× deps_changed … at 09:15 UTC", or `None` when there were none.
pub fn summary(misses: &[Miss], now: f64) -> Option<String> {
    let recent: Vec<&Miss> = misses.iter().filter(|m| now - m.at < 86_400.0).collect();
    if recent.is_empty() {
        return None;
    }
    let mut by_kind: Vec<(&str, Vec<&Miss>)> = Vec::new();
    for miss in &recent {
        match by_kind.iter_mut().find(|(kind, _)| *kind == miss.kind) {
            Some((_, list)) => list.push(miss),
            None => by_kind.push((&miss.kind, vec![miss])),
        }
    }
    by_kind.sort_by_key(|(_, list)| std::cmp::Reverse(list.len()));
    let parts: Vec<String> = by_kind
        .iter()
        .map(|(_, list)| {
            let times: Vec<String> = list.iter().map(|m| clock(m.at)).collect();
            format!(
                "{}× {} at {} UTC",
                list.len(),
                list.last().map_or("", |m| m.reason.as_str()),
                times.join(", ")
            )
        })
        .collect();
    let s = if recent.len() == 1 { "" } else { "es" };
    Some(format!(
        "{} miss{s} in the last 24 h: {}",
        recent.len(),
        parts.join("; ")
    ))
}

/// `HH:MM` of a Unix time, in UTC.
fn clock(at: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let seconds = at.max(0.0) as u64 % 86_400;
    format!("{:02}:{:02}", seconds / 3600, seconds / 60 % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miss(at: f64, kind: &str, reason: &str) -> Miss {
        Miss {
            at,
            kind: kind.into(),
            reason: reason.into(),
            status: "installed".into(),
            timings_ms: BTreeMap::new(),
            command: "penv-guard ensure".into(),
        }
    }

    #[test]
    fn summary_groups_recent_misses_by_reason_with_their_times() {
        let now = 1_800_000_000.0;
        let misses = [
            miss(now - 200_000.0, "deps_changed", "old"),
            miss(now - 7200.0, "stamp_changed", "site-packages changed"),
            miss(now - 3600.0, "deps_changed", "the dependency list changed"),
            miss(now - 60.0, "stamp_changed", "site-packages changed"),
        ];
        let text = summary(&misses, now).unwrap();
        assert!(
            text.starts_with("3 misses in the last 24 h: 2× site-packages changed at "),
            "{text}"
        );
        assert!(
            text.contains("; 1× the dependency list changed at "),
            "{text}"
        );
        assert_eq!(summary(&misses[..1], now), None);
        assert_eq!(clock(3_723.0), "01:02");
    }

    #[test]
    fn the_history_keeps_the_last_fifty_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let penv = Penv {
            root: dir.path().to_path_buf(),
        };
        std::fs::write(dir.path().join(HISTORY_FILE), "not json\n").unwrap();
        for i in 0..60 {
            append(
                &penv,
                &miss(f64::from(i), "no_state", "no state recorded yet"),
            );
        }
        let misses = load(&penv);
        assert_eq!(misses.len(), 50);
        assert!((misses[0].at - 10.0).abs() < f64::EPSILON);
        assert!((misses[49].at - 59.0).abs() < f64::EPSILON);
    }
}
