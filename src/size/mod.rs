//! `penv-guard size`: the size of each PlatformIO environment's build directory
//! (`<build_dir>/<env>`), walked only when a cheap freshness key says it may have changed, and
//! the public API other commands use to show cached sizes.
//!
//! One concern per module:
//! - `walk.rs`: the parallel walk and what it counts (apparent, allocated as `du -s`, hard links
//!   once, symlinks never followed below the root).
//! - `key.rs`: the freshness key, the racy rule and the walk-or-hit decision ([`refresh`]).
//! - `cache.rs`: `build-size.json` (read, parse, store) and its lock.
//! - `project.rs`: the build dir, workspace dir, environments (ESPHome layouts included) and the
//!   cache location.
//! - `ini.rs`: the `platformio.ini` reader.
//! - `report.rs`: the typed JSON report and the human table.
//!
//! The invariants, in short (each module's doc has the detail):
//! - The key is compared with `==` only; a racy, partial, or changed-during-walk result is stored
//!   but never served as fresh; a missing env dir is never walked.
//! - The cache lives outside the build dir and is never written inside an env dir, so
//!   penv-guard's own writes never change a key.
//! - Bookkeeping never blocks and never fails the command: a busy lock, an unwritable or foreign
//!   cache path only means the sizes are not stored.
//! - **The cached path is one read of the cache, plus, per env, one `realpath`, one `stat`, one
//!   `read_dir` and one `lstat` per direct child** (and the listings that name the envs and
//!   orphans). It takes no lock, spawns no thread, writes nothing, and sweeps nothing: the
//!   cache is written only when an entry changed, was unusable, or belongs to a removed env.

mod cache;
mod ini;
mod key;
mod project;
mod report;
mod walk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cli::SizeArgs;
use crate::error::Result;
use crate::fsutil;

pub use cache::{CACHE_SCHEMA, Entry};
pub use key::{EnvKey, capture_key, is_fresh, refresh, refresh_with};
pub use project::{EnvSpec, Layout, Project};
pub use report::{EnvReport, EnvState, SizeReport};
pub use walk::{WalkTotals, Walked, walk, walk_tree};

use report::Row;

/// `penv-guard size`.
pub fn run(args: &SizeArgs) -> Result<()> {
    let project = Project::open(&args.project_dir)?;
    let all = project.envs();
    let selected = project.select(&all, &args.env)?;
    let orphans = project.orphans(&all);
    let loaded = cache::load(&project.cache_path);
    let dirty = loaded.dirty();
    let cached = loaded.into_entries();
    let mut updates = BTreeMap::new();
    let mut rows = Vec::with_capacity(selected.len());
    for env in selected {
        let old = cached.get(&env.name);
        let row = match refresh(&env.path, old, args.refresh) {
            Some(entry) => {
                updates.insert(env.name.clone(), entry.clone());
                let state = match &entry.key {
                    None => EnvState::Missing,
                    Some(_) if entry.partial() => EnvState::Partial,
                    Some(_) => EnvState::Walked,
                };
                Row {
                    walked: entry.key.is_some(),
                    entry: Some(entry),
                    env,
                    state,
                }
            }
            None => Row {
                state: if old.is_some_and(|e| e.key.is_some()) {
                    EnvState::Fresh
                } else {
                    EnvState::Missing
                },
                entry: old.cloned(),
                walked: false,
                env,
            },
        };
        rows.push(row);
    }
    attach_links(&project.cache_path, &mut rows);
    let pruned = cached
        .keys()
        .any(|name| !all.iter().any(|e| &e.name == name));
    // Nothing changed: nothing is written (a foreign file at the cache path makes every env a
    // miss, so the store below says why it was not replaced).
    let cache_written = if updates.is_empty() && !dirty && !pruned {
        false
    } else {
        let known: Vec<String> = all.iter().map(|e| e.name.clone()).collect();
        let dirs: Vec<PathBuf> = all.iter().map(|e| e.path.clone()).collect();
        match cache::store(&project.cache_path, &dirs, &known, &updates) {
            Ok(written) => written,
            Err(why) => {
                crate::messages::say(format_args!("note: build sizes not cached ({why})"));
                false
            }
        }
    };
    if args.json {
        let report = SizeReport::new(&project, &rows, &orphans, cache_written, fsutil::now_ns());
        crate::messages::println(&crate::messages::json(&report, false));
    } else {
        crate::messages::print(&report::table(&project, &rows, &orphans));
    }
    Ok(())
}

