//! The miss history: every miss that took the lock appends one record (when, why, how it ended,
//! its phase timings, the command line) to `<penv>/.penv-guard-history.jsonl`, beside the state.
//! Hits write nothing. The file keeps the last 50 records and is rewritten atomically under the
//! penv lock; a lost or corrupt history is only an empty one, never an error.
//!
//! Bounded by size as well as count: each record's text fields are cut to [`TEXT_CAP`] bytes
//! (a "deps changed" reason listing thousands of names, a long command line), and the file to
//! [`FILE_CAP`] bytes (the oldest records go first). Reading skips any line longer than a record
//! can be (a file written by an older version, or by hand) instead of giving up on the file, so
//! one huge record never costs the others. Records with an impossible time (not finite, before
//! 1970, after 9999) are ignored.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Follow};
use crate::penv::Penv;

pub const HISTORY_FILE: &str = ".penv-guard-history.jsonl";
const KEEP: usize = 50;
/// The most bytes of each text field a record keeps (cut at a character boundary, with `…`).
pub const TEXT_CAP: usize = 2048;
/// The most bytes the history file holds.
pub const FILE_CAP: usize = 128 << 10;
/// A line longer than this is not a record penv-guard wrote (its fields are capped); skipped.
const LINE_CAP: u64 = 16 << 10;
/// 9999-12-31, the last Unix time a record can carry.
const LAST_TIME: f64 = 253_402_300_799.0;

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
    let Ok(file) = fsutil::open_regular(&path, Follow::Never) else {
        return Vec::new();
    };
    let mut reader = std::io::BufReader::new(file.take(fsutil::FOREIGN_FILE_CAP));
    let mut misses = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let Ok(read) = (&mut reader).take(LINE_CAP).read_until(b'\n', &mut line) else {
            break;
        };
        if read == 0 {
            break;
        }
        if read as u64 == LINE_CAP && line.last() != Some(&b'\n') {
            // Longer than any record: skip the rest of it.
            if reader.skip_until(b'\n').is_err() {
                break;
            }
            continue;
        }
        if let Ok(miss) = serde_json::from_slice::<Miss>(&line)
            && miss.at.is_finite()
            && (0.0..=LAST_TIME).contains(&miss.at)
        {
            misses.push(miss.capped());
        }
    }
    misses
}

impl Miss {
    /// This record with each text field cut to [`TEXT_CAP`] bytes.
    fn capped(mut self) -> Miss {
        for text in [
            &mut self.kind,
            &mut self.reason,
            &mut self.status,
            &mut self.command,
        ] {
            cap(text);
        }
        self
    }
}

/// `text` cut to at most [`TEXT_CAP`] bytes at a character boundary, ending in `…` when cut.
fn cap(text: &mut String) {
    if text.len() <= TEXT_CAP {
        return;
    }
    let mut end = TEXT_CAP - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

/// Appends `miss`, keeping the last 50 within [`FILE_CAP`] bytes. Best effort: the history
/// never fails a run.
pub fn append(penv: &Penv, miss: &Miss) {
    let path = penv.root.join(HISTORY_FILE);
    // Something else at the history path (a FIFO, a directory) is not penv-guard's to replace.
    if !penv.root.is_dir() || std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        return;
    }
    let mut misses = load(penv);
    misses.push(miss.clone().capped());
    // Newest first, until the count or the bytes run out; then written oldest first.
    let mut lines = Vec::new();
    let mut bytes = 0;
    for miss in misses.iter().rev().take(KEEP) {
        let Ok(mut line) = serde_json::to_string(miss) else {
            continue;
        };
        line.push('\n');
        if bytes + line.len() > FILE_CAP {
            break;
        }
        bytes += line.len();
        lines.push(line);
    }
    let text: String = lines.into_iter().rev().collect();
    let _ = fsutil::write_atomic(&path, text.as_bytes(), false);
}

/// "3 misses in the last 24 h: 2× stamp_changed (changed behind penv-guard's back: …) at 12:03
/// and 12:40 UTC, 1× deps_changed … at 09:15 UTC", or `None` when there were none.
pub fn summary(misses: &[Miss], now: f64) -> Option<String> {
    // A record from the future (a clock set back since) is not "in the last 24 h".
    let recent: Vec<&Miss> = misses
        .iter()
        .filter(|m| (0.0..86_400.0).contains(&(now - m.at)))
        .collect();
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
                crate::messages::printable(list.last().map_or("", |m| m.reason.as_str())),
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

    #[test]
    fn records_are_capped_and_the_file_stays_under_its_byte_cap() {
        let dir = tempfile::tempdir().unwrap();
        let penv = Penv {
            root: dir.path().to_path_buf(),
        };
        for i in 0..60 {
            let mut big = miss(f64::from(i), "deps_changed", &"ü".repeat(100_000));
            big.command = "x".repeat(1 << 20);
            append(&penv, &big);
        }
        let text = std::fs::read_to_string(dir.path().join(HISTORY_FILE)).unwrap();
        assert!(text.len() <= FILE_CAP, "{}", text.len());
        let misses = load(&penv);
        assert!(misses.len() > 10, "{}", misses.len());
        assert!((misses.last().unwrap().at - 59.0).abs() < f64::EPSILON);
        for m in &misses {
            assert!(m.reason.len() <= TEXT_CAP && m.reason.ends_with('…'));
            assert!(m.command.len() <= TEXT_CAP && m.command.ends_with('…'));
        }
    }

    #[test]
    fn an_overlong_line_and_impossible_dates_are_skipped_not_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let penv = Penv {
            root: dir.path().to_path_buf(),
        };
        let line = |m: &Miss| serde_json::to_string(m).unwrap() + "\n";
        let mut huge = miss(2.0, "deps_changed", "");
        huge.reason = "y".repeat(5 << 20);
        let text = [
            line(&miss(1.0, "no_penv", "first")),
            line(&huge),
            line(&miss(-5.0, "no_penv", "before 1970")),
            line(&miss(1e300, "no_penv", "after 9999")),
            line(&miss(3.0, "no_penv", "third")),
        ]
        .concat();
        std::fs::write(dir.path().join(HISTORY_FILE), text).unwrap();
        let reasons: Vec<String> = load(&penv).into_iter().map(|m| m.reason).collect();
        assert_eq!(reasons, ["first", "third"]);
    }
}
