//! The dependency list as given (`--dep`, `--deps-json`, `-r`, or the embedded default), read
//! once and digested, so that a hit compares the digest instead of parsing the list
//! ([`DepInput::digest`]); [`DepInput::parse`] makes the [`DepSet`].
//!
//! Invariant: equal digests mean the same bytes parsed by the same binary, hence the same list.
//! Lists whose meaning depends on more than their bytes get no digest where it is recorded: `-r`
//! files (their includes) here, lists with a URL (`${VAR}`, relative paths) in `verdict`.

use std::io::Read as _;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use crate::cli::DepArgs;
use crate::error::{Error, Result};
use crate::requirements::{
    DEFAULT_DEPS_JSON, DepSet, USER_FILE_CAP, missing_as_not_found, parse_deps_json,
    parse_requirement, parse_requirements_file,
};
use crate::stamp::Stamp;

/// The dependency list as given, read but not yet parsed. `--deps-json` (a file, or stdin,
/// which can be read only once) is read here; requirements files are read by [`DepInput::parse`],
/// which follows their `-r` includes.
#[derive(Debug, Clone)]
pub struct DepInput {
    requirement_files: Vec<PathBuf>,
    dep: Vec<String>,
    /// The text and where it came from.
    deps_json: Option<(String, String)>,
}

impl DepInput {
    pub fn read(args: &DepArgs) -> Result<DepInput> {
        let deps_json = match &args.deps_json {
            Some(path) if path.as_os_str() == "-" => {
                let mut text = String::new();
                std::io::stdin()
                    .take(USER_FILE_CAP + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| {
                        Error::Usage(format!("cannot read --deps-json from stdin: {e}"))
                    })?;
                if text.len() as u64 > USER_FILE_CAP {
                    return Err(Error::Usage(format!(
                        "--deps-json from stdin is larger than {USER_FILE_CAP} bytes"
                    )));
                }
                Some((text, "<stdin>".to_owned()))
            }
            Some(path) => {
                let bytes = crate::fsutil::read_user_file(path, USER_FILE_CAP).map_err(|e| {
                    Error::Usage(format!(
                        "cannot read --deps-json {}: {}",
                        path.display(),
                        missing_as_not_found(&e)
                    ))
                })?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    Error::Usage(format!("--deps-json {} is not UTF-8", path.display()))
                })?;
                Some((text, path.display().to_string()))
            }
            None => None,
        };
        Ok(DepInput {
            requirement_files: args.requirement.clone(),
            dep: args.dep.clone(),
            deps_json,
        })
    }

    /// A digest of the input as given, bound to the running binary (its inode, size and times):
    /// equal digests mean the same bytes parsed by the same build, hence equal parsed lists. So
    /// a hit compares the digest recorded in the state instead of parsing the list again. `None`
    /// with requirements files (their includes are known only by parsing), or where the running
    /// binary cannot be stat'ed.
    pub fn digest(&self) -> Option<String> {
        if !self.requirement_files.is_empty() {
            return None;
        }
        let binary = own_binary()?;
        let mut hasher = Sha256::new();
        let mut field = |tag: u8, bytes: &[u8]| {
            hasher.update([tag]);
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(b'v', env!("CARGO_PKG_VERSION").as_bytes());
        field(b'b', &binary.ino.to_le_bytes());
        field(b'b', &binary.size.to_le_bytes());
        field(b'b', &binary.mtime_ns.to_le_bytes());
        field(b'b', &binary.ctime_ns.to_le_bytes());
        for dep in &self.dep {
            field(b'd', dep.as_bytes());
        }
        match &self.deps_json {
            Some((text, _)) => field(b'j', text.as_bytes()),
            None if self.dep.is_empty() => field(b'e', DEFAULT_DEPS_JSON.as_bytes()),
            None => {}
        }
        Some(hex::encode(hasher.finalize()))
    }

    pub fn parse(&self) -> Result<DepSet> {
        let mut deps = Vec::new();
        let mut sources = Vec::new();
        for file in &self.requirement_files {
            parse_requirements_file(file, &mut deps, 0)?;
            sources.push(file.display().to_string());
        }
        for (index, text) in self.dep.iter().enumerate() {
            deps.push(parse_requirement(text, &format!("--dep #{}", index + 1))?);
        }
        if !self.dep.is_empty() {
            sources.push("--dep".to_owned());
        }
        if let Some((text, origin)) = &self.deps_json {
            deps.extend(parse_deps_json(text, origin)?);
            sources.push(origin.clone());
        }
        if sources.is_empty() {
            let deps = parse_deps_json(DEFAULT_DEPS_JSON, "embedded default")?;
            return DepSet::new(deps, "embedded ESP32 default".to_owned());
        }
        let source = sources.join(", ");
        if deps.is_empty() {
            return Err(Error::Usage(format!("no dependencies given in {source}")));
        }
        DepSet::new(deps, source)
    }
}

/// The stamp of the running binary.
fn own_binary() -> Option<Stamp> {
    Stamp::of(&crate::os::path::running_binary()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(dep: &[&str], requirement: &[&str]) -> DepInput {
        DepInput::read(&DepArgs {
            dep: dep.iter().map(|d| (*d).to_owned()).collect(),
            requirement: requirement.iter().map(PathBuf::from).collect(),
            ..DepArgs::default()
        })
        .unwrap()
    }

    #[test]
    fn the_input_digest_changes_with_every_byte_and_is_absent_for_requirements_files() {
        let digest = |dep: &[&str]| input(dep, &[]).digest().unwrap();
        assert_eq!(digest(&["a>=1", "b"]), digest(&["a>=1", "b"]));
        assert_ne!(digest(&["a>=1", "b"]), digest(&["a>=2", "b"]));
        // Another order or spelling is another digest (the parsed lists are then compared).
        assert_ne!(digest(&["a>=1", "b"]), digest(&["b", "a>=1"]));
        assert_ne!(
            digest(&["ab"]),
            digest(&["a", "b"]),
            "fields are length-framed"
        );
        assert_ne!(
            digest(&[]),
            digest(&["a"]),
            "the embedded default is an input too"
        );
        assert_eq!(input(&["a"], &["reqs.txt"]).digest(), None);
    }
}
