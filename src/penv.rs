//! Layout of a penv (a virtual environment made by `uv venv`): its paths, its `pyvenv.cfg`, what
//! occupies the penv path, and where penv-guard's own files live. Distributions are `distinfo`'s.
//!
//! Invariants:
//! - penv-guard's lock and holder files live beside the penv (`<penv>.penv-guard.lock`), not in
//!   it, so deleting the penv during an install cannot delete the lock. A second lock inside it
//!   (`<penv>/.penv-guard.lock`, always taken second) is what peers that share only the penv
//!   directory (a Docker volume mounted at the penv path) have in common; clearing a venv keeps it.
//! - A directory is cleared or recreated only when it is a venv (`pyvenv.cfg`) or penv-guard made
//!   it (the `.penv-guard-created` marker written into an empty directory before `uv venv`). A
//!   non-empty directory that is neither is refused: penv-guard never deletes what it did not
//!   create.
//! - Every file read here goes through `fsutil` (regular files only, non-blocking, capped).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil;

pub const STATE_FILE: &str = ".penv-guard-state.json";
pub const CREATED_MARKER: &str = ".penv-guard-created";
const LOCK_SUFFIX: &str = ".penv-guard.lock";
const HOLDER_SUFFIX: &str = ".penv-guard.holder";
/// The second lock, inside the penv: the one place a penv shared as a volume between containers
/// (or mount namespaces) has in common with every peer. Never removed by penv-guard.
pub const INNER_LOCK: &str = ".penv-guard.lock";
pub const INNER_HOLDER: &str = ".penv-guard.holder";

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
        if std::fs::metadata(&root).is_ok_and(|m| !m.is_dir()) {
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

    /// The real path of the interpreter the penv runs: `bin/python` resolved (on Unix a symlink
    /// to the base interpreter), or, where that is a copy inside the penv (Windows'
    /// `Scripts\python.exe`), the interpreter of `pyvenv.cfg`'s `home`. So it names what the host
    /// Python names as its base executable before the penv exists (see `fingerprint`).
    pub fn base_interpreter(&self) -> Option<PathBuf> {
        let python = crate::os::path::canonical(&self.python()).ok()?;
        let inside =
            crate::os::path::canonical(&self.root).is_ok_and(|root| python.starts_with(root));
        if !inside {
            return Some(python);
        }
        let home = self.read_cfg().and_then(|cfg| cfg.home);
        let base = home.and_then(|home| {
            crate::os::path::canonical(&Path::new(&home).join(python.file_name()?)).ok()
        });
        Some(base.unwrap_or(python))
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

    /// `<penv>/.penv-guard.lock`, taken after the lock beside the penv (always in that order).
    pub fn inner_lock_path(&self) -> PathBuf {
        self.root.join(INNER_LOCK)
    }

    pub fn inner_holder_path(&self) -> PathBuf {
        self.root.join(INNER_HOLDER)
    }

    /// Beside the penv's real path, so that every spelling of the penv's path (a symlinked
    /// core dir, `penv/bin/..`) names the same lock.
    fn beside(&self, suffix: &str) -> PathBuf {
        let real = fsutil::real_path(&self.root);
        let mut name = real
            .file_name()
            .map_or_else(|| std::ffi::OsString::from("penv"), ToOwned::to_owned);
        name.push(suffix);
        match real.parent() {
            Some(parent) => parent.join(name),
            None => real.join(name),
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
            // Only a regular file proves a venv: a directory or a symlink named so does not.
            if name == "pyvenv.cfg" && entry.file_type().is_ok_and(|t| t.is_file()) {
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
            // uv and Python < 3.12 write `VIRTUAL_ENV='…'`; Python 3.12+ `export VIRTUAL_ENV="…"`.
            let line = line.trim();
            let value = line
                .strip_prefix("export ")
                .unwrap_or(line)
                .strip_prefix("VIRTUAL_ENV=")?;
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
        n == STATE_FILE
            || n == CREATED_MARKER
            || n == INNER_LOCK
            || n == INNER_HOLDER
            || n == crate::history::HISTORY_FILE
            || n.starts_with(fsutil::TEMP_PREFIX)
            // What `state::invalidate` moved aside from the state path: kept, never cleared.
            || n.starts_with(".penv-guard-state.json.displaced-")
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
    fn created_at_reads_uvs_and_pythons_activate_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let penv = Penv {
            root: dir.path().to_path_buf(),
        };
        std::fs::create_dir_all(penv.bin_dir()).unwrap();
        for (line, expected) in [
            ("VIRTUAL_ENV='/old/penv'", Some("/old/penv")),
            (
                "    export VIRTUAL_ENV=\"/py312/penv\"",
                Some("/py312/penv"),
            ),
            ("VIRTUAL_ENV=$(cygpath -u \"$VIRTUAL_ENV\")", None),
        ] {
            std::fs::write(penv.bin_dir().join("activate"), format!("# x\n{line}\n")).unwrap();
            assert_eq!(
                penv.created_at().as_deref(),
                expected.map(Path::new),
                "{line}"
            );
        }
    }

    #[test]
    fn the_base_interpreter_of_a_penv_with_a_copied_python_is_the_one_in_home() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("Python 3.11");
        let penv = Penv {
            root: dir.path().join("penv"),
        };
        let name = penv.python().file_name().unwrap().to_owned();
        fs::create_dir_all(&home).unwrap();
        fs::write(home.join(&name), b"base").unwrap();
        fs::create_dir_all(penv.bin_dir()).unwrap();
        // A copy, as `uv venv` makes on Windows (`Scripts\python.exe`).
        fs::write(penv.python(), b"launcher").unwrap();
        fs::write(
            penv.pyvenv_cfg(),
            format!("home = {}\nversion_info = 3.11.7\n", home.display()),
        )
        .unwrap();
        let base = crate::os::path::canonical(&home.join(&name)).unwrap();
        assert_eq!(penv.base_interpreter(), Some(base));
    }

    // A symlinked interpreter, as `uv venv` makes on Unix (Windows needs a privilege for one).
    #[cfg(unix)]
    #[test]
    fn the_base_interpreter_of_a_penv_with_a_linked_python_is_the_link_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("python3.11");
        fs::write(&real, b"base").unwrap();
        let penv = Penv {
            root: dir.path().join("penv"),
        };
        fs::create_dir_all(penv.bin_dir()).unwrap();
        std::os::unix::fs::symlink(&real, penv.python()).unwrap();
        fs::write(penv.pyvenv_cfg(), "home = /nonexistent\n").unwrap();
        assert_eq!(
            penv.base_interpreter(),
            Some(fs::canonicalize(&real).unwrap())
        );
    }

    #[test]
    fn major_minor_of_versions() {
        assert_eq!(major_minor("3.11.7"), Some("3.11"));
        assert_eq!(major_minor("3.12"), Some("3.12"));
        assert_eq!(major_minor("3"), None);
    }

    proptest! {
        #[test]
        fn pyvenv_cfg_parser_never_panics(text in "\\PC{0,300}") {
            let _ = PyvenvCfg::parse(&text);
        }
    }
}
