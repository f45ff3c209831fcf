"""Let penv-guard keep a PlatformIO platform's Python env ("penv") satisfied.

Standard library only; meant to be copied next to a platform's builder/penv_setup.py.

    result = ensure_penv(penv_dir, python_deps, uv_cache_dir)
    if result is None:
        ...  # penv-guard is not installed: keep the old code path
    else:
        result.python, result.certifi  # penv Python, CA bundle (or None)

`ensure_penv` runs `penv-guard ensure --json` once. On a hit it answers from files, with no lock,
no network and no Python subprocess: a few ms. On a miss penv-guard creates the penv if needed,
installs with uv under a lock, validates imports and records the state.

Binary lookup: $PENV_GUARD_BIN (if set, only that; set it to a missing path such as `off` to
force the old code path), then next to the running Python (its scripts directory), then PATH.

Set $PENV_GUARD_TRACE to a file to append one JSON line per call with the elapsed time.
"""

import collections
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

__all__ = ["PenvGuardError", "PenvGuardResult", "ensure_penv", "find_binary"]

EXIT_LOCK_TIMEOUT = 75

PenvGuardResult = collections.namedtuple(
    "PenvGuardResult",
    [
        "python",  # the penv's Python executable
        "certifi",  # certifi's CA bundle in the penv, or None when certifi is not installed
        "esptool_from_dir",  # True when esptool is installed editable from esptool_dir
        "build_size",  # what penv-guard reports for project_dir/env_name, or None
        "status",  # "hit", "revalidated" or "installed"
        "fingerprint",  # the dependency list + penv fingerprint (a CI cache key)
        "report",  # the whole `ensure --json` object
    ],
)


class PenvGuardError(RuntimeError):
    """penv-guard ran and failed; `exit_code` is its exit status (75: lock timeout, retry)."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def find_binary():
    """The penv-guard executable, or None when it is not installed."""
    exe = "penv-guard.exe" if sys.platform.startswith("win") else "penv-guard"
    explicit = os.environ.get("PENV_GUARD_BIN")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    dirs = [os.path.dirname(sys.executable)]
    try:
        dirs.append(sysconfig.get_path("scripts"))
    except (KeyError, OSError):
        pass
    for directory in dirs:
        candidate = os.path.join(directory, exe) if directory else None
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(exe)


def ensure_penv(penv_dir, python_deps, uv_cache_dir=None, esptool_dir=None,
                project_dir=None, env_name=None, python=None):
    """Make `penv_dir` satisfy `python_deps` ({name: spec or URL}, like pioarduino's dict).

    Returns a PenvGuardResult, or None when the binary is not found (the caller keeps its old
    code path). Raises PenvGuardError when penv-guard runs and fails.
    `python` creates the penv when needed (default: the running Python).
    """
    started = time.perf_counter()
    binary = find_binary()
    if binary is None:
        _trace({"event": "ensure", "status": "no-binary", "elapsed_ms": _ms(started)})
        return None
    cmd = [binary, "ensure", "--json", "--penv", str(penv_dir), "--deps-json", "-",
           "--python", str(python or sys.executable)]
    if uv_cache_dir:
        cmd += ["--uv-cache-dir", str(uv_cache_dir)]
    if esptool_dir:
        cmd += ["--esptool-dir", str(esptool_dir)]
    if project_dir and env_name:
        cmd += ["--project-dir", str(project_dir), "--env", str(env_name)]
    try:
        proc = subprocess.run(cmd, input=json.dumps(python_deps), capture_output=True,
                              text=True, encoding="utf-8", errors="replace")
    except OSError as exc:  # vanished or not executable after all
        _trace({"event": "ensure", "status": "no-binary", "error": str(exc),
                "elapsed_ms": _ms(started)})
        return None
    report = _last_json_line(proc.stdout)
    if proc.returncode != 0:
        error_line = _error_line(proc.stderr)
        message = (report or {}).get("error") or (
            error_line.split("error: ", 1)[-1] if error_line else None) or (
            "penv-guard exited with status %d" % proc.returncode)
        # Progress and the failure's detail (e.g. uv's output) go to the user as they came;
        # the one-line error is the exception's message.
        rest = [l for l in proc.stderr.splitlines(True) if l.rstrip("\r\n") != error_line]
        sys.stderr.write("".join(rest))
        if proc.returncode == EXIT_LOCK_TIMEOUT:
            message += " (another build holds the penv lock; retry when it has finished)"
        _trace({"event": "ensure", "status": "error", "exit_code": proc.returncode,
                "elapsed_ms": _ms(started)})
        raise PenvGuardError("penv-guard: " + message, proc.returncode)
    if report is None:
        raise PenvGuardError("penv-guard printed no JSON report", proc.returncode)
    if proc.stderr:  # progress on a miss, the cached build size: the user's business
        sys.stderr.write(proc.stderr)
    facts = report.get("facts") or {}
    esptool_from = facts.get("esptool_dir")
    result = PenvGuardResult(
        python=report.get("python") or _penv_python(penv_dir),
        certifi=facts.get("certifi_bundle"),
        esptool_from_dir=bool(esptool_dir and esptool_from and _same_path(esptool_from, esptool_dir)),
        build_size=report.get("build_size"),
        status=report.get("status"),
        fingerprint=report.get("fingerprint"),
        report=report,
    )
    _trace({"event": "ensure", "status": result.status, "elapsed_ms": _ms(started),
            "guard_ms": (report.get("timings_ms") or {}).get("total")})
    return result


def _penv_python(penv_dir):
    if sys.platform.startswith("win"):
        return os.path.join(str(penv_dir), "Scripts", "python.exe")
    return os.path.join(str(penv_dir), "bin", "python")


def _same_path(a, b):
    norm = lambda p: os.path.normcase(os.path.realpath(str(p)))  # noqa: E731
    return norm(a) == norm(b)


def _last_json_line(stdout):
    for line in reversed((stdout or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _error_line(stderr):
    for line in (stderr or "").splitlines():
        if line.startswith("penv-guard: error: "):
            return line
    return None


def _ms(started):
    return round((time.perf_counter() - started) * 1000, 3)


def _trace(record):
    path = os.environ.get("PENV_GUARD_TRACE")
    if not path:
        return
    record = dict(record, pid=os.getpid(), source="penv_guard_integration")
    try:
        with open(path, "a", encoding="utf-8") as fp:
            fp.write(json.dumps(record) + "\n")
    except OSError:
        pass