/// The hard links of the rows' cached entries, where the project total needs them.
fn attach_links(cache_path: &Path, rows: &mut [Row]) {
    cache::attach_links(
        cache_path,
        rows.iter_mut()
            .filter_map(|Row { env, entry, .. }| Some((env.name.as_str(), entry.as_mut()?))),
    );
}

/// The row of a cached entry, its state from one key capture: `fresh` (the key still matches),
/// `stale`, `missing`, or `unsized` (no entry).
fn cached_row(env: EnvSpec, entry: Option<Entry>) -> Row {
    let state = match &entry {
        None if env.path.exists() => EnvState::Unsized,
        None => EnvState::Missing,
        Some(e) if !is_fresh(&env.path, e) => EnvState::Stale,
        Some(e) if e.key.is_none() => EnvState::Missing,
        Some(_) => EnvState::Fresh,
    };
    Row {
        env,
        entry,
        state,
        walked: false,
    }
}

/// The project's env `env` and its cache entry, if any, from the cache alone (no key capture).
/// Unknown envs and unresolvable projects are usage errors, as for `size --env NAME`.
fn cached_env(project_dir: &Path, env: &str) -> Result<(EnvSpec, Option<Entry>)> {
    let project = Project::open(project_dir)?;
    let spec = project
        .select(&project.envs(), &[env.to_owned()])?
        .swap_remove(0);
    let mut entries = cache::load(&project.cache_path).into_entries();
    Ok((spec, entries.remove(env)))
}

/// `env`'s cached size, from the cache alone (no walk; one key capture of that env says whether
/// the entry is still `fresh` or `stale`). `Ok(None)` when the cache has no entry for it (never
/// sized). A project dir that cannot be resolved, and an env the project does not have, are
/// usage errors (exit 2) naming it, with the known envs, exactly as `size --env NAME` reports them.
pub fn cached_entry(project_dir: &Path, env: &str) -> Result<Option<EnvReport>> {
    let (spec, entry) = cached_env(project_dir, env)?;
    Ok(entry.map(|entry| EnvReport::new(&cached_row(spec, Some(entry)), fsutil::now_ns())))
}

