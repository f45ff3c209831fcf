//! One integration binary: every test runs the real `penv-guard` against real venvs made by the
//! real uv, with tiny wheels built by the tests (no index, no network).

mod support;

// Unix-only for now: they run the real uv and CPython and use Unix paths and permissions; on
// Windows only the stand-in tests below build (issue 16 gates these one by one).
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
