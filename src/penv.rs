//! Layout of a penv (a virtual environment made by `uv venv`) and what can be read from its files
//! without starting Python: `pyvenv.cfg`, and each distribution's `.dist-info` (`METADATA` for the
//! name and version, `RECORD` or `top_level.txt` for the importable top-level modules, `RECORD`
//! for the files that must exist).
//!
//! Invariants:
//! - penv-guard's lock and holder files live beside the penv (`<penv>.penv-guard.lock`), not in
//!   it, so deleting the penv during an install cannot delete the lock.
//! - A directory is cleared or recreated only when it is a venv (`pyvenv.cfg`) or penv-guard made
//!   it (the `.penv-guard-created` marker written into an empty directory before `uv venv`). A
//!   non-empty directory that is neither is refused: penv-guard never deletes what it did not
//!   create.
//! - Every file read here goes through `fsutil` (regular files only, non-blocking, capped).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil;

pub const STATE_FILE: &str = ".penv-guard-state.json";
pub const CREATED_MARKER: &str = ".penv-guard-created";
const LOCK_SUFFIX: &str = ".penv-guard.lock";
const HOLDER_SUFFIX: &str = ".penv-guard.holder";

/// What is at the penv path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occupant {
    Nothing,
    EmptyDir,
    /// Has `pyvenv.cfg`.
    Venv,
    /// penv-guard created it (marker present) but `uv venv` did not finish.
    OursUnfinished,
    /// A non-empty directory that is not a venv: never touched.
    Foreign,
}

#[derive(Debug, Clone)]
pub struct Penv {
    pub root: PathBuf,
}

impl Penv {
    /// `--penv`, else `$PLATFORMIO_CORE_DIR/penv`, else `~/.platformio/penv`; made absolute.
    pub fn resolve(explicit: Option<&Path>) -> Result<Penv> {
        let root = match explicit {
            Some(path) => path.to_path_buf(),
            None => core_dir()?.join("penv"),
        };
        let root = std::path::absolute(&root).map_err(|e| Error::io("resolve", &root, e))?;
        if root.to_str().is_none() {
            return Err(Error::Usage(format!(
                "--penv {} is not valid UTF-8, and uv cannot create or use a venv there",
                root.display()
            )));
        }
        if root.exists() && !root.is_dir() {
            return Err(Error::Usage(format!(
                "--penv {} is not a directory",
                root.display()
            )));
        }
        Ok(Penv { root })
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.root
            .join(if cfg!(windows) { "Scripts" } else { "bin" })
    }

    pub fn python(&self) -> PathBuf {
        self.bin_dir().join(if cfg!(windows) {
            "python.exe"
        } else {
            "python"
        })
    }

    pub fn uv(&self) -> PathBuf {
        self.bin_dir()
            .join(if cfg!(windows) { "uv.exe" } else { "uv" })
    }

    pub fn esptool(&self) -> PathBuf {
        self.bin_dir().join(if cfg!(windows) {
            "esptool.exe"
        } else {
            "esptool"
        })
    }

    pub fn pyvenv_cfg(&self) -> PathBuf {
        self.root.join("pyvenv.cfg")
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// `<parent>/<name>.penv-guard.lock`: beside the penv, so it survives the penv's deletion.
    pub fn lock_path(&self) -> PathBuf {
        self.beside(LOCK_SUFFIX)
    }

    pub fn holder_path(&self) -> PathBuf {
        self.beside(HOLDER_SUFFIX)
    }

    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self
            .root
            .file_name()
            .map_or_else(|| std::ffi::OsString::from("penv"), ToOwned::to_owned);
        name.push(suffix);
        match self.root.parent() {
            Some(parent) => parent.join(name),
            None => self.root.join(name),
        }
    }

    pub fn created_marker(&self) -> PathBuf {
        self.root.join(CREATED_MARKER)
    }

