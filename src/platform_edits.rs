//! The edits `penv-guard platform install` makes to pioarduino's `builder/penv_setup.py`: the
//! one source of truth. `platform-integration/penv_setup.patch` is their diff against upstream
//! HEAD dd01e49e, and a test checks that `git apply` of the patch gives exactly what `install`
//! writes.
//!
//! Upstream's file has had three shapes since it appeared in release 55.03.31, and each
//! [`Family`] hooks one: HEAD's (55.03.38 onwards, with a module-level `has_network`), 55.03.37's
//! (the network probed inside the setup, a uv cache dir under the core dir) and that of 55.03.32
//! to 55.03.36 (also 55.03.31-1/-2; no uv cache dir). The first 55.03.31 file (SCons only,
//! certifi imported in-process) is not hooked: [`known_revision`] names it, so the message can
//! say what to do. Each edit replaces one anchor that must occur exactly once in the original.
//! The glue (39 added lines on HEAD) runs `penv-guard ensure --json` once (falling back to
//! upstream's code when the binary is missing), makes the network probe lazy so that a warm pass
//! opens no connection, and lets `_setup_certifi_env` take the bundle path from the report
//! instead of a subprocess.
//!
//! A file with CRLF line endings (Git for Windows' `core.autocrlf`) is hooked as its LF text and
//! written back with CRLF, so `unapply` and `remove` give back its exact bytes.

/// One shape of upstream's file: the releases that ship it and the edits that hook it.
pub struct Family {
    pub releases: &'static str,
    pub edits: &'static [(&'static str, &'static str)],
}

/// An upstream file by the sha256 of its LF text: the releases that ship it, and whether a
/// [`Family`] hooks it.
pub struct Revision {
    pub sha256: &'static str,
    pub releases: &'static str,
    pub hooked: bool,
}

/// Every distinct `builder/penv_setup.py` of pioarduino's tags and branches as of 2026-08-02
/// (the fixtures in tests/fixtures/upstream and tests/fixtures/upstream-releases).
pub const KNOWN_REVISIONS: &[Revision] = &[
    rev(
        "c55e73ebdc47710fc7a8c9789ed3ac20e56040e1dba570402974d0ba151ec5b9",
        "55.03.31",
        false,
    ),
    rev(
        "5c591575d9a86c66fbf8a2fcab87fb2728f64d0f407cdb40e48f7ae814ba33bf",
        "55.03.32",
        true,
    ),
    rev(
        "ff38fdadb23daaa2ab84683907d8c8bebea482b034ce1428e78a93ea9a6fb95b",
        "55.03.33/55.03.34",
        true,
    ),
    rev(
        "1127f2d64b76ffd93dd4a5ddd25a8c63245f206a1474dcf15c43dd02c559ad14",
        "55.03.31-1/55.03.31-2",
        true,
    ),
    rev(
        "75593bc8c46f5b8568f6551045217b86f46158fe5ab5d11522941b0bbe1df185",
        "55.03.35",
        true,
    ),
    rev(
        "cb78243c9c732452303b2ea10dfa7ab91ae0bb516b146669fe4b3e7939a15c67",
        "55.03.36",
        true,
    ),
    rev(
        "0f57492bb6d9d1025bd05521112245ceb0c755d8bcc412d6a6a8aeebd4217ad2",
        "55.03.37",
        true,
    ),
    rev(
        "59ccc95154ac3de2a5de301dd3c955886bb9284cc0509ed995e53b72096cace4",
        "55.03.38",
        true,
    ),
    rev(
        "1364fc4255b1c735e70bbc20918d0bff4f2fd494ad28d92d41fecccfe8220cdf",
        "55.03.39/55.03.311/main dd01e49e",
        true,
    ),
    rev(
        "e0fd094125752f487ebc28f372042d337a8c461810386d2574054e35c9b36ed0",
        "develop 9905818f",
        true,
    ),
];

