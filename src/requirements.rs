//! The dependency list: requirements files, `--dep`, pioarduino-style deps JSON, or the embedded
//! ESP32 default. Everything is parsed with `pep508_rs`, so names are PEP 503-normalized and
//! specifiers follow PEP 440. The canonical form (one line per distribution, sorted by name, with
//! sorted specifiers and extras) is what the fingerprint hashes, so the order of the input never
//! matters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pep508_rs::pep440_rs::Version;
use pep508_rs::{MarkerEnvironment, Requirement, VersionOrUrl};

use crate::error::{Error, Result};

/// pioarduino's `python_deps` for ESP32 builds, kept as data (`data/esp32-deps.json`).
pub const DEFAULT_DEPS_JSON: &str = include_str!("../data/esp32-deps.json");

#[derive(Debug, Clone)]
pub struct Dep {
    pub requirement: Requirement,
    /// Canonical one-line form, also what uv is given.
    pub canonical: String,
    /// Where it came from, for error messages: `FILE:LINE`, `--dep`, `JSON key "x"`.
    pub origin: String,
}

impl Dep {
    pub fn name(&self) -> &str {
        self.requirement.name.as_ref()
    }

    /// `None` for a URL requirement (the version is whatever the URL holds).
    pub fn specifiers(&self) -> Option<&pep508_rs::pep440_rs::VersionSpecifiers> {
        match &self.requirement.version_or_url {
            Some(VersionOrUrl::VersionSpecifier(specs)) => Some(specs),
            _ => None,
        }
    }

    pub fn is_url(&self) -> bool {
        matches!(self.requirement.version_or_url, Some(VersionOrUrl::Url(_)))
    }

    pub fn satisfied_by(&self, version: &str) -> bool {
        match (self.specifiers(), version.parse::<Version>()) {
            (Some(specs), Ok(version)) => specs.contains(&version),
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        }
    }

    /// Whether this requirement applies to the interpreter whose marker environment is given.
    /// An environment that cannot be built (values missing) applies every requirement, so that
    /// nothing is skipped on a guess.
    pub fn applies_to(&self, env: Option<&MarkerEnvironment>) -> bool {
        self.requirement.marker.is_true()
            || env.is_none_or(|env| self.requirement.marker.evaluate(env, &[]))
    }
}

#[derive(Debug, Clone)]
pub struct DepSet {
    deps: Vec<Dep>,
    pub source: String,
}

impl DepSet {
    pub fn iter(&self) -> impl Iterator<Item = &Dep> {
        self.deps.iter()
    }

