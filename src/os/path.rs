//! Paths as penv-guard resolves, shows and records them, the same on every OS.
//!
//! Invariants:
//! - [`canonical`] resolves symlinks (and on Windows 8.3 names and case) and gives the path
//!   without Windows' verbatim `\\?\` prefix wherever the plain form means the same (dunce): the
//!   prefix never reaches a message, a key or a report where it is not needed.
//! - [`text`] is lossless and injective: a path that is valid Unicode is written exactly as the
//!   OS spells it (no backslash doubled, UNC `\\server\share` and verbatim `\\?\` paths kept);
//!   any other path is written as `\0` and an escaped form (a backslash as `\\`, a byte that is
//!   not UTF-8 as `\xNN` on Unix, an unpaired surrogate as `\u{d800}` on Windows). A path never
//!   holds a NUL, so the two forms never meet.

use std::io;
use std::path::{Path, PathBuf};

/// A path to the running binary's file: on Linux `/proc/self/exe`, which names it even after it
/// was replaced on disk; elsewhere what the OS says it was started from.
pub fn running_binary() -> Option<PathBuf> {
    if cfg!(target_os = "linux") {
        Some(PathBuf::from("/proc/self/exe"))
    } else {
        std::env::current_exe().ok()
    }
}

/// `path` with every symlink resolved, without `\\?\` where it is not needed.
pub fn canonical(path: &Path) -> io::Result<PathBuf> {
    dunce::canonicalize(path)
}

/// `path` without `\\?\` where the plain form means the same (unchanged elsewhere).
pub fn simplified(path: &Path) -> &Path {
    dunce::simplified(path)
}

/// `path` for a message: [`simplified`], lossy only where it is not Unicode.
pub fn display(path: &Path) -> std::path::Display<'_> {
    simplified(path).display()
}

/// The lossless text of `path` (see the module's invariants).
pub fn text(path: &Path) -> String {
    if let Some(text) = path.to_str() {
        return text.to_owned();
    }
    let mut out = String::from("\0");
    escape(path, &mut out);
    out
}

fn push_char(out: &mut String, c: char) {
    if c == '\\' {
        out.push_str("\\\\");
    } else {
        out.push(c);
    }
}

#[cfg(unix)]
fn escape(path: &Path, out: &mut String) {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        chunk.valid().chars().for_each(|c| push_char(out, c));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

#[cfg(windows)]
fn escape(path: &Path, out: &mut String) {
    use std::fmt::Write as _;
    use std::os::windows::ffi::OsStrExt as _;
    for unit in char::decode_utf16(path.as_os_str().encode_wide()) {
        match unit {
            Ok(c) => push_char(out, c),
            Err(e) => {
                let _ = write!(out, "\\u{{{:04x}}}", e.unpaired_surrogate());
            }
        }
    }
}

/// A path written in a file (`platformio.ini`) as a path: on Windows `/` is a separator too,
/// also after a verbatim `\\?\` prefix, where Windows itself would take it as part of a name.
pub fn from_text(text: &std::ffi::OsStr) -> PathBuf {
    #[cfg(windows)]
    if let Some(text) = text.to_str() {
        return PathBuf::from(text.replace('/', "\\"));
    }
    PathBuf::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_paths_are_written_as_the_os_spells_them() {
        for spelled in [
            r"C:\Users\Jürgen Ä\.platformio\penv",
            r"\\server\share\penv",
            r"\\?\C:\very\long\penv",
            "/home/j\u{fc}rgen/.platformio/penv",
            r"/odd\name",
        ] {
            assert_eq!(text(Path::new(spelled)), spelled);
        }
    }

    #[test]
    fn canonical_paths_have_no_verbatim_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("J\u{fc}rgen \u{c4}");
        std::fs::create_dir(&sub).unwrap();
        let real = canonical(&sub).unwrap();
        assert!(!text(&real).starts_with(r"\\?\"), "{}", real.display());
        assert_eq!(canonical(&real).unwrap(), real);
        assert!(real.ends_with("J\u{fc}rgen \u{c4}"));
        assert_eq!(simplified(&real), real);
    }

    #[cfg(unix)]
    #[test]
    fn non_unicode_paths_keep_distinct_text_that_no_unicode_path_has() {
        use std::os::unix::ffi::OsStrExt as _;
        let a = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/b\xff/uv"));
        let b = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/b\xfe/uv"));
        assert_eq!(text(a), "\0/tmp/b\\xff/uv");
        assert_ne!(text(a), text(b));
        assert_ne!(text(Path::new("/tmp/b\\xff/uv")), text(a));
    }

    #[cfg(windows)]
    #[test]
    fn non_unicode_paths_keep_distinct_text_that_no_unicode_path_has() {
        use std::os::windows::ffi::OsStringExt as _;
        let wide = |s: &str, unit: u16| {
            let mut units: Vec<u16> = s.encode_utf16().collect();
            units.push(unit);
            PathBuf::from(std::ffi::OsString::from_wide(&units))
        };
        let a = wide(r"C:\b", 0xd800);
        let b = wide(r"C:\b", 0xdc00);
        assert_eq!(text(&a), "\0C:\\\\b\\u{d800}");
        assert_ne!(text(&a), text(&b));
        assert_ne!(text(Path::new(r"C:\\b\u{d800}")), text(&a));
    }

    #[test]
    fn written_paths_use_either_separator() {
        let joined = Path::new(r"\\?\C:\p").join(from_text(std::ffi::OsStr::new("a/b")));
        let names: Vec<_> = joined.iter().collect();
        assert_eq!(names.last().map(|n| n.to_str()), Some(Some("b")));
    }
}
