//! Proof that the penv works: every top-level module of every required distribution is imported
//! in one penv-Python subprocess (`-I`: the project directory and PYTHON* variables cannot mask a
//! module). Module names come from the dist-info RECORD (see `penv::top_level_modules`). The same
//! interpreter reports its PEP 508 marker environment, so markers are never evaluated on guesses.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{self, Stderr};
use crate::requirements::{MARKER_KEYS, MarkerValues};

const MARKER: &str = "PENV-GUARD-VALIDATION:";

const IMPORTS: &str = r#"
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

// PEP 508's definitions, as `packaging.markers.default_environment()` computes them.
const MARKERS: &str = r#"
import json, os, platform, sys
def version(info):
    v = "%d.%d.%d" % info[:3]
    if info.releaselevel != "final":
        v += info.releaselevel[0] + str(info.serial)
    return v
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": version(sys.implementation.version),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}))
"#;

/// The penv interpreter's own marker environment.
pub fn marker_environment(python: &Path, timeout: Duration) -> Result<MarkerValues> {
    let fail = |error: String| Error::Validation {
        dist: "(marker environment)".into(),
        module: "platform".into(),
        error,
    };
    let mut command = Command::new(python);
    command.args(["-I", "-c", MARKERS]);
    let out = process::run(command, timeout, Stderr::Captured, None)
        .map_err(|e| fail(format!("cannot run {}: {e}", python.display())))?;
    let values: MarkerValues = out
        .stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .filter(|_| out.success())
        .ok_or_else(|| {
            fail(format!(
                "the interpreter {}: {}",
                out.describe_status(timeout),
                process::tail(&out.output_tail, 3).replace('\n', " | ")
            ))
        })?;
    match MARKER_KEYS.iter().find(|key| !values.contains_key(**key)) {
        Some(key) => Err(fail(format!("no `{key}` in its marker environment"))),
        None => Ok(values),
    }
}

/// `(distribution, module)` pairs to import.
pub fn validate_imports(
    python: &Path,
    pairs: &[(String, String)],
    timeout: Duration,
) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    let all = |error: String| Error::Validation {
        dist: "(all)".into(),
        module: "(all)".into(),
        error,
    };
    let mut command = Command::new(python);
    command
        .args(["-I", "-c", IMPORTS])
        .arg(serde_json::to_string(pairs).unwrap_or_default());
    let out = process::run(command, timeout, Stderr::Captured, None)
        .map_err(|e| all(format!("cannot run {}: {e}", python.display())))?;
    let report = out
        .stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(MARKER));
    let failures: Vec<(String, String, String)> = match report.map(serde_json::from_str) {
        Some(Ok(failures)) if !out.timed_out => failures,
        _ => {
            return Err(all(format!(
                "the validation process {}: {}",
                out.describe_status(timeout),
                process::tail(&out.output_tail, 3).replace('\n', " | ")
            )));
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
