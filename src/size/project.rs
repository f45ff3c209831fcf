//! The project: its build dir, workspace dir and environments, resolved as PlatformIO resolves
//! them, and where the size cache lives.
//!
//! - **Directories.** `[platformio] workspace_dir` and `build_dir`: `PLATFORMIO_<KEY>` (it
//!   overrides the ini, as in PlatformIO), else the ini, else PlatformIO's default
//!   (`${PROJECT_DIR}/.pio`, `${platformio.workspace_dir}/build`). `${PROJECT_DIR}`,
//!   `${platformio.KEY}` and `${sysenv.VAR}` are interpolated, `~` is expanded, and relative
//!   paths are taken from the project dir (PlatformIO's cwd).
//! - **Environments.** Each `[env:NAME]` of `platformio.ini`, at `<build_dir>/NAME`, in file
//!   order. Then the ESPHome layout: each `<project>/.esphome/build/<name>/` that holds
//!   `.pioenvs/<name>/` or a `platformio.ini` is an env named `<name>`, at
//!   `.esphome/build/<name>/.pioenvs/<name>`, by name; on a clash with an ini env it is named
//!   `esphome:<name>`.
//! - **Orphans.** Entries of `<build_dir>` that match no ini env, except `project.checksum` and
//!   penv-guard's own `.penv-guard` (only when there is an ini).
//! - **The cache lives outside the build dir**, at `<workspace_dir>/.penv-guard/build-size.json`:
//!   PlatformIO rmtree's `<build_dir>` after any `platformio.ini` edit, and a file inside an env
//!   dir would move the key it measures. A project with no `platformio.ini` but with an ESPHome
//!   build dir (an ESPHome config directory) keeps it in `<project>/.esphome/.penv-guard/`, unless
//!   `PLATFORMIO_WORKSPACE_DIR` is set. (`cache.rs` refuses to write it inside an env dir.)
//! - **Bad input is a usage error (exit 2) naming it:** a missing project dir, one that is not a
//!   directory, one with neither `platformio.ini` nor `.esphome/build`, an unreadable ini (see
//!   `ini.rs`), and an environment name the project does not have ([`Project::select`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ini::{self, Ini};
use crate::error::{Error, Result};

pub const CACHE_DIR: &str = ".penv-guard";
const CACHE_FILE: &str = "build-size.json";
const CHECKSUM_FILE: &str = "project.checksum";

/// Where the build dir's value came from (`build_dir_source` in the JSON report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `PLATFORMIO_BUILD_DIR` (or `PLATFORMIO_WORKSPACE_DIR` for the workspace).
    Env,
    /// `[platformio]` in `platformio.ini`.
    Ini,
    Default,
}

/// Which tool laid the env out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Platformio,
    Esphome,
}

/// A PlatformIO project's directories, resolved as PlatformIO resolves them.
#[derive(Debug)]
pub struct Project {
    pub dir: PathBuf,
    pub ini_path: Option<PathBuf>,
    pub ini: Ini,
    pub build_dir: PathBuf,
    pub build_dir_source: Source,
    pub workspace_dir: PathBuf,
    pub cache_path: PathBuf,
}

/// One environment to size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    pub name: String,
    pub layout: Layout,
    pub path: PathBuf,
}

/// An entry of the build dir that belongs to no env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub name: String,
    pub path: PathBuf,
}

