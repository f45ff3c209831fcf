//! The `platformio.ini` reader: just enough of Python's configparser to find the `[env:NAME]`
//! sections and the `[platformio]` directory options.
//!
//! - Sections, `key = value` (or `key: value`), full-line (`;`, `#`) and inline (`  ;`, `  #`)
//!   comments, and indented continuation lines. Keys are lowercased; a repeated key or section
//!   overrides the earlier one (PlatformIO's `strict=False`). A UTF-8 BOM is ignored, and bytes
//!   that are not UTF-8 are read lossily. Parsing never fails.
//! - The file is the user's, so a symlink to it is followed, but it is read through
//!   [`fsutil::read_capped`]: a FIFO, device or directory named `platformio.ini` is refused before
//!   any read (never a hang), and so is a file over [`fsutil::FOREIGN_FILE_CAP`]. Either is a
//!   usage error (exit 2) naming the file.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::{self, Follow, ReadError};

#[derive(Debug, Default, Clone)]
pub struct Ini {
    sections: Vec<(String, Vec<(String, String)>)>,
}

/// Reads and parses `path`: `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> Result<Option<Ini>> {
    match fsutil::read_capped(path, fsutil::FOREIGN_FILE_CAP, Follow::Symlinks) {
        Ok(bytes) => Ok(Some(Ini::parse(&String::from_utf8_lossy(&bytes)))),
        Err(ReadError::Missing) => Ok(None),
        Err(ReadError::Io(e)) => Err(Error::io("read", path, e)),
        Err(why) => Err(Error::Usage(format!(
            "cannot read {}: {why}",
            path.display()
        ))),
    }
}

impl Ini {
    pub fn parse(text: &str) -> Ini {
        let mut ini = Ini::default();
        let mut key_open = false;
        for raw in text.trim_start_matches('\u{feff}').lines() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            let indented = raw.starts_with([' ', '\t']);
            if indented && key_open {
                let more = strip_inline_comment(trimmed);
                if let Some((_, options)) = ini.sections.last_mut()
                    && let Some((_, value)) = options.last_mut()
                    && !more.is_empty()
                {
                    if !value.is_empty() {
                        value.push('\n');
                    }
                    value.push_str(more);
                }
                continue;
            }
            let line = strip_inline_comment(trimmed);
            if let Some(name) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                ini.sections.push((name.trim().to_owned(), Vec::new()));
                key_open = false;
                continue;
            }
            let split = line.find(['=', ':']);
            match (split, ini.sections.last_mut()) {
                (Some(at), Some((_, options))) => {
                    let key = line[..at].trim().to_lowercase();
                    let value = line[at + 1..].trim().to_owned();
                    options.push((key, value));
                    key_open = true;
                }
                _ => key_open = false,
            }
        }
        ini
    }

    /// The last value of `key` in `section`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .iter()
            .filter(|(name, _)| name == section)
            .flat_map(|(_, options)| options.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .next_back()
    }

    /// `NAME` of each `[env:NAME]`, in file order, without repeats.
    pub fn env_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (section, _) in &self.sections {
            if let Some(name) = section.strip_prefix("env:") {
                let name = name.trim();
                if !name.is_empty() && !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
        }
        names
    }
}

fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if (*b == b';' || *b == b'#') && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return value[..i].trim_end();
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_comments_and_continuations() {
        let ini = Ini::parse(
            "\u{feff}; comment\n[platformio]\nbuild_dir = out ; trailing\n# more\n\
             default_envs =\n    a\n    b\n[env:a]\nboard = x\n[env:b] ; trailing\n[env]\n[env:a]\n\
             Build_Flags: -DX=1#not-a-comment\n",
        );
        assert_eq!(ini.get("platformio", "build_dir"), Some("out"));
        assert_eq!(ini.get("platformio", "default_envs"), Some("a\nb"));
        assert_eq!(ini.get("env:a", "build_flags"), Some("-DX=1#not-a-comment"));
        assert_eq!(ini.env_names(), ["a", "b"]);
        assert_eq!(ini.get("platformio", "nothing"), None);
    }

    #[test]
    fn a_missing_ini_is_none_and_a_directory_in_its_place_is_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("platformio.ini");
        assert!(read(&path).unwrap().is_none());
        std::fs::create_dir(&path).unwrap();
        let error = read(&path).unwrap_err();
        assert_eq!(error.exit_code(), crate::error::EXIT_USAGE);
        assert!(error.to_string().contains("a directory"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_ini_text_never_panics(text in ".{0,300}") {
            let ini = Ini::parse(&text);
            let _ = ini.env_names();
        }
    }
}
