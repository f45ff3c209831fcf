//! Proof that the penv works: every top-level module of every required distribution is imported
//! in one penv-Python subprocess (`-I`: the project directory and PYTHON* variables cannot mask a
//! module). Module names come from the dist-info RECORD (see `penv::top_level_modules`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::install::run_captured;

const MARKER: &str = "PENV-GUARD-VALIDATION:";

const SCRIPT: &str = r#"
import importlib, json, sys
failures = []
for dist, module in json.loads(sys.argv[1]):
    try:
        importlib.import_module(module)
    except BaseException as e:
        failures.append([dist, module, "%s: %s" % (type(e).__name__, e)])
sys.stdout.flush()
print("\nPENV-GUARD-VALIDATION:" + json.dumps(failures))
"#;

/// `(distribution, module)` pairs to import.
pub fn validate_imports(
    python: &Path,
    pairs: &[(String, String)],
    timeout: Duration,
) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let mut command = Command::new(python);
    command
        .args(["-I", "-c", SCRIPT])
        .arg(serde_json::to_string(pairs).expect("pairs serialize"));
    let out = run_captured(command, timeout, false).map_err(|e| Error::Validation {
        dist: "(all)".into(),
        module: "(all)".into(),
        error: format!("cannot run {}: {e}", python.display()),
    })?;
    let report = out
        .stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(MARKER));
    let failures: Vec<(String, String, String)> = match report.map(serde_json::from_str) {
        Some(Ok(failures)) => failures,
        _ => {
            return Err(Error::Validation {
                dist: "(all)".into(),
                module: "(all)".into(),
                error: format!(
                    "the validation process {}: {}",
                    out.describe_status(timeout),
                    crate::install::tail(&out.output_tail, 3).replace('\n', " | ")
                ),
            });
        }
    };
    match failures.into_iter().next() {
        None => Ok(()),
        Some((dist, module, error)) => Err(Error::Validation {
            dist,
            module,
            error: error.lines().next().unwrap_or_default().to_owned(),
        }),
    }
}