    pub fn occupant(&self) -> Occupant {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Occupant::Nothing;
        };
        let mut empty = true;
        let mut marker = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == "pyvenv.cfg" {
                return Occupant::Venv;
            }
            marker |= name == CREATED_MARKER;
            empty &= is_own_file_name(&name);
        }
        match (empty, marker) {
            (_, true) => Occupant::OursUnfinished,
            (true, false) => Occupant::EmptyDir,
            (false, false) => Occupant::Foreign,
        }
    }

    /// The path the venv was created at, from its `bin/activate` (`VIRTUAL_ENV='…'`), when that
    /// script names one: venvs are not relocatable (console scripts' shebangs name it too).
    pub fn created_at(&self) -> Option<PathBuf> {
        let text = fsutil::read_foreign_text(&self.bin_dir().join("activate"))?;
        text.lines().find_map(|line| {
            let value = line.trim().strip_prefix("VIRTUAL_ENV=")?;
            let value = value.trim_matches(|c| c == '\'' || c == '"');
            (value.starts_with('/')).then(|| PathBuf::from(value))
        })
    }

    pub fn site_packages(&self, python_version: &str) -> PathBuf {
        if cfg!(windows) {
            return self.root.join("Lib").join("site-packages");
        }
        let short = major_minor(python_version).unwrap_or(python_version);
        self.root
            .join("lib")
            .join(format!("python{short}"))
            .join("site-packages")
    }

    pub fn read_cfg(&self) -> Option<PyvenvCfg> {
        let text = fsutil::read_foreign_text(&self.pyvenv_cfg())?;
        Some(PyvenvCfg::parse(&text))
    }
}

/// penv-guard's own files inside the penv (the state, its temp files, the creation marker).
pub fn is_own_file_name(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| {
        n == STATE_FILE || n == CREATED_MARKER || n.starts_with(fsutil::TEMP_PREFIX)
    })
}

/// The PlatformIO core dir: `$PLATFORMIO_CORE_DIR`, else `~/.platformio`.
pub fn core_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PLATFORMIO_CORE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    std::env::home_dir()
        .map(|home| home.join(".platformio"))
        .ok_or_else(|| {
            Error::Usage(
                "cannot find the home directory; pass --penv or set PLATFORMIO_CORE_DIR".into(),
            )
        })
}