impl Project {
    /// Resolves `dir`: it must exist and hold a `platformio.ini` or an ESPHome build dir.
    pub fn open(dir: &Path) -> Result<Project> {
        let dir = match crate::os::path::canonical(dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Usage(format!(
                    "project directory {} does not exist",
                    dir.display()
                )));
            }
            Err(e) => return Err(Error::io("open the project directory", dir, e)),
        };
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "project directory {} is not a directory",
                dir.display()
            )));
        }
        let ini_file = dir.join("platformio.ini");
        let (ini, ini_path) = match ini::read(&ini_file)? {
            Some(ini) => (ini, Some(ini_file)),
            None if dir.join(".esphome").join("build").is_dir() => (Ini::default(), None),
            None => {
                return Err(Error::Usage(format!(
                    "no platformio.ini in {} (and no ESPHome build directory .esphome/build)",
                    dir.display()
                )));
            }
        };
        let mut project = Project {
            dir,
            ini_path,
            ini,
            build_dir: PathBuf::new(),
            build_dir_source: Source::Default,
            workspace_dir: PathBuf::new(),
            cache_path: PathBuf::new(),
        };
        let (workspace_dir, workspace_source) = project.option_path("workspace_dir");
        let (build_dir, build_source) = project.option_path("build_dir");
        let cache_dir = if project.ini_path.is_none() && workspace_source != Source::Env {
            project.dir.join(".esphome").join(CACHE_DIR)
        } else {
            workspace_dir.join(CACHE_DIR)
        };
        project.workspace_dir = workspace_dir;
        project.build_dir = build_dir;
        project.build_dir_source = build_source;
        project.cache_path = cache_dir.join(CACHE_FILE);
        Ok(project)
    }

    /// `[platformio] KEY` before interpolation: `PLATFORMIO_<KEY>` for `*_dir` keys (it
    /// overrides the ini, as in PlatformIO), the ini, or PlatformIO's default.
    fn option_raw(&self, key: &str) -> Option<(OsString, Source)> {
        if key.ends_with("_dir") {
            let var = format!("PLATFORMIO_{}", key.to_uppercase());
            if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                return Some((value, Source::Env));
            }
        }
        if let Some(value) = self.ini.get("platformio", key).filter(|v| !v.is_empty()) {
            return Some((value.into(), Source::Ini));
        }
        match key {
            "workspace_dir" => Some(("${PROJECT_DIR}/.pio".into(), Source::Default)),
            "build_dir" => Some(("${platformio.workspace_dir}/build".into(), Source::Default)),
            _ => None,
        }
    }

    fn option_path(&self, key: &str) -> (PathBuf, Source) {
        let (raw, source) = self
            .option_raw(key)
            .expect("workspace_dir and build_dir have defaults");
        let value = self.interpolate(&raw, 0);
        (self.absolute(&crate::os::path::from_text(&value)), source)
    }

    /// `~` expanded, relative paths taken from the project dir (PlatformIO's cwd).
    fn absolute(&self, path: &Path) -> PathBuf {
        let path = match (path.strip_prefix("~"), std::env::var_os("HOME")) {
            (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
            _ => path.to_path_buf(),
        };
        self.dir.join(path)
    }

    /// Replaces `${PROJECT_DIR}`, `${platformio.KEY}` and `${sysenv.VAR}`; anything else is left
    /// as written.
    fn interpolate(&self, raw: &OsStr, depth: u32) -> OsString {
        let Some(mut rest) = raw.to_str() else {
            return raw.to_owned();
        };
        let mut out = OsString::new();
        while let Some(start) = rest.find("${") {
            out.push(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push(&rest[start..]);
                rest = "";
                break;
            };
            let name = &after[..end];
            match self.lookup(name.trim(), depth) {
                Some(value) => out.push(value),
                None => out.push(&rest[start..start + 3 + end]),
            }
            rest = &after[end + 1..];
        }
        out.push(rest);
        out
    }

    fn lookup(&self, name: &str, depth: u32) -> Option<OsString> {
        if depth > 8 {
            return None;
        }
        if name == "PROJECT_DIR" {
            return Some(self.dir.clone().into_os_string());
        }
        if let Some(key) = name.strip_prefix("platformio.") {
            let (raw, _) = self.option_raw(key)?;
            return Some(self.interpolate(&raw, depth + 1));
        }
        if let Some(var) = name.strip_prefix("sysenv.") {
            return Some(std::env::var_os(var).unwrap_or_default());
        }
        None
    }

    /// The ini's envs (file order), then ESPHome's (by name).
    pub fn envs(&self) -> Vec<EnvSpec> {
        let mut envs: Vec<EnvSpec> = self
            .ini
            .env_names()
            .into_iter()
            .map(|name| EnvSpec {
                path: self.build_dir.join(&name),
                name,
                layout: Layout::Platformio,
            })
            .collect();
        let mut esphome = Vec::new();
        if let Ok(entries) = fs::read_dir(self.dir.join(".esphome").join("build")) {
            for entry in entries.flatten() {
                let device = entry.path();
                let name = entry.file_name();
                let env_dir = device.join(".pioenvs").join(&name);
                if env_dir.is_dir() || device.join("platformio.ini").is_file() {
                    esphome.push((name.to_string_lossy().into_owned(), env_dir));
                }
            }
        }
        esphome.sort();
        for (name, path) in esphome {
            let name = if envs.iter().any(|e| e.name == name) {
                format!("esphome:{name}")
            } else {
                name
            };
            envs.push(EnvSpec {
                name,
                layout: Layout::Esphome,
                path,
            });
        }
        envs
    }

    /// The envs named in `wanted` (all of `envs` when it is empty), in `envs`' order. A name the
    /// project does not have is a usage error that lists the known ones.
    pub fn select(&self, envs: &[EnvSpec], wanted: &[String]) -> Result<Vec<EnvSpec>> {
        if let Some(name) = wanted.iter().find(|w| !envs.iter().any(|e| &e.name == *w)) {
            let known: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
            let source = self.ini_path.as_deref().unwrap_or(&self.dir).display();
            return Err(Error::Usage(format!(
                "unknown environment `{name}` in {source} (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(envs
            .iter()
            .filter(|e| wanted.is_empty() || wanted.contains(&e.name))
            .cloned()
            .collect())
    }

    /// Entries of the build dir that belong to no ini env (only when there is an ini).
    pub fn orphans(&self, envs: &[EnvSpec]) -> Vec<Orphan> {
        if self.ini_path.is_none() {
            return Vec::new();
        }
        let Ok(entries) = fs::read_dir(&self.build_dir) else {
            return Vec::new();
        };
        let mut orphans: Vec<Orphan> = entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                name != CHECKSUM_FILE
                    && name != CACHE_DIR
                    && !envs
                        .iter()
                        .any(|e| e.layout == Layout::Platformio && OsStr::new(&e.name) == name)
            })
            .map(|entry| Orphan {
                name: entry.file_name().to_string_lossy().into_owned(),
                path: entry.path(),
            })
            .collect();
        orphans.sort_by(|a, b| (&a.name, &a.path).cmp(&(&b.name, &b.path)));
        orphans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dirs_are_joined_as_paths_and_shown_without_a_verbatim_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("J\u{fc}rgen \u{c4} project");
        fs::create_dir(&dir).unwrap();
        fs::write(
            dir.join("platformio.ini"),
            "[platformio]\nlib_dir = x\n[env:a]\n",
        )
        .unwrap();
        let project = Project::open(&dir).unwrap();
        assert!(!crate::os::path::text(&project.dir).starts_with(r"\\?\"));
        let workspace = project.dir.join(".pio");
        assert_eq!(project.workspace_dir, workspace);
        assert_eq!(project.build_dir, workspace.join("build"));
        assert_eq!(
            project.cache_path,
            workspace.join(CACHE_DIR).join(CACHE_FILE)
        );
        fs::create_dir_all(project.build_dir.join("a")).unwrap();
        assert!(project.envs()[0].path.is_dir());
    }

    #[test]
    fn written_dirs_take_either_separator_also_after_a_verbatim_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("platformio.ini"),
            "[platformio]\nbuild_dir = ${PROJECT_DIR}/out/b\n[env:a]\n",
        )
        .unwrap();
        let mut project = Project::open(tmp.path()).unwrap();
        // What a path too long for the `\\?\`-free form looks like on Windows.
        if cfg!(windows) {
            project.dir = PathBuf::from(format!(r"\\?\{}", project.dir.display()));
        }
        let (build_dir, source) = project.option_path("build_dir");
        assert_eq!(source, Source::Ini);
        assert_eq!(build_dir, project.dir.join("out").join("b"));
    }

    #[test]
    fn select_names_the_known_envs_for_an_unknown_one() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("platformio.ini"), "[env:a]\n[env:b]\n").unwrap();
        let project = Project::open(tmp.path()).unwrap();
        let envs = project.envs();
        let names = |v: Vec<EnvSpec>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(project.select(&envs, &[]).unwrap()), ["a", "b"]);
        assert_eq!(
            names(project.select(&envs, &["b".to_owned()]).unwrap()),
            ["b"]
        );
        let error = project.select(&envs, &["nope".to_owned()]).unwrap_err();
        assert_eq!(error.exit_code(), crate::error::EXIT_USAGE);
        let message = error.to_string();
        assert!(message.contains("`nope`") && message.contains("(known: a, b)"));
    }
}
