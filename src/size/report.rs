//! What `size` prints: the typed JSON report ([`SizeReport`], [`EnvReport`]) and the human table.
//!
//! `size --json` prints one line, a document of this shape (the field order is the structs'):
//! ```text
//! { "project_dir": str, "ini": str|null, "build_dir": str,
//!   "build_dir_source": "env" (PLATFORMIO_BUILD_DIR) | "ini" ([platformio] build_dir) | "default",
//!   "workspace_dir": str, "cache_path": str, "cache_written": bool,
//!   "envs": [ { "name": str, "layout": "platformio"|"esphome", "path": str, "exists": bool,
//!               "apparent_bytes": u64, "allocated_bytes": u64, "files": u64, "dirs": u64,
//!               "skipped": u64, "vanished": u64, "errors": u64, "partial": bool, "racy": bool,
//!               "changed_during_walk": bool, "walked": bool (walked by this call),
//!               "state": "fresh" (cache hit) | "walked" | "partial" | "missing",
//!               "walked_at": unix seconds (f64) | null, "age_seconds": f64 | null } ],
//!   "orphans": [ { "name": str, "path": str } ],
//!   "total_apparent_bytes": u64, "total_allocated_bytes": u64 }
//! ```
//! `dirs` includes the env directory itself. The totals cover the listed envs, with hard links
//! shared between envs counted once. Paths are printed lossily (non-UTF-8 bytes as U+FFFD).
//!
//! From the cache alone (`size::cached_reports`, `size::cached_entry`) the shape is the same,
//! `walked` is always false and `cache_written` false. There, `state` is `fresh` (the key still
//! matches), `stale` (the next `size` walks), `missing`, or `unsized` (never sized: the sizes
//! are null).

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::cache::Entry;
use super::key::display_encoded;
use super::project::{EnvSpec, Layout, Orphan, Project, Source};
use crate::messages::{human_age, human_bytes};

/// An env's state in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvState {
    /// The cached size is still right (its key matches).
    Fresh,
    /// Walked by this call.
    Walked,
    /// Walked by this call, but something vanished or was unreadable.
    Partial,
    /// No env directory.
    Missing,
    /// Cached, but the key moved: the next `size` walks.
    Stale,
    /// Exists but was never sized.
    Unsized,
}

impl EnvState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvState::Fresh => "fresh",
            EnvState::Walked => "walked",
            EnvState::Partial => "partial",
            EnvState::Missing => "missing",
            EnvState::Stale => "stale",
            EnvState::Unsized => "unsized",
        }
    }
}

/// One env's line: its spec, what is known about its size, and how that was learned.
#[derive(Debug)]
pub struct Row {
    pub env: EnvSpec,
    pub entry: Option<Entry>,
    pub state: EnvState,
    pub walked: bool,
}

/// One env in `size --json` (see the module doc). Sizes are `None` (null) when `unsized`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvReport {
    pub name: String,
    pub layout: Layout,
    pub path: String,
    pub exists: bool,
    pub apparent_bytes: Option<u64>,
    pub allocated_bytes: Option<u64>,
    pub files: Option<u64>,
    pub dirs: Option<u64>,
    pub skipped: Option<u64>,
    pub vanished: Option<u64>,
    pub errors: Option<u64>,
    pub partial: bool,
    pub racy: bool,
    pub changed_during_walk: bool,
    pub walked: bool,
    pub state: EnvState,
    pub walked_at: Option<f64>,
    pub age_seconds: Option<f64>,
    /// `walked_at` in ns, for [`EnvReport::summary`].
    #[serde(skip)]
    pub walked_at_ns: Option<i64>,
}