/// `PLATFORMIO_OFFLINE` as PlatformIO reads it: `1`, `true` or `yes` (any case).
pub fn platformio_offline() -> bool {
    std::env::var("PLATFORMIO_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

pub fn major_minor(version: &str) -> Option<&str> {
    let mut dots = version.match_indices('.');
    dots.next()?;
    Some(match dots.next() {
        Some((end, _)) => &version[..end],
        None => version,
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PyvenvCfg {
    pub home: Option<String>,
    /// `version_info` (uv) or `version` (the venv module).
    pub version: Option<String>,
}

impl PyvenvCfg {
    pub fn parse(text: &str) -> PyvenvCfg {
        let mut cfg = PyvenvCfg::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().to_owned();
            match key.trim() {
                "home" => cfg.home = Some(value),
                "version_info" => cfg.version = Some(value),
                "version" if cfg.version.is_none() => cfg.version = Some(value),
                _ => {}
            }
        }
        cfg
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The name as METADATA spells it (`PyYAML`).
    pub name: String,
    pub version: String,
    pub dist_info: PathBuf,
}

/// Installed distributions of a site-packages directory, by PEP 503-normalized name.
pub fn installed_distributions(site_packages: &Path) -> BTreeMap<String, Installed> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(site_packages) else {
        return out;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(stem) = file_name
            .to_str()
            .and_then(|n| n.strip_suffix(".dist-info"))
        else {
            continue;
        };
        let dist_info = entry.path();
        let metadata = fsutil::read_foreign_text(&dist_info.join("METADATA")).unwrap_or_default();
        let (name, version) = match parse_metadata(&metadata) {
            (Some(name), Some(version)) => (name, version),
            _ => match stem.rsplit_once('-') {
                Some((name, version)) => (name.to_owned(), version.to_owned()),
                None => continue,
            },
        };
        out.insert(
            normalize_name(&name),
            Installed {
                name,
                version,
                dist_info,
            },
        );
    }
    out
}

/// `Name` and `Version` from the header block of a METADATA file.
pub fn parse_metadata(text: &str) -> (Option<String>, Option<String>) {
    let (mut name, mut version) = (None, None);
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Name:") {
            name.get_or_insert_with(|| value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("Version:") {
            version.get_or_insert_with(|| value.trim().to_owned());
        }
    }
    (name, version)
}

/// PEP 503: lowercase, runs of `-`, `_`, `.` become one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending_dash = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            pending_dash = true;
        } else {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Importable top-level modules of a distribution: from RECORD (what was really installed), else
/// from `top_level.txt`, keeping only names that exist in site-packages as a package directory or
/// a module file. fatfs-ng's `top_level.txt` lists `wrapper`, which is not importable; rich and
/// cryptography ship no `top_level.txt` at all.
pub fn top_level_modules(dist_info: &Path) -> Vec<String> {
    let site_packages = dist_info.parent().unwrap_or(Path::new("."));
    let mut modules: Vec<String> = fsutil::read_foreign_text(&dist_info.join("RECORD"))
        .map(|text| modules_from_record(&text))
        .unwrap_or_default();
    // An editable install's RECORD lists only its finder hook; its code lives elsewhere, so
    // top_level.txt names are taken as they are.
    let editable = direct_url(dist_info).is_some_and(|d| d.editable);
    if modules.is_empty()
        && let Some(text) = fsutil::read_foreign_text(&dist_info.join("top_level.txt"))
    {
        modules = text
            .lines()
            .map(str::trim)
            .filter(|name| is_module_name(name))
            .filter(|name| editable || module_exists(site_packages, name))
            .map(str::to_owned)
            .collect();
    }
    modules.sort();
    modules.dedup();
    modules
}

/// Where an installed distribution came from (PEP 610 `direct_url.json`): a local directory when
/// the URL is `file://`, and whether it is an editable install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectUrl {
    pub dir: Option<PathBuf>,
    pub editable: bool,
}

pub fn direct_url(dist_info: &Path) -> Option<DirectUrl> {
    let text = fsutil::read_foreign_text(&dist_info.join("direct_url.json"))?;
    parse_direct_url(&text)
}

pub fn parse_direct_url(text: &str) -> Option<DirectUrl> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let url = value.get("url")?.as_str()?;
    let editable = value
        .pointer("/dir_info/editable")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let dir = pep508_rs::VerbatimUrl::parse_url(url)
        .ok()
        .filter(|u| u.scheme() == "file")
        .and_then(|u| u.to_file_path().ok());
    Some(DirectUrl { dir, editable })
}

/// A file a distribution installed, by its RECORD path (`certifi/cacert.pem`), if it exists.
pub fn recorded_file(dist_info: &Path, relative: &str) -> Option<PathBuf> {
    let record = fsutil::read_foreign_text(&dist_info.join("RECORD"))?;
    let site_packages = dist_info.parent()?;
    record
        .lines()
        .map(record_path)
        .find(|path| *path == relative)
        .map(|path| site_packages.join(path))
        .filter(|path| path.is_file())
}

/// A file a distribution's RECORD lists that is missing or has another size than recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordProblem {
    /// The distribution's name as METADATA spells it.
    pub dist: String,
    pub normalized: String,
    pub path: PathBuf,
    pub problem: String,
}

/// Checks that every file listed in the RECORD of every installed distribution exists with its
/// recorded size: stats only, no hashing. Bytecode (`.pyc`) is skipped: Python rewrites it.
pub fn record_problems(dists: &BTreeMap<String, Installed>) -> Vec<RecordProblem> {
    let mut problems = Vec::new();
    for (normalized, dist) in dists {
        let Some(site_packages) = dist.dist_info.parent() else {
            continue;
        };
        let record = dist.dist_info.join("RECORD");
        let Some(text) = fsutil::read_foreign_text(&record) else {
            problems.push(RecordProblem {
                dist: dist.name.clone(),
                normalized: normalized.clone(),
                path: record,
                problem: "RECORD is missing or unreadable".to_owned(),
            });
            continue;
        };
        for line in text.lines() {
            let relative = record_path(line);
            if relative.is_empty()
                || Path::new(relative)
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("pyc"))
            {
                continue;
            }
            let path = site_packages.join(relative);
            let expected: Option<u64> = line.rsplit(',').next().and_then(|s| s.trim().parse().ok());
            let problem = match fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing".to_owned()),
                Err(e) => Some(format!("unreadable: {e}")),
                Ok(meta) => match expected {
                    Some(size) if meta.is_file() && meta.len() != size => {
                        Some(format!("{} bytes where RECORD says {size}", meta.len()))
                    }
                    _ => None,
                },
            };
            if let Some(problem) = problem {
                problems.push(RecordProblem {
                    dist: dist.name.clone(),
                    normalized: normalized.clone(),
                    path,
                    problem,
                });
            }
        }
    }
    problems
}

