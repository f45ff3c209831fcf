//! The edits `penv-guard platform install` makes to pioarduino's `builder/penv_setup.py`: the
//! one source of truth. `platform-integration/penv_setup.patch` is their diff against upstream
//! HEAD dd01e49e, and a test checks that `git apply` of the patch gives exactly what `install`
//! writes.
//!
//! Each edit replaces one anchor that must occur exactly once in the original. The glue adds 39
//! lines: it runs `penv-guard ensure --json` once (falling back to upstream's code when the
//! binary is missing), makes `has_network` lazy so that a warm pass opens no connection, and
//! lets `_setup_certifi_env` take the bundle path from the report instead of a subprocess.

/// (sha256, upstream commit) of the `penv_setup.py` revisions these edits were made against.
pub const KNOWN_REVISIONS: &[(&str, &str)] = &[(
    "1364fc4255b1c735e70bbc20918d0bff4f2fd494ad28d92d41fecccfe8220cdf",
    "dd01e49e",
)];

/// (anchor, replacement), in file order.
pub const EDITS: &[(&str, &str)] = &[
    // has_network keeps upstream's value, but is probed only when something reads it.
    (
        "\nhas_network = has_internet_connection() or github_actions\n",
        r#"
class _LazyNetwork:  # upstream's `has_internet_connection() or github_actions`, probed when first read
    def __bool__(self):
        if not hasattr(self, "value"):
            self.value = bool(has_internet_connection() or github_actions)
        return self.value


has_network = _LazyNetwork()
"#,
    ),
    // The glue, before setup_penv_minimal.
    (
        "\n\ndef setup_penv_minimal(",
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
    cmd = [binary, "ensure", "--json", "--penv", penv_dir, "--python", sys.executable,
           "--uv-cache-dir", uv_cache_dir, "--deps-json", "-"]
    cmd += ["--esptool-dir", esptool_dir] if os.path.isdir(esptool_dir) else []
    proc = subprocess.run(cmd, input=json.dumps(python_deps), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        if not has_network:
            return None  # upstream without network: warn, skip the dependency install, carry on
        sys.exit(1)
    report = json.loads(proc.stdout)
    if env is not None:
        env.Replace(PYTHONEXE=report["python"])
    setup_python_paths(penv_dir)
    _setup_certifi_env(env, report["python"], report["certifi"])
    return report["python"], report["esptool"]


def setup_penv_minimal("#,
    ),
    // The call, at the top of _setup_python_environment_core.
    (
        "    uv_cache_dir = str(Path(platformio_dir) / \".cache\" / \"uv\")\n",
        r#"    uv_cache_dir = str(Path(platformio_dir) / ".cache" / "uv")
    if guarded := _penv_guard(env, platform, penv_dir, uv_cache_dir, should_install_esptool):
        return guarded
"#,
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
    // certifi's bundle from penv-guard's report: no Python subprocess.
    (
        "def _setup_certifi_env(env, python_exe):\n",
        "def _setup_certifi_env(env, python_exe, cert_path=None):\n",
    ),
    (
        "        out = subprocess.check_output(\n",
        "        out = cert_path or subprocess.check_output(\n",
    ),
];

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

/// The hooked file, or `None` when some anchor does not occur exactly once in `original`.
pub fn apply(original: &str) -> Option<String> {
    replace_exactly(original, EDITS.iter().copied())
}

/// The original of a file hooked by exactly these edits (e.g. with `git apply` of the patch), or
/// `None` when `hooked` is not that. Checked both ways: hooking the result gives `hooked` again.
pub fn unapply(hooked: &str) -> Option<String> {
    let original = replace_exactly(hooked, EDITS.iter().map(|&(from, to)| (to, from)))?;
    (apply(&original).as_deref() == Some(hooked)).then_some(original)
}

/// The upstream commit of a known revision, by the sha256 of its bytes.
pub fn known_revision(sha256: &str) -> Option<&'static str> {
    KNOWN_REVISIONS
        .iter()
        .find(|(sum, _)| *sum == sha256)
        .map(|&(_, commit)| commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "a\nhas_network = has_internet_connection() or github_actions\nb\n";

    /// pioarduino's builder/penv_setup.py at dd01e49e, as the tests keep it.
    const HEAD: &str = include_str!("../tests/fixtures/upstream/penv_setup.py");

    #[test]
    fn head_is_known_and_hooks_and_unhooks_exactly() {
        let sum = crate::platform::sha256_hex(HEAD.as_bytes());
        assert_eq!(known_revision(&sum), Some("dd01e49e"));
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
    fn anchors_must_occur_exactly_once() {
        assert!(
            replace_exactly("x y", [("x", "1"), ("y", "2")].into_iter()).as_deref() == Some("1 2")
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