impl EnvReport {
    pub fn new(row: &Row, now_ns: i64) -> EnvReport {
        let entry = row.entry.as_ref();
        let sized = row.state != EnvState::Unsized;
        let totals = entry.map(|e| e.totals).unwrap_or_default();
        let num = |n: u64| sized.then_some(n);
        #[allow(clippy::cast_precision_loss)]
        let seconds = |ns: i64| ns as f64 / 1e9;
        let walked_at_ns = entry.filter(|_| sized).map(|e| e.walked_at_ns);
        EnvReport {
            name: row.env.name.clone(),
            layout: row.env.layout,
            path: entry.map_or_else(
                || row.env.path.to_string_lossy().into_owned(),
                |e| display_encoded(&e.path),
            ),
            exists: entry.map_or_else(|| row.env.path.is_dir(), |e| e.key.is_some()),
            apparent_bytes: num(totals.apparent),
            allocated_bytes: num(totals.allocated),
            files: num(totals.files),
            dirs: num(totals.dirs),
            skipped: num(totals.skipped),
            vanished: num(totals.vanished),
            errors: num(totals.errors),
            partial: totals.partial(),
            racy: entry.is_some_and(|e| e.racy),
            changed_during_walk: entry.is_some_and(|e| e.changed_during_walk),
            walked: row.walked,
            state: row.state,
            walked_at: walked_at_ns.map(seconds),
            age_seconds: walked_at_ns.map(|t| seconds(now_ns.saturating_sub(t)).max(0.0)),
            walked_at_ns,
        }
    }

    /// One line for `ensure`, e.g. `build size of env esp32dev: 12.3 MiB (cached 5 min ago)`,
    /// or `... : not built (checked 5 min ago)` when the env dir was missing.
    pub fn summary(&self, now_ns: i64) -> String {
        summary_line(
            &self.name,
            self.exists,
            self.partial,
            self.apparent_bytes.unwrap_or(0),
            self.walked_at_ns.unwrap_or(now_ns),
            now_ns,
        )
    }
}

