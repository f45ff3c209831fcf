//! `platform status`, and the platform lines of `penv-guard status`: each platform's version, its
//! `penv_setup.py` and whether it is hooked, in words or as JSON.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::messages;

use super::platforms;

/// One line per platform for `penv-guard status`: `platform espressif32 55.03.311: hooked: …`.
/// Empty when the core dir has no pioarduino platform or cannot be read.
pub fn status_lines(core_dir: &Path) -> Vec<String> {
    platforms(core_dir)
        .unwrap_or_default()
        .iter()
        .map(|p| format!("platform espressif32 {}: {}", p.version, p.hook.detail()))
        .collect()
}

#[derive(Serialize)]
struct StatusEntry<'a> {
    dir: &'a Path,
    version: &'a str,
    file: &'a Path,
    state: &'static str,
    message: String,
    backup: bool,
}

pub(super) fn status(core_dir: &Path, json: bool) -> Result<()> {
    let found = platforms(core_dir)?;
    if json {
        let entries: Vec<StatusEntry> = found
            .iter()
            .map(|p| StatusEntry {
                dir: &p.dir,
                version: &p.version,
                file: &p.file,
                state: p.hook.name(),
                message: p.hook.detail(),
                backup: p.backup().is_file(),
            })
            .collect();
        let report = serde_json::json!({"core_dir": core_dir, "platforms": entries});
        messages::println(&messages::json(&report, false));
        return Ok(());
    }
    if found.is_empty() {
        messages::println(&format!(
            "no pioarduino espressif32 platform under {}",
            core_dir.join("platforms").display()
        ));
    }
    for p in &found {
        messages::println(&format!(
            "espressif32 {}  {}\n  {}",
            p.version,
            p.file.display(),
            p.hook.detail()
        ));
    }
    Ok(())
}
