"""PlatformIO extra script: keep penv-guard's build-size cache current.

    [env]
    extra_scripts = pre:penv_guard_size.py

When the SCons run of a build or of `pio run -t clean` ends, it runs
`penv-guard size --project-dir $PROJECT_DIR --env $PIOENV --refresh` quietly. It never fails or
slows the build noticeably: a missing binary, an error or a timeout is ignored.
Use it as a `pre:` script: PlatformIO's clean target exits before `post:` scripts run (a `post:`
script still works for builds). The binary is found as the penv_setup.py hook (penv_setup.patch) finds it:
$PENV_GUARD_BIN, next to the running Python, then PATH.
"""

import atexit
import os
import shutil
import subprocess
import sys

Import("env")  # noqa: F821  (SCons provides Import)


def _binary():
    exe = "penv-guard.exe" if sys.platform.startswith("win") else "penv-guard"
    explicit = os.environ.get("PENV_GUARD_BIN")
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    beside = os.path.join(os.path.dirname(sys.executable), exe)
    return beside if os.path.isfile(beside) else shutil.which(exe)


def _refresh_size(project_dir, pioenv):
    binary = _binary()
    if not binary:
        return
    try:
        subprocess.run(
            [binary, "size", "--project-dir", project_dir, "--env", pioenv, "--refresh"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        pass


_project_dir = env.subst("$PROJECT_DIR")  # noqa: F821
_pioenv = env.subst("$PIOENV")  # noqa: F821

# When SCons exits: after the last target (firmware.bin) and after SCons has written
# .sconsign*.dblite, so the recorded freshness key matches the finished build dir; and after
# `-t clean`, which removes $BUILD_DIR and exits right after the pre: scripts (records 0).
# (A post-action on the program would run before both and leave a stale key behind.)
atexit.register(_refresh_size, _project_dir, _pioenv)