/// The entry of site-packages that holds each module (`yaml`, `six.py`,
/// `_cffi_backend.cpython-311-x86_64-linux-gnu.so`), for the modules that live there.
pub fn module_entries(site_packages: &Path, modules: &[String]) -> Vec<String> {
    let names: Vec<String> = fs::read_dir(site_packages)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for module in modules {
        let exact = [module.clone(), format!("{module}.py")];
        if let Some(found) = exact.iter().find(|n| names.contains(n)) {
            out.push(found.clone());
        } else if let Some(ext) = names.iter().find(|n| {
            n.strip_prefix(module.as_str())
                .is_some_and(|rest| rest.starts_with('.') && is_extension_suffix(rest))
        }) {
            out.push(ext.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[allow(clippy::case_sensitive_file_extension_comparisons)]
fn is_extension_suffix(rest: &str) -> bool {
    rest.ends_with(".so") || rest.ends_with(".pyd")
}

// Python's module suffixes are matched case-sensitively here, as imports are on the
// case-sensitive filesystems this runs on.
#[allow(clippy::case_sensitive_file_extension_comparisons)]
pub fn modules_from_record(text: &str) -> Vec<String> {
    let mut modules = Vec::new();
    for line in text.lines() {
        let path = record_path(line);
        let mut parts = path.split('/');
        let Some(first) = parts.next() else { continue };
        let nested = parts.next().is_some();
        let candidate = if nested {
            if first.ends_with(".dist-info") || first.ends_with(".data") || first == "__pycache__" {
                continue;
            }
            first
        } else {
            match module_from_file_name(first) {
                Some(stem) => stem,
                None => continue,
            }
        };
        if is_module_name(candidate)
            && !candidate.starts_with("__editable__")
            && !matches!(candidate, "test" | "tests")
        {
            modules.push(candidate.to_owned());
        }
    }
    modules.sort();
    modules.dedup();
    modules
}

/// The path column of one RECORD line (CSV: a path with a comma is quoted).
fn record_path(line: &str) -> &str {
    if let Some(rest) = line.strip_prefix('"') {
        return rest.split('"').next().unwrap_or("");
    }
    line.split(',').next().unwrap_or("")
}

#[allow(clippy::case_sensitive_file_extension_comparisons)]
fn module_from_file_name(name: &str) -> Option<&str> {
    let is_source = name.ends_with(".py");
    let is_extension = [".so", ".pyd"].iter().any(|ext| name.ends_with(ext));
    if !(is_source || is_extension) {
        return None;
    }
    name.split('.').next()
}

#[allow(clippy::case_sensitive_file_extension_comparisons)]
fn module_exists(site_packages: &Path, name: &str) -> bool {
    if site_packages.join(name).is_dir() || site_packages.join(format!("{name}.py")).is_file() {
        return true;
    }
    fs::read_dir(site_packages).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(name).is_some_and(|rest| {
                    rest.starts_with('.') && (rest.ends_with(".so") || rest.ends_with(".pyd"))
                })
            })
        })
    })
}

