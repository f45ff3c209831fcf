//! The PEP 508 marker environment: captured from the penv's own interpreter on a miss, kept in
//! the state, and used to decide which requirements apply. Markers are never evaluated with
//! guessed values.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pep508_rs::{MarkerEnvironment, MarkerEnvironmentBuilder};

use crate::error::{Error, Result};
use crate::process;

/// The PEP 508 marker environment of an interpreter, as its own `platform` and `sys` modules
/// report it (captured in the penv by [`capture`] and kept in the state).
/// Markers are never evaluated with guessed values: `platform_release`, `platform_machine`
/// (`arm64` on macOS, where Rust says `aarch64`) and the rest come from the interpreter.
pub type MarkerValues = BTreeMap<String, String>;

/// The keys [`capture`] captures.
pub const MARKER_KEYS: [&str; 11] = [
    "implementation_name",
    "implementation_version",
    "os_name",
    "platform_machine",
    "platform_python_implementation",
    "platform_release",
    "platform_system",
    "platform_version",
    "python_full_version",
    "python_version",
    "sys_platform",
];

pub fn environment(values: &MarkerValues) -> Option<MarkerEnvironment> {
    let get = |key: &str| values.get(key).map_or("", String::as_str);
    MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
        implementation_name: get("implementation_name"),
        implementation_version: get("implementation_version"),
        os_name: get("os_name"),
        platform_machine: get("platform_machine"),
        platform_python_implementation: get("platform_python_implementation"),
        platform_release: get("platform_release"),
        platform_system: get("platform_system"),
        platform_version: get("platform_version"),
        python_full_version: get("python_full_version"),
        python_version: get("python_version"),
        sys_platform: get("sys_platform"),
    })
    .ok()
}

// PEP 508's definitions, as `packaging.markers.default_environment()` computes them.
const MARKERS: &str = r#"
import json, os, platform, sys
report = open(sys.argv.pop(), "w")
def version(info):
    v = "%d.%d.%d" % info[:3]
    if info.releaselevel != "final":
        v += info.releaselevel[0] + str(info.serial)
    return v
report.write(json.dumps({
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
report.close()
"#;

/// The penv interpreter's own marker environment.
pub fn capture(python: &Path, timeout: Duration) -> Result<MarkerValues> {
    let fail = |error: String| Error::Validation {
        dist: "(marker environment)".into(),
        module: "platform".into(),
        error,
    };
    // Read from a report file, not stdout: `site` runs every `.pth` of the penv first.
    let (out, report) =
        crate::validate::run_reporting(python, MARKERS, None, timeout).map_err(fail)?;
    let values: MarkerValues = report
        .and_then(|text| serde_json::from_str(&text).ok())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requirements::parse_requirement;

    fn env(machine: &str, release: &str, python: &str) -> MarkerEnvironment {
        let short: Vec<&str> = python.split('.').take(2).collect();
        let short = short.join(".");
        let values: MarkerValues = [
            ("implementation_name", "cpython"),
            ("implementation_version", python),
            ("os_name", "posix"),
            ("platform_machine", machine),
            ("platform_python_implementation", "CPython"),
            ("platform_release", release),
            ("platform_system", "Darwin"),
            ("platform_version", "Darwin Kernel Version 24.1.0"),
            ("python_full_version", python),
            ("python_version", &short),
            ("sys_platform", "darwin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        environment(&values).unwrap()
    }

    #[test]
    fn markers_are_evaluated_against_the_interpreters_own_values() {
        let arm = parse_requirement("foo; platform_machine == 'arm64'", "t").unwrap();
        let release = parse_requirement("bar; platform_release >= '1'", "t").unwrap();
        let old = parse_requirement("baz; python_version < '3.8'", "t").unwrap();
        let mac = env("arm64", "24.1.0", "3.11.7");
        assert!(arm.applies_to(Some(&mac)));
        assert!(release.applies_to(Some(&mac)));
        assert!(!old.applies_to(Some(&mac)));
        assert!(old.applies_to(Some(&env("x86_64", "6.1", "3.7.1"))));
        assert!(!arm.applies_to(Some(&env("x86_64", "6.1", "3.11.7"))));
        assert!(
            arm.applies_to(None),
            "no environment: nothing is skipped on a guess"
        );
    }
}