    pub fn len(&self) -> usize {
        self.deps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    pub fn canonical_lines(&self) -> Vec<String> {
        self.deps.iter().map(|dep| dep.canonical.clone()).collect()
    }

    pub fn requirements_txt(&self) -> String {
        self.deps.iter().fold(String::new(), |mut out, dep| {
            let _ = writeln!(out, "{}", dep.canonical);
            out
        })
    }

    /// Sorts, drops exact duplicates, rejects one name with two different requirements.
    pub fn new(mut deps: Vec<Dep>, source: String) -> Result<DepSet> {
        deps.sort_by(|a, b| {
            (a.name(), &a.canonical, &a.origin).cmp(&(b.name(), &b.canonical, &b.origin))
        });
        let mut unique: Vec<Dep> = Vec::with_capacity(deps.len());
        for dep in deps {
            if let Some(last) = unique.last()
                && last.name() == dep.name()
            {
                if last.canonical == dep.canonical {
                    continue;
                }
                return Err(Error::BadRequirement {
                    origin: dep.origin.clone(),
                    text: dep.canonical.clone(),
                    message: format!(
                        "conflicts with `{}` ({}); give each distribution once",
                        last.canonical, last.origin
                    ),
                });
            }
            unique.push(dep);
        }
        Ok(DepSet {
            deps: unique,
            source,
        })
    }
}

/// A requirement from `--dep` or a deps JSON: a relative `file:` URL or path in it is taken
/// against the current directory, as uv and pip take one given on their command line.
pub fn parse_requirement(text: &str, origin: &str) -> Result<Dep> {
    let cwd = std::env::current_dir().ok();
    parse_requirement_in(text, origin, cwd.as_deref())
}

/// A requirement whose relative `file:` URLs and paths are taken against `base` (a requirements
/// file's directory), as uv and pip do. `base` must be absolute; `None` makes them an error.
pub fn parse_requirement_in(text: &str, origin: &str, base: Option<&Path>) -> Result<Dep> {
    let bad = |message: String| Error::BadRequirement {
        origin: origin.to_owned(),
        text: text.to_owned(),
        message,
    };
    // pep508_rs 0.9.2 panics when a name ending in `-`, `_` or `.` is followed by more text
    // (`0-!`, `a-\u{10efc}`: found by the property test below); reject that shape first.
    let trimmed = text.trim();
    let name_end = trimmed
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(trimmed.len());
    if name_end < trimmed.len() && trimmed[..name_end].ends_with(['-', '_', '.']) {
        return Err(bad(
            "the package name must end with a letter or digit".to_owned()
        ));
    }
    let parsed = match base {
        Some(base) => Requirement::parse(trimmed, base),
        None => trimmed.parse(),
    };
    let requirement: Requirement = parsed.map_err(|e| {
        let e: pep508_rs::Pep508Error = e;
        bad(e.message.to_string())
    })?;
    Ok(Dep {
        canonical: canonical(&requirement),
        requirement,
        origin: origin.to_owned(),
    })
}

fn canonical(requirement: &Requirement) -> String {
    let mut out = requirement.name.to_string();
    if !requirement.extras.is_empty() {
        let mut extras: Vec<String> = requirement.extras.iter().map(ToString::to_string).collect();
        extras.sort();
        extras.dedup();
        let _ = write!(out, "[{}]", extras.join(","));
    }
    match &requirement.version_or_url {
        Some(VersionOrUrl::VersionSpecifier(specs)) => {
            let mut parts: Vec<String> = specs.iter().map(ToString::to_string).collect();
            parts.sort();
            parts.dedup();
            out.push_str(&parts.join(","));
        }
        Some(VersionOrUrl::Url(url)) => {
            let _ = write!(out, " @ {url}");
        }
        None => {}
    }
    if let Some(marker) = requirement.marker.contents() {
        // A space before `;` keeps a URL's last character from swallowing the marker.
        let _ = write!(out, " ; {marker}");
    }
    out
}

const MAX_INCLUDE_DEPTH: usize = 16;

/// The most penv-guard reads of a requirements or deps JSON file (or stdin).
pub(crate) const USER_FILE_CAP: u64 = 16 << 20;

pub(crate) fn missing_as_not_found(e: &crate::fsutil::ReadError) -> String {
    match e {
        crate::fsutil::ReadError::Missing => "no such file".to_owned(),
        other => other.to_string(),
    }
}

pub(crate) fn parse_requirements_file(
    path: &Path,
    deps: &mut Vec<Dep>,
    depth: usize,
) -> Result<()> {
    let bytes = crate::fsutil::read_user_file(path, USER_FILE_CAP).map_err(|e| {
        Error::Usage(format!(
            "cannot read requirements file {}: {}",
            path.display(),
            missing_as_not_found(&e)
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|_| Error::BadRequirement {
        origin: path.display().to_string(),
        text: String::from("<file>"),
        message: "the file is not UTF-8".to_owned(),
    })?;
    // Relative `file:` URLs are relative to the file, as for uv and pip (and `-r` includes).
    let dir = crate::uv::absolute(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    );
    for (line_no, line) in logical_lines(strip_bom(&text)) {
        let origin = format!("{}:{line_no}", path.display());
        if let Some(include) = include_target(&line) {
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(Error::BadRequirement {
                    origin,
                    text: line,
                    message: "requirements files include each other too deeply".to_owned(),
                });
            }
            let base = path.parent().unwrap_or(Path::new("."));
            parse_requirements_file(&base.join(include), deps, depth + 1)?;
        } else if line.starts_with('-') {
            return Err(Error::BadRequirement {
                origin,
                text: line,
                message: "only PEP 508 lines and `-r FILE` are supported in requirements files"
                    .to_owned(),
            });
        } else {
            deps.push(parse_requirement_in(&line, &origin, Some(&dir))?);
        }
    }
    Ok(())
}

/// Text without the byte-order mark Windows Notepad writes at the start of a UTF-8 file (pip
/// accepts one too).
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

fn include_target(line: &str) -> Option<PathBuf> {
    let rest = line
        .strip_prefix("-r")
        .or_else(|| line.strip_prefix("--requirement"))?;
    let rest = rest.trim_start_matches('=').trim();
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

/// Lines with comments (`#` at the start or after whitespace) and blank lines removed and
/// backslash continuations joined, each with the number of its first physical line.
pub fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let without_comment = strip_comment(raw);
        let (number, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        if let Some(head) = without_comment.strip_suffix('\\') {
            joined.push_str(head);
            pending = Some((number, joined));
            continue;
        }
        joined.push_str(without_comment);
        let trimmed = joined.trim();
        if !trimmed.is_empty() {
            out.push((number, trimmed.to_owned()));
        }
    }
    if let Some((number, joined)) = pending {
        let trimmed = joined.trim();
        if !trimmed.is_empty() {
            out.push((number, trimmed.to_owned()));
        }
    }
    out
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

/// pioarduino's `python_deps`: `{"name": "spec"}` where spec is a PEP 440 specifier set
/// (`>=1.5.3,<1.8`), empty (any version), or a URL (`git+https://…`, `https://…`, `file://…`).
pub fn parse_deps_json(text: &str, origin: &str) -> Result<Vec<Dep>> {
    let bad = |message: String| Error::BadDepsJson {
        origin: origin.to_owned(),
        message,
    };
    let text = strip_bom(text);
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad(format!(
            "expected an object {{\"name\": \"spec\"}}, found {}",
            json_kind(&value)
        )));
    }
    // Read again keeping every key in order: `Value` keeps only the last of two equal keys.
    let JsonEntries(entries) =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if entries.is_empty() {
        return Err(bad("the object lists no dependencies".to_owned()));
    }
    let mut deps: Vec<Dep> = Vec::with_capacity(entries.len());
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (name, spec) in &entries {
        let key_origin = format!("{origin}, key \"{name}\"");
        let serde_json::Value::String(spec) = spec else {
            return Err(bad(format!(
                "the value of \"{name}\" must be a string (a version specifier or URL), found {}",
                json_kind(spec)
            )));
        };
        let spec = spec.trim();
        let text = if spec.is_empty() {
            name.clone()
        } else if is_url(spec) {
            format!("{name} @ {spec}")
        } else {
            format!("{name}{spec}")
        };
        let dep = parse_requirement(&text, &key_origin)?;
        if dep.requirement.marker.contents().is_some() || !dep.requirement.extras.is_empty() {
            return Err(Error::BadRequirement {
                origin: key_origin,
                text,
                message: "a deps JSON key must be a plain distribution name".to_owned(),
            });
        }
        match seen.get(dep.name()) {
            // The same key with the same value twice says one thing (as a repeated `--dep`).
            Some((previous, previous_spec)) if previous == name && previous_spec == spec => {
                continue;
            }
            Some((previous, previous_spec)) if previous == name => {
                return Err(bad(format!(
                    "\"{name}\" is given twice, as \"{previous_spec}\" and as \"{spec}\"; \
                     give each distribution once"
                )));
            }
            Some((previous, _)) => {
                return Err(bad(format!(
                    "\"{previous}\" and \"{name}\" name the same distribution"
                )));
            }
            None => {}
        }
        seen.insert(dep.name().to_owned(), (name.clone(), spec.to_owned()));
        deps.push(dep);
    }
    Ok(deps)
}

/// A JSON object's members in order, duplicates kept.
struct JsonEntries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for JsonEntries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(JsonEntries(entries))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn is_url(spec: &str) -> bool {
    spec.contains("://") || spec.starts_with("git+")
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(lines: &[&str]) -> Result<DepSet> {
        let deps = lines
            .iter()
            .map(|l| parse_requirement(l, "test"))
            .collect::<Result<Vec<_>>>()?;
        DepSet::new(deps, "test".into())
    }

    #[test]
    fn canonical_form_ignores_order_case_and_spacing() {
        let a = set(&["PyYAML >= 6.0.2", "reedsolo<1.8,>=1.5.3"]).unwrap();
        let b = set(&["reedsolo >=1.5.3, <1.8", "pyyaml>=6.0.2"]).unwrap();
        assert_eq!(a.canonical_lines(), b.canonical_lines());
        assert_eq!(
            a.canonical_lines(),
            vec!["pyyaml>=6.0.2", "reedsolo<1.8,>=1.5.3"]
        );
    }

    #[test]
    fn post_release_satisfies_lower_bound() {
        let dep = parse_requirement("pioarduino>=6.2.0", "t").unwrap();
        assert!(dep.satisfied_by("6.2.0.post1"));
        assert!(!dep.satisfied_by("6.1.9"));
        assert!(!dep.satisfied_by("not a version"));
    }

    #[test]
    fn conflicting_duplicates_are_rejected_and_exact_ones_merged() {
        assert_eq!(set(&["rich>=14", "Rich >= 14"]).unwrap().len(), 1);
        let err = set(&["rich>=14", "rich<13"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("rich"), "{err}");
    }

    #[test]
    fn deps_json_accepts_specifiers_urls_and_empty() {
        let deps = parse_deps_json(
            r#"{"reedsolo": ">=1.5.3,<1.8", "x": "", "pio-lock": "git+https://example.com/p.git@v0.2.0", "w": "file:///tmp/w-1.0-py3-none-any.whl"}"#,
            "t",
        )
        .unwrap();
        let lines: Vec<_> = deps.iter().map(|d| d.canonical.clone()).collect();
        assert!(
            lines.contains(&"reedsolo<1.8,>=1.5.3".to_owned()),
            "{lines:?}"
        );
        assert!(lines.contains(&"x".to_owned()));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("pio-lock @ git+https://"))
        );
        assert_eq!(deps.iter().filter(|d| d.is_url()).count(), 2);
    }

    #[test]
    fn deps_json_errors_name_the_bad_value() {
        for (text, needle) in [
            ("[]", "array"),
            ("{}", "no dependencies"),
            (r#"{"a": 1}"#, "\"a\""),
            (r#"{"a": ">=x"}"#, "a>=x"),
            ("{", "not valid JSON"),
            (r#"{"Foo_Bar": "", "foo-bar": ">=1"}"#, "same distribution"),
            (r#"{"a": ">=1", "a": "<1"}"#, "\">=1\" and as \"<1\""),
        ] {
            let err = parse_deps_json(text, "t").unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn deps_json_repeating_a_key_with_the_same_value_is_one_dependency() {
        let deps = parse_deps_json(r#"{"a": ">=1", "b": "", "a": ">=1"}"#, "t").unwrap();
        assert_eq!(deps.len(), 2);
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        assert_eq!(
            parse_deps_json("\u{feff}{\"a\": \"\"}", "t").unwrap().len(),
            1
        );
        assert_eq!(strip_bom("\u{feff}a\n"), "a\n");
    }

    #[test]
    fn embedded_default_parses() {
        let deps = parse_deps_json(DEFAULT_DEPS_JSON, "embedded").unwrap();
        assert_eq!(deps.len(), 16);
        assert!(deps.iter().any(|d| d.name() == "pioarduino"));
    }

    #[test]
    fn logical_lines_strip_comments_and_join_continuations() {
        let text = "# header\n\nfoo>=1 # trailing\nbar @ https://x/y.whl#sha256=ab\nbaz\\\n  >=2\n";
        let lines: Vec<_> = logical_lines(text).into_iter().collect();
        assert_eq!(
            lines,
            vec![
                (3, "foo>=1".to_owned()),
                (4, "bar @ https://x/y.whl#sha256=ab".to_owned()),
                (5, "baz  >=2".to_owned()),
            ]
        );
    }

    #[test]
    fn regression_non_ascii_after_name_is_an_error_not_a_panic() {
        for text in ["a-\u{10efc}", "0-!", "foo_ >=1"] {
            let err = parse_requirement(text, "t").unwrap_err();
            assert_eq!(err.exit_code(), 2, "{text}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_requirement_text_never_panics(text in "\\PC{0,80}") {
            let _ = parse_requirement(&text, "p");
        }

        #[test]
        fn arbitrary_deps_json_never_panics(text in "\\PC{0,120}") {
            let _ = parse_deps_json(&text, "p");
        }

        #[test]
        fn canonical_form_reparses_to_itself(
            name in "[a-zA-Z][a-zA-Z0-9._-]{0,12}[a-zA-Z0-9]",
            major in 0u32..50, minor in 0u32..50,
        ) {
            let dep = parse_requirement(&format!("{name} >= {major}.{minor}, < {}", major + 1), "p").unwrap();
            let again = parse_requirement(&dep.canonical, "p").unwrap();
            prop_assert_eq!(dep.canonical, again.canonical);
        }

        #[test]
        fn logical_lines_never_panic(text in "\\PC{0,200}") {
            let _ = logical_lines(&text);
        }
    }
}