fn summary_line(
    name: &str,
    exists: bool,
    partial: bool,
    apparent: u64,
    walked_at_ns: i64,
    now_ns: i64,
) -> String {
    let age = human_age(now_ns.saturating_sub(walked_at_ns));
    if !exists {
        return format!("build size of env {name}: not built (checked {age})");
    }
    let partial = if partial { "partial, " } else { "" };
    format!(
        "build size of env {name}: {} ({partial}cached {age})",
        human_bytes(apparent)
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrphanReport {
    pub name: String,
    pub path: String,
}

/// The whole `size --json` document (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeReport {
    pub project_dir: String,
    pub ini: Option<String>,
    pub build_dir: String,
    pub build_dir_source: Source,
    pub workspace_dir: String,
    pub cache_path: String,
    pub cache_written: bool,
    pub envs: Vec<EnvReport>,
    pub orphans: Vec<OrphanReport>,
    pub total_apparent_bytes: u64,
    pub total_allocated_bytes: u64,
}

impl SizeReport {
    pub fn new(
        project: &Project,
        rows: &[Row],
        orphans: &[Orphan],
        cache_written: bool,
        now_ns: i64,
    ) -> SizeReport {
        let (total_apparent_bytes, total_allocated_bytes) = project_totals(rows);
        let lossy = |p: &Path| p.to_string_lossy().into_owned();
        SizeReport {
            project_dir: lossy(&project.dir),
            ini: project.ini_path.as_deref().map(lossy),
            build_dir: lossy(&project.build_dir),
            build_dir_source: project.build_dir_source,
            workspace_dir: lossy(&project.workspace_dir),
            cache_path: lossy(&project.cache_path),
            cache_written,
            envs: rows.iter().map(|r| EnvReport::new(r, now_ns)).collect(),
            orphans: orphans
                .iter()
                .map(|o| OrphanReport {
                    name: o.name.clone(),
                    path: lossy(&o.path),
                })
                .collect(),
            total_apparent_bytes,
            total_allocated_bytes,
        }
    }
}

/// Σ over the rows, with hard-linked inodes shared between envs counted once. (A `BTreeSet`:
/// a `HashSet` would seed its hasher from `getrandom` on the cached path.)
fn project_totals(rows: &[Row]) -> (u64, u64) {
    let mut apparent = 0u64;
    let mut allocated = 0u64;
    let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
    for entry in rows.iter().filter_map(|r| r.entry.as_ref()) {
        apparent += entry.totals.apparent;
        allocated += entry.totals.allocated;
        for link in &entry.links {
            if !seen.insert((link.0, link.1)) {
                apparent = apparent.saturating_sub(link.2);
                allocated = allocated.saturating_sub(link.3);
            }
        }
    }
    (apparent, allocated)
}

/// The human table, in one piece: a line per env, a total line, and the orphans if any.
pub fn table(project: &Project, rows: &[Row], orphans: &[Orphan]) -> String {
    use std::fmt::Write as _;
    let shown = |p: &Path| {
        p.strip_prefix(&project.dir)
            .map_or_else(|_| p.display().to_string(), |r| r.display().to_string())
    };
    let mut lines = vec![[
        "ENV".to_owned(),
        "PATH".to_owned(),
        "APPARENT".to_owned(),
        "ALLOCATED".to_owned(),
        "FILES".to_owned(),
        "STATE".to_owned(),
    ]];
    for row in rows {
        let t = row.entry.as_ref().map(|e| e.totals).unwrap_or_default();
        let mut state = row.state.as_str().to_owned();
        if row
            .entry
            .as_ref()
            .is_some_and(|e| e.racy && e.key.is_some())
        {
            state.push_str(" (racy)");
        }
        lines.push([
            row.env.name.clone(),
            shown(&row.env.path),
            human_bytes(t.apparent),
            human_bytes(t.allocated),
            t.files.to_string(),
            state,
        ]);
    }
    let (apparent, allocated) = project_totals(rows);
    lines.push([
        "total".to_owned(),
        String::new(),
        human_bytes(apparent),
        human_bytes(allocated),
        String::new(),
        String::new(),
    ]);
    let mut widths = [0usize; 6];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let text = format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {}",
            line[0],
            line[1],
            line[2],
            line[3],
            line[4],
            line[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
        out.push_str(text.trim_end());
        out.push('\n');
    }
    if !orphans.is_empty() {
        let names: Vec<&str> = orphans.iter().map(|o| o.name.as_str()).collect();
        let _ = writeln!(
            out,
            "orphans in {} (no [env:NAME] in platformio.ini): {}",
            shown(&project.build_dir),
            names.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::walk::{Link, WalkTotals};
    use std::path::PathBuf;

    fn row(apparent: u64, links: Vec<Link>) -> Row {
        Row {
            env: EnvSpec {
                name: "x".into(),
                layout: Layout::Platformio,
                path: PathBuf::new(),
            },
            entry: Some(Entry {
                totals: WalkTotals {
                    apparent,
                    allocated: apparent,
                    ..WalkTotals::default()
                },
                linked: links.len() as u64,
                links,
                ..Entry::cleared(String::new(), 0)
            }),
            state: EnvState::Fresh,
            walked: false,
        }
    }

    #[test]
    fn project_total_counts_shared_links_once() {
        let rows = [
            row(1500, vec![Link(1, 7, 1000, 1000)]),
            row(1200, vec![Link(1, 7, 1000, 1000)]),
        ];
        assert_eq!(project_totals(&rows), (1700, 1700));
    }

    #[test]
    fn an_unsized_env_reports_null_sizes_and_a_sized_one_numbers() {
        let mut r = row(1500, Vec::new());
        let json = serde_json::to_value(EnvReport::new(&r, 2_000_000_000)).unwrap();
        assert_eq!(json["apparent_bytes"], 1500);
        assert_eq!(json["state"], "fresh");
        assert_eq!(json["layout"], "platformio");
        assert_eq!(json["age_seconds"], 2.0);
        assert!(json.get("walked_at_ns").is_none(), "internal only");
        r.state = EnvState::Unsized;
        let json = serde_json::to_value(EnvReport::new(&r, 0)).unwrap();
        assert_eq!(json["apparent_bytes"], serde_json::Value::Null);
        assert_eq!(json["walked_at"], serde_json::Value::Null);
    }
}