pub fn is_module_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pyvenv_cfg_prefers_uvs_version_info() {
        let cfg = PyvenvCfg::parse(
            "home = /usr/bin\nimplementation = CPython\nuv = 0.13.9\nversion_info = 3.11.7\n",
        );
        assert_eq!(cfg.version.as_deref(), Some("3.11.7"));
        assert_eq!(cfg.home.as_deref(), Some("/usr/bin"));
        let cfg = PyvenvCfg::parse("version = 3.12.1\nversion_info = 3.12.1.final.0\n");
        assert_eq!(cfg.version.as_deref(), Some("3.12.1.final.0"));
    }

    #[test]
    fn record_gives_importable_top_levels_only() {
        let record = "\
fatfs/__init__.py,sha256=x,1
fatfs/wrapper.cpython-311-x86_64-linux-gnu.so,sha256=x,2
fatfs_ng-0.1.16.dist-info/METADATA,sha256=x,3
yaml/__init__.py,,
_yaml/__init__.py,,
six.py,,
_cffi_backend.cpython-311-x86_64-linux-gnu.so,,
../../../bin/esptool,,
__editable___esptool_5_6_0_finder.py,,
__editable__.esptool-5.6.0.pth,,
distutils-precedence.pth,,
foo-1.0.data/scripts/foo,,
tests/__init__.py,,
\"odd,name/__init__.py\",,
";
        assert_eq!(
            modules_from_record(record),
            vec!["_cffi_backend", "_yaml", "fatfs", "six", "yaml"]
        );
    }

    #[test]
    fn direct_url_of_an_editable_local_install() {
        let parsed = parse_direct_url(
            r#"{"url": "file:///opt/pio/packages/tool-esptoolpy%20x", "dir_info": {"editable": true}}"#,
        )
        .unwrap();
        assert!(parsed.editable);
        assert_eq!(
            parsed.dir,
            Some(PathBuf::from("/opt/pio/packages/tool-esptoolpy x"))
        );
        let remote = parse_direct_url(r#"{"url": "https://x/y.whl", "archive_info": {}}"#).unwrap();
        assert_eq!(
            remote,
            DirectUrl {
                dir: None,
                editable: false
            }
        );
        assert_eq!(parse_direct_url("{"), None);
    }

    #[test]
    fn names_normalize_per_pep_503() {
        assert_eq!(normalize_name("PyYAML"), "pyyaml");
        assert_eq!(normalize_name("littlefs_python"), "littlefs-python");
        assert_eq!(normalize_name("A.._-b"), "a-b");
    }

    #[test]
    fn major_minor_of_versions() {
        assert_eq!(major_minor("3.11.7"), Some("3.11"));
        assert_eq!(major_minor("3.12"), Some("3.12"));
        assert_eq!(major_minor("3"), None);
    }

    #[test]
    fn metadata_header_ends_at_blank_line() {
        let (name, version) =
            parse_metadata("Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0.3\n\nName: body\n");
        assert_eq!(name.as_deref(), Some("PyYAML"));
        assert_eq!(version.as_deref(), Some("6.0.3"));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,300}") {
            let _ = PyvenvCfg::parse(&text);
            let _ = parse_metadata(&text);
            let _ = parse_direct_url(&text);
            for module in modules_from_record(&text) {
                prop_assert!(is_module_name(&module));
            }
        }
    }
}
