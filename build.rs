//! Gives the binary a build identity, `PENV_GUARD_BUILD_ID`: a hash of the sources, manifest and
//! lockfile it is built from. The dependency list's input digest (src/dep_input.rs) is bound to
//! it, because a binary built from other sources may parse the same bytes differently. The
//! identity only has to differ between different sources; nobody gains by forging one (whoever
//! can change the sources controls the binary), so std's SipHash, run twice with distinct
//! prefixes for 128 bits, is enough and costs no build dependency.

use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by Cargo"));
    let mut inputs: Vec<PathBuf> = ["Cargo.toml", "Cargo.lock", "build.rs", "src", "data"]
        .iter()
        .map(|name| root.join(name))
        .filter(|path| path.exists())
        .collect();
    for input in &inputs {
        println!("cargo::rerun-if-changed={}", input.display());
    }
    let mut files = Vec::new();
    for input in inputs.drain(..) {
        collect_files(&input, &mut files);
    }
    files.sort();
    let mut halves = [DefaultHasher::new(), DefaultHasher::new()];
    for (prefix, hasher) in halves.iter_mut().enumerate() {
        hasher.write_usize(prefix);
    }
    for file in &files {
        let name = file.strip_prefix(&root).unwrap_or(file).to_string_lossy();
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for hasher in &mut halves {
            hasher.write_usize(name.len());
            hasher.write(name.as_bytes());
            hasher.write_usize(bytes.len());
            hasher.write(&bytes);
        }
    }
    let [a, b] = halves.map(|hasher| hasher.finish());
    println!("cargo::rustc-env=PENV_GUARD_BUILD_ID={a:016x}{b:016x}");
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for entry in entries {
            collect_files(&entry.expect("a directory entry").path(), files);
        }
    } else {
        files.push(path.to_path_buf());
    }
}
