//! One integration binary: every test runs the real `penv-guard` against real venvs made by the
//! real uv, with tiny wheels built by the tests (no index, no network).

mod support;

mod adversarial;
mod ci_cache;
mod cli;
mod ensure;
mod lock;
mod packaging;
mod penv_setup;
mod pio;
mod pio_world;
mod platform;
mod reliability;
mod size;
mod status;
#[cfg(windows)]
mod windows_platform;
