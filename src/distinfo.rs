//! What can be read from a distribution's `.dist-info` without starting Python: `METADATA` for
//! the name and version, `RECORD` or `top_level.txt` for the importable top-level modules,
//! `RECORD` for the files that must exist, `direct_url.json` for where it came from. Every file is
//! read through `fsutil` (regular files only, non-blocking, capped).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::fsutil;

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

/// PEP 503 (`pep508_rs::PackageName`): lowercase, runs of `-`, `_`, `.` become one `-`. A name
/// that is not a valid distribution name (a damaged METADATA) is kept lowercased, so it can
/// never match a requirement by accident.
pub fn normalize_name(name: &str) -> String {
    let name = name.trim();
    pep508_rs::PackageName::new(name.to_owned())
        .map_or_else(|_| name.to_lowercase(), |n| n.to_string())
}

/// Importable top-level modules of a distribution: from RECORD (what was really installed), else
/// from `top_level.txt`, keeping only names that exist in site-packages as a package directory or
/// a module file. fatfs-ng's `top_level.txt` lists `wrapper`, which is not importable; rich and
/// cryptography ship no `top_level.txt` at all.
///
/// An editable install's RECORD lists only its hook (a `.pth` naming a directory, or setuptools'
/// `__editable__…_finder.py` mapping module names to paths), and hatchling, flit and uv_build
/// write no `top_level.txt`: its modules are then what `top_level.txt`, the finder's mapping and
/// the `.pth` directories give, else the top-level packages of the project directory (or its
/// `src/`). The caller falls back to the distribution's normalized name when all are empty.
pub fn top_level_modules(dist_info: &Path) -> Vec<String> {
    let site_packages = dist_info.parent().unwrap_or(Path::new("."));
    let record = fsutil::read_foreign_text(&dist_info.join("RECORD")).unwrap_or_default();
    let mut modules: Vec<String> = modules_from_record(&record);
    let direct = direct_url(dist_info);
    let editable = direct.as_ref().is_some_and(|d| d.editable);
    if modules.is_empty()
        && let Some(text) = fsutil::read_foreign_text(&dist_info.join("top_level.txt"))
    {
        // Names an editable's top_level.txt gives are taken as they are (its code lives
        // elsewhere).
        modules = text
            .lines()
            .map(str::trim)
            .filter(|name| is_module_name(name))
            .filter(|name| editable || module_exists(site_packages, name))
            .map(str::to_owned)
            .collect();
    }
    if modules.is_empty() && editable {
        let name = parse_metadata(
            &fsutil::read_foreign_text(&dist_info.join("METADATA")).unwrap_or_default(),
        )
        .0
        .unwrap_or_default();
        for path in record.lines().map(record_path) {
            if path.contains('/') {
                continue;
            }
            let Some(text) = fsutil::read_foreign_text(&site_packages.join(path)) else {
                continue;
            };
            #[allow(clippy::case_sensitive_file_extension_comparisons)]
            if path.ends_with(".pth") {
                for dir in pth_directories(&text) {
                    modules.extend(packages_in(&dir, &name));
                }
            } else if path.starts_with("__editable__") && path.ends_with("_finder.py") {
                modules.extend(finder_mapping_names(&text));
            }
        }
        if modules.is_empty()
            && let Some(dir) = direct.and_then(|d| d.dir)
        {
            modules.extend(packages_in(&dir, &name));
            modules.extend(packages_in(&dir.join("src"), &name));
        }
    }
    modules.sort();
    modules.dedup();
    modules
}

/// The directories a `.pth` file adds to `sys.path` (its lines that are not comments or
/// `import` statements).
fn pth_directories(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with('#')
                && !line.starts_with("import ")
                && !line.starts_with("import\t")
        })
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute() && dir.is_dir())
        .collect()
}

/// Importable top-level names in a directory on `sys.path`: its packages (a directory with an
/// `__init__.py`), and a module file only when it is named after the distribution (a project
/// root also holds `setup.py` and build scripts, which must not be run by an import).
fn packages_in(dir: &Path, dist_name: &str) -> Vec<String> {
    let own_module = dist_name.replace(['-', '.'], "_").to_lowercase();
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let path = entry.path();
            if path.join("__init__.py").is_file() {
                Some(name)
            } else {
                let stem = name.strip_suffix(".py")?;
                (stem.to_lowercase() == own_module && path.is_file()).then(|| stem.to_owned())
            }
        })
        .filter(|name| is_module_name(name) && !matches!(name.as_str(), "test" | "tests"))
        .collect()
}

/// The module names of setuptools' editable finder (`MAPPING: dict[str, str] = {'esptool':
/// '/src/esptool', …}`): every quoted string in the literal that is followed by `:`.
fn finder_mapping_names(text: &str) -> Vec<String> {
    let Some(start) = text.find("MAPPING") else {
        return Vec::new();
    };
    let rest = &text[start..];
    let Some(open) = rest.find('{') else {
        return Vec::new();
    };
    let body = &rest[open + 1..];
    let mut names = Vec::new();
    let mut chars = body.char_indices();
    while let Some((_, c)) = chars.next() {
        match c {
            '}' => break,
            '\'' | '"' => {
                let mut value = String::new();
                let mut escaped = false;
                for (_, c) in chars.by_ref() {
                    if escaped {
                        value.push(c);
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '\'' || c == '"' {
                        break;
                    } else {
                        value.push(c);
                    }
                }
                let after = chars.as_str().trim_start();
                if after.starts_with(':') && is_module_name(&value) {
                    names.push(value);
                }
            }
            _ => {}
        }
    }
    names
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
            && !candidate.starts_with("_editable_impl_")
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
        // A file URL names a path of this OS (a drive on Windows).
        let (url, dir) = if cfg!(windows) {
            (
                "file:///C:/pio/tool-esptoolpy%20x",
                r"C:\pio\tool-esptoolpy x",
            )
        } else {
            (
                "file:///opt/pio/tool-esptoolpy%20x",
                "/opt/pio/tool-esptoolpy x",
            )
        };
        let parsed = parse_direct_url(&format!(
            r#"{{"url": "{url}", "dir_info": {{"editable": true}}}}"#
        ))
        .unwrap();
        assert!(parsed.editable);
        assert_eq!(parsed.dir, Some(PathBuf::from(dir)));
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
    fn setuptools_finder_mapping_gives_its_module_names() {
        let finder = "import sys\nMAPPING: dict[str, str] = {'esptool': '/src/a:b/esptool', \
                      \"espefuse\": 'C:\\\\x\\\\espefuse'}\nNAMESPACES = {'ns': ['/x']}\n";
        assert_eq!(finder_mapping_names(finder), vec!["esptool", "espefuse"]);
        assert!(finder_mapping_names("nothing here").is_empty());
    }

    #[test]
    fn names_normalize_per_pep_503() {
        assert_eq!(normalize_name("PyYAML"), "pyyaml");
        assert_eq!(normalize_name("littlefs_python"), "littlefs-python");
        assert_eq!(normalize_name("A.._-b"), "a-b");
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
            let _ = parse_metadata(&text);
            let _ = parse_direct_url(&text);
            for module in modules_from_record(&text) {
                prop_assert!(is_module_name(&module));
            }
        }
    }
}
