//! One integration binary: every test runs the real `penv-guard` against real venvs made by the
//! real uv, with tiny wheels built by the tests (no index, no network).

// Fixtures of the tests gated to Linux or Unix below go unused on the other systems.
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

mod support;

// Unix only, each of these: `support::World` drives uv through a `/bin/sh` logging shim, finds
// venv programs under `bin/` (Windows: `Scripts\*.exe`) and runs `python3`; Windows is tested by
// the `windows*` modules, under Wine here and on the CI's Windows runner.
#[cfg(unix)]
mod adversarial;
#[cfg(unix)]
mod ci_cache;
#[cfg(unix)]
mod cli;
#[cfg(unix)]
mod ensure;
#[cfg(unix)]
mod lock;
#[cfg(unix)]
mod packaging;
#[cfg(unix)]
mod penv_setup;
#[cfg(unix)]
mod pio;
#[cfg(unix)]
mod pio_world;
#[cfg(unix)]
mod platform;
#[cfg(unix)]
mod reliability;
#[cfg(unix)]
mod size;
#[cfg(unix)]
mod status;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
mod windows_paths;
#[cfg(windows)]
mod windows_platform;
#[cfg(windows)]
mod windows_real;
