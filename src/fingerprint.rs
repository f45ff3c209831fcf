//! `fingerprint`: the CI cache key. Its inputs are the canonical dependency list, the penv's
//! Python version and real interpreter, the penv's real path, the `--esptool-dir`, OS and
//! architecture: the same on every fresh machine with the same list, Python and OS (and the same
//! core dir path). Nothing machine-local enters it: not uv, not an inode, not a time.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::cli::FingerprintArgs;
use crate::error::{Error, Result};
use crate::messages;
use crate::os;
use crate::state::{self, FingerprintInput, path_text};
use crate::uv;
use crate::verdict::Context;

#[derive(Serialize)]
struct FingerprintReport<'a> {
    fingerprint: &'a str,
    input: &'a FingerprintInput,
    penv_exists: bool,
}

pub fn run(args: &FingerprintArgs) -> Result<()> {
    let ctx = Context::resolve(&args.penv, &args.deps)?;
    ctx.deps()?;
    let version = ctx.penv.read_cfg().and_then(|cfg| cfg.version);
    let penv_exists = version.is_some();
    let input = if penv_exists {
        input(&ctx, version, None)?
    } else {
        // What the penv would be: created from the host Python.
        let python = ctx.host_python().ok_or_else(|| Error::PythonNotFound {
            python: ctx
                .explicit_python
                .clone()
                .unwrap_or_else(|| "python3".into()),
            message: "not found on PATH; pass --python".into(),
        })?;
        let (version, real) = uv::query_python(&python, Duration::from_secs(30))?;
        input(&ctx, Some(version), Some(&real))?
    };
    let fingerprint = input.hash();
    if args.json {
        let report = FingerprintReport {
            fingerprint: &fingerprint,
            input: &input,
            penv_exists,
        };
        messages::println(&messages::json(&report, true));
    } else {
        messages::println(&fingerprint);
    }
    Ok(())
}

/// The fingerprint's inputs for this request and penv. `python` overrides what the penv says
/// (the version and real interpreter of the host Python that would create it).
pub fn input(
    ctx: &Context,
    python_version: Option<String>,
    interpreter: Option<&Path>,
) -> Result<FingerprintInput> {
    // Both sides resolved the same way, so the key printed before an install (from the host
    // Python's base executable) equals the one recorded after it (from the penv).
    let interpreter = match interpreter {
        Some(path) => Some(os::path::canonical(path).unwrap_or_else(|_| path.to_path_buf())),
        None => ctx.penv.base_interpreter(),
    };
    Ok(FingerprintInput {
        schema: state::FINGERPRINT_SCHEMA,
        deps: ctx.deps()?.canonical_lines(),
        python_version,
        interpreter: interpreter.as_deref().map(path_text),
        penv: ctx.penv_real_text(),
        esptool_dir: ctx
            .esptool_dir
            .as_deref()
            .map(|d| path_text(&os::path::canonical(d).unwrap_or_else(|_| d.to_path_buf()))),
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
    })
}
