//! The platform layer: what differs between the operating systems penv-guard runs on, behind one
//! small interface per concern, each implemented once per OS. Code outside `os` names no
//! `std::os::unix`, `rustix` or Windows crate for these concerns.

pub mod fs;
pub mod path;