/// The project's build sizes as `size --json` reports them, but from the cache alone (no walk;
/// one key capture per env says whether each entry is still `fresh`). `None` when the project
/// cannot be resolved.
pub fn cached_reports(project_dir: &Path) -> Option<SizeReport> {
    let project = Project::open(project_dir).ok()?;
    let envs = project.envs();
    let orphans = project.orphans(&envs);
    let mut entries = cache::load(&project.cache_path).into_entries();
    let mut rows: Vec<Row> = envs
        .into_iter()
        .map(|env| {
            let entry = entries.remove(&env.name);
            cached_row(env, entry)
        })
        .collect();
    attach_links(&project.cache_path, &mut rows);
    Some(SizeReport::new(
        &project,
        &rows,
        &orphans,
        false,
        fsutil::now_ns(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use key::tests::{env_dir, set_mtime};
    use serde_json::Value;
    use std::fs;
    use std::time::{Duration, SystemTime};

    #[test]
    fn cached_entry_and_reports_read_the_cache_without_walking() {
        let (tmp, env) = env_dir();
        let project_dir = tmp.path();
        fs::write(
            project_dir.join("platformio.ini"),
            "[env:esp32dev]\n[env:other]\n",
        )
        .unwrap();
        assert_eq!(
            cached_entry(project_dir, "esp32dev").unwrap(),
            None,
            "no cache yet"
        );
        let report = serde_json::to_value(cached_reports(project_dir).unwrap()).unwrap();
        assert_eq!(report["envs"][0]["state"], "unsized");
        assert_eq!(report["envs"][0]["apparent_bytes"], Value::Null);
        assert_eq!(report["envs"][1]["state"], "missing");

        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for path in [
            env.join("src/main.o"),
            env.join("src"),
            env.join("firmware.elf"),
            env.join(".sconsign311.dblite"),
            env.clone(),
        ] {
            set_mtime(&path, hour_ago);
        }
        let args = SizeArgs {
            project_dir: project_dir.to_path_buf(),
            env: Vec::new(),
            refresh: false,
            json: true,
        };
        run(&args).unwrap();
        let summary = cached_entry(project_dir, "esp32dev")
            .unwrap()
            .unwrap()
            .summary(fsutil::now_ns());
        assert_eq!(
            summary,
            "build size of env esp32dev: 5.2 KiB (cached just now)"
        );
        assert_eq!(cached_entry(project_dir, "other").unwrap(), None);
        assert!(
            cached_entry(project_dir, "nope").is_err(),
            "an unknown env is bad input"
        );
        let report = serde_json::to_value(cached_reports(project_dir).unwrap()).unwrap();
        let first = &report["envs"][0];
        assert_eq!(first["state"], "fresh");
        assert_eq!(first["walked"], false);
        assert_eq!(first["apparent_bytes"], 5302);
        assert_eq!(report["total_apparent_bytes"], 5302);
        let entry = cached_entry(project_dir, "esp32dev").unwrap().unwrap();
        assert_eq!(
            (entry.state, entry.apparent_bytes),
            (EnvState::Fresh, Some(5302))
        );
        assert_eq!(
            entry.summary(fsutil::now_ns()),
            summary,
            "one line, two ways"
        );
        let mut same = serde_json::to_value(&entry).unwrap();
        same["age_seconds"] = first["age_seconds"].clone();
        assert_eq!(&same, first, "one shape for the entry and the report");

        fs::remove_file(env.join("firmware.elf")).unwrap();
        let report = cached_reports(project_dir).unwrap();
        assert_eq!(report.envs[0].state, EnvState::Stale);
        assert_eq!(
            report.envs[0].apparent_bytes,
            Some(5302),
            "still the cached number"
        );
        assert!(cached_entry(project_dir, "esp32dev").unwrap().is_some());
        assert!(cached_entry(&project_dir.join("gone"), "esp32dev").is_err());
        assert!(cached_reports(&project_dir.join("gone")).is_none());
    }

    #[test]
    fn cached_entry_names_the_known_envs_for_an_unknown_one() {
        let (tmp, _env) = env_dir();
        fs::write(
            tmp.path().join("platformio.ini"),
            "[env:esp32dev]\n[env:c3]\n",
        )
        .unwrap();
        let error = cached_entry(tmp.path(), "bogus").unwrap_err();
        assert_eq!(error.exit_code(), crate::error::EXIT_USAGE);
        assert!(
            error.to_string().contains("`bogus`")
                && error.to_string().contains("known: esp32dev, c3"),
            "{error}"
        );
        let error = cached_entry(&tmp.path().join("gone"), "esp32dev").unwrap_err();
        assert_eq!(error.exit_code(), crate::error::EXIT_USAGE);
    }

    #[test]
    fn a_missing_env_summary_says_not_built() {
        let report = EnvReport {
            exists: false,
            walked_at_ns: Some(0),
            ..EnvReport::new(
                &cached_row(
                    EnvSpec {
                        name: "gone".into(),
                        layout: Layout::Platformio,
                        path: PathBuf::from("/nonexistent/penv-guard/env"),
                    },
                    None,
                ),
                0,
            )
        };
        assert_eq!(
            report.summary(300_000_000_000),
            "build size of env gone: not built (checked 5 min ago)"
        );
    }
}