const fn rev(sha256: &'static str, releases: &'static str, hooked: bool) -> Revision {
    Revision {
        sha256,
        releases,
        hooked,
    }
}

/// The releases whose file penv-guard hooks, for messages.
pub const HOOKED_RELEASES: &str = "55.03.31-2 and 55.03.32 to 55.03.311";

/// upstream's `has_internet_connection() or github_actions`, computed when first read.
macro_rules! lazy_network {
    () => {
        r#"class _LazyNetwork:  # upstream's `has_internet_connection() or github_actions`, probed when first read
    def __bool__(self):
        if not hasattr(self, "value"):
            self.value = bool(has_internet_connection() or github_actions)
        return self.value
"#
    };
}

/// `_penv_guard`, placed before `setup_penv_minimal`; `$deps` is what it sends as `--deps-json`.
macro_rules! glue {
    ($deps:expr) => {
        concat!(
            r#"

def _penv_guard(env, platform, penv_dir, uv_cache_dir, with_esptool):
    """(python, esptool) from `penv-guard ensure` (stdout: JSON; stderr passes through); None: upstream's code."""
    search = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
    binary = os.getenv("PENV_GUARD_BIN") or shutil.which("penv-guard", path=search)
    if not binary or not os.path.isfile(binary):  # not installed, or opted out: PENV_GUARD_BIN=off
        return None
    esptool_dir = (platform.get_package_dir("tool-esptoolpy") or "") if with_esptool else ""
    if with_esptool and env is not None and not os.path.isdir(esptool_dir):
        return None  # upstream's install_esptool exits with its message
    cmd = [binary, "ensure", "--json", "--penv", penv_dir, "--python", sys.executable, "--deps-json", "-"]
    cmd += ["--uv-cache-dir", uv_cache_dir] if uv_cache_dir else []
    cmd += ["--esptool-dir", esptool_dir] if os.path.isdir(esptool_dir) else []
    proc = subprocess.run(cmd, input=json.dumps("#,
            $deps,
            r#"), stdout=subprocess.PIPE, encoding="utf-8")
    if proc.returncode != 0:
        if not has_network:
            return None  # upstream without network: warn, skip the dependency install, carry on
        sys.exit(1)
    report = {k: os.fsdecode(v.encode()) if isinstance(v, str) else v for k, v in json.loads(proc.stdout).items()}
    if env is not None:
        env.Replace(PYTHONEXE=report["python"])
    setup_python_paths(penv_dir)
    _setup_certifi_env(env, report["python"], report["certifi"])
    return report["python"], report["esptool"]


def setup_penv_minimal("#
        )
    };
}

/// The call at the top of `_setup_python_environment_core` before 55.03.38: a fresh lazy probe
/// per setup (upstream probes once per setup, there), then penv-guard.
macro_rules! call_with_probe {
    ($cache:expr) => {
        concat!(
            "    global has_network  # upstream's probe, once per setup, made only when read\n",
            "    has_network = _LazyNetwork()\n",
            "    if guarded := _penv_guard(env, platform, penv_dir, ",
            $cache,
            ", should_install_esptool):\n        return guarded\n"
        )
    };
}

const GLUE_ANCHOR: &str = "\n\ndef setup_penv_minimal(";
const UV_CACHE_LINE: &str = "    uv_cache_dir = str(Path(platformio_dir) / \".cache\" / \"uv\")\n";
const PENV_DIR_LINE: &str = "    penv_dir = str(Path(platformio_dir) / \"penv\")\n";

/// certifi's bundle from penv-guard's report: no Python subprocess.
const CERTIFI_EDITS: [(&str, &str); 2] = [
    (
        "def _setup_certifi_env(env, python_exe):\n",
        "def _setup_certifi_env(env, python_exe, cert_path=None):\n",
    ),
    (
        "        out = subprocess.check_output(\n",
        "        out = cert_path or subprocess.check_output(\n",
    ),
];

/// Before 55.03.38: `shutil` for the glue, the lazy probe's class, and the setup's own probe
/// reading it.
const PRE_38_EDITS: [(&str, &str); 3] = [
    (
        "\nimport subprocess\n",
        "\nimport shutil\nimport subprocess\n",
    ),
    (
        "\n\ndef get_executable_path(",
        concat!("\n\n", lazy_network!(), "\n\ndef get_executable_path("),
    ),
    (
        "    if has_internet_connection() or github_actions:\n",
        "    if has_network:\n",
    ),
];

/// The `python_deps` these releases send: their `platformio` URL (a pioarduino/platformio-core
/// tag archive) builds a distribution named `pioarduino-core`, and uv refuses a URL requirement
/// whose name differs from the one it builds.
macro_rules! pre_38_deps {
    () => {
        r#"{("pioarduino-core" if "/pioarduino/platformio-core/" in v else k): v for k, v in python_deps.items()}"#
    };
}

/// HEAD's shape: 55.03.38, 55.03.39, 55.03.311, main and develop.
const HEAD_EDITS: &[(&str, &str)] = &[
    // has_network keeps upstream's value, but is probed only when something reads it.
    (
        "\nhas_network = has_internet_connection() or github_actions\n",
        concat!("\n", lazy_network!(), "\n\nhas_network = _LazyNetwork()\n"),
    ),
    (GLUE_ANCHOR, glue!("python_deps")),
    // The call, at the top of _setup_python_environment_core.
    (
        UV_CACHE_LINE,
        concat!(
            "    uv_cache_dir = str(Path(platformio_dir) / \".cache\" / \"uv\")\n",
            "    if guarded := _penv_guard(env, platform, penv_dir, uv_cache_dir, should_install_esptool):\n",
            "        return guarded\n"
        ),
    ),
    // install_freertos_gdb: the network is needed (and probed) only when a freertos-gdb is
    // missing; the result is upstream's in every case.
    (
        "    \"\"\"\n    if not has_network:\n        return\n        \n    uv_env = None\n",
        "    \"\"\"\n    uv_env = None\n",
    ),
    (
        "        if Path(target_dir, \"freertos_gdb\").is_dir():\n            continue\n",
        "        if Path(target_dir, \"freertos_gdb\").is_dir():\n            continue\n        if not has_network:\n            return\n",
    ),
    CERTIFI_EDITS[0],
    CERTIFI_EDITS[1],
];

/// 55.03.37: the uv cache dir under the core dir, as HEAD.
const R37_EDITS: &[(&str, &str)] = &[
    PRE_38_EDITS[0],
    PRE_38_EDITS[1],
    (GLUE_ANCHOR, glue!(pre_38_deps!())),
    (
        UV_CACHE_LINE,
        concat!(
            "    uv_cache_dir = str(Path(platformio_dir) / \".cache\" / \"uv\")\n",
            call_with_probe!("uv_cache_dir")
        ),
    ),
    PRE_38_EDITS[2],
    CERTIFI_EDITS[0],
    CERTIFI_EDITS[1],
];

/// 55.03.32 to 55.03.36: uv's own default cache dir, as upstream there.
const R32_EDITS: &[(&str, &str)] = &[
    PRE_38_EDITS[0],
    PRE_38_EDITS[1],
    (GLUE_ANCHOR, glue!(pre_38_deps!())),
    (
        PENV_DIR_LINE,
        concat!(
            "    penv_dir = str(Path(platformio_dir) / \"penv\")\n",
            call_with_probe!("None")
        ),
    ),
    PRE_38_EDITS[2],
    CERTIFI_EDITS[0],
    CERTIFI_EDITS[1],
];

/// Tried in this order (55.03.37's anchors include those of 55.03.32's, so it comes first); the
/// first whose anchors all fit is used.
pub const FAMILIES: &[Family] = &[
    Family {
        releases: "55.03.38 to 55.03.311, main, develop",
        edits: HEAD_EDITS,
    },
    Family {
        releases: "55.03.37",
        edits: R37_EDITS,
    },
    Family {
        releases: "55.03.31-1 and 55.03.32 to 55.03.36",
        edits: R32_EDITS,
    },
];

/// HEAD's edits, which `platform-integration/penv_setup.patch` shows.
pub const EDITS: &[(&str, &str)] = HEAD_EDITS;

/// Replaces each `from` (which must occur exactly once, without overlapping another) by its
/// `to`, all at once. `None` when some `from` cannot be placed exactly.
fn replace_exactly<'a>(
    text: &str,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    let mut spots = Vec::new();
    for (from, to) in pairs {
        let mut found = text.match_indices(from);
        let (at, _) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        spots.push((at, from.len(), to));
    }
    spots.sort_unstable_by_key(|&(at, _, _)| at);
    let mut out = String::with_capacity(text.len() + 4096);
    let mut done = 0;
    for (at, len, to) in spots {
        if at < done {
            return None;
        }
        out.push_str(&text[done..at]);
        out.push_str(to);
        done = at + len;
    }
    out.push_str(&text[done..]);
    Some(out)
}

/// `text` with LF line endings and whether it had CRLF ones; `None` for mixed endings (or a
/// lone CR), which could not be written back byte for byte.
fn to_lf(text: &str) -> Option<(std::borrow::Cow<'_, str>, bool)> {
    if !text.contains('\r') {
        return Some((text.into(), false));
    }
    let lf = text.replace("\r\n", "\n");
    let crlf_everywhere = !lf.contains('\r') && text.len() - lf.len() == lf.matches('\n').count();
    crlf_everywhere.then_some((lf.into(), true))
}

/// Runs `f` on the LF text of `text` and gives its result the line endings `text` had.
fn keeping_line_endings(text: &str, f: impl FnOnce(&str) -> Option<String>) -> Option<String> {
    let (lf, crlf) = to_lf(text)?;
    let out = f(&lf)?;
    Some(if crlf { out.replace('\n', "\r\n") } else { out })
}

fn apply_lf(original: &str) -> Option<String> {
    FAMILIES
        .iter()
        .find_map(|family| replace_exactly(original, family.edits.iter().copied()))
}

/// The hooked file, or `None` when no family's anchors all occur exactly once in `original`.
pub fn apply(original: &str) -> Option<String> {
    keeping_line_endings(original, apply_lf)
}

/// The original of a file hooked by exactly these edits (e.g. with `git apply` of the patch), or
/// `None` when `hooked` is not that. Checked both ways: hooking the result gives `hooked` again.
pub fn unapply(hooked: &str) -> Option<String> {
    keeping_line_endings(hooked, |lf| {
        FAMILIES.iter().find_map(|family| {
            let original = replace_exactly(lf, family.edits.iter().map(|&(from, to)| (to, from)))?;
            (apply_lf(&original).as_deref() == Some(lf)).then_some(original)
        })
    })
}

/// The upstream file `text` is (with LF or CRLF line endings), if it is a known one.
pub fn known_revision(text: &str) -> Option<&'static Revision> {
    let (lf, _) = to_lf(text)?;
    let sum = crate::platform::sha256_hex(lf.as_bytes());
    KNOWN_REVISIONS.iter().find(|r| r.sha256 == sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "a\nhas_network = has_internet_connection() or github_actions\nb\n";

    /// pioarduino's builder/penv_setup.py at dd01e49e, as the tests keep it.
    const HEAD: &str = include_str!("../tests/fixtures/upstream/penv_setup.py");

    /// Every distinct upstream file since 55.03.31: (name, text).
    const RELEASES: &[(&str, &str)] = &[
        (
            "55.03.31",
            include_str!("../tests/fixtures/upstream-releases/55.03.31.py"),
        ),
        (
            "55.03.32",
            include_str!("../tests/fixtures/upstream-releases/55.03.32.py"),
        ),
        (
            "55.03.33",
            include_str!("../tests/fixtures/upstream-releases/55.03.33.py"),
        ),
        (
            "55.03.31-2",
            include_str!("../tests/fixtures/upstream-releases/55.03.31-2.py"),
        ),
        (
            "55.03.35",
            include_str!("../tests/fixtures/upstream-releases/55.03.35.py"),
        ),
        (
            "55.03.36",
            include_str!("../tests/fixtures/upstream-releases/55.03.36.py"),
        ),
        (
            "55.03.37",
            include_str!("../tests/fixtures/upstream-releases/55.03.37.py"),
        ),
        (
            "55.03.38",
            include_str!("../tests/fixtures/upstream-releases/55.03.38.py"),
        ),
        ("55.03.311", HEAD),
        (
            "develop",
            include_str!("../tests/fixtures/upstream-releases/develop.py"),
        ),
    ];

    #[test]
    fn head_is_known_and_hooks_and_unhooks_exactly() {
        assert!(known_revision(HEAD).unwrap().releases.contains("dd01e49e"));
        let hooked = apply(HEAD).expect("every anchor once in HEAD");
        assert_ne!(hooked, HEAD);
        assert_eq!(unapply(&hooked).as_deref(), Some(HEAD));
        assert!(
            apply(&hooked).is_none(),
            "a hooked file cannot be hooked twice"
        );
        assert!(unapply(HEAD).is_none(), "HEAD is not hooked");
    }

    #[test]
    fn every_release_since_55_03_31_is_known_and_all_but_the_first_hook_and_unhook_exactly() {
        assert_eq!(
            RELEASES.len(),
            KNOWN_REVISIONS.len(),
            "one fixture per known file"
        );
        for &(name, text) in RELEASES {
            let known = known_revision(text).unwrap_or_else(|| panic!("{name} is not known"));
            assert!(
                known.releases.contains(name.trim_end_matches("-2")),
                "{name}: {}",
                known.releases
            );
            let crlf = text.replace('\n', "\r\n");
            assert!(
                std::ptr::eq(known_revision(&crlf).unwrap(), known),
                "{name} with CRLF"
            );
            if !known.hooked {
                assert!(apply(text).is_none(), "{name} is not hooked");
                continue;
            }
            for original in [text.to_owned(), crlf] {
                let hooked = apply(&original).unwrap_or_else(|| panic!("{name} hooks"));
                assert!(hooked.contains("def _penv_guard("), "{name}");
                assert_eq!(
                    unapply(&hooked).as_deref(),
                    Some(original.as_str()),
                    "{name}"
                );
                assert!(apply(&hooked).is_none(), "{name} hooked twice");
                assert!(unapply(&original).is_none(), "{name} is not hooked");
                if original.contains('\r') {
                    assert_eq!(
                        hooked.matches('\n').count(),
                        hooked.matches("\r\n").count(),
                        "{name}: the hooked CRLF file is CRLF throughout"
                    );
                }
            }
        }
    }

    #[test]
    fn mixed_line_endings_are_not_hooked() {
        let mixed = HEAD.replacen('\n', "\r\n", 3);
        assert!(apply(&mixed).is_none());
        assert!(known_revision(&mixed).is_none());
    }

    #[test]
    fn anchors_must_occur_exactly_once() {
        assert_eq!(
            replace_exactly("x y", [("x", "1"), ("y", "2")].into_iter()).as_deref(),
            Some("1 2")
        );
        assert!(replace_exactly("x x", [("x", "1")].into_iter()).is_none());
        assert!(replace_exactly("x", [("z", "1")].into_iter()).is_none());
        assert!(replace_exactly("abc", [("ab", "1"), ("bc", "2")].into_iter()).is_none());
        assert!(
            apply(SAMPLE).is_none(),
            "a file with only one anchor is not hooked"
        );
    }
}
