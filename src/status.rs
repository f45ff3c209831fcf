//! `penv-guard status` (not built yet).

use crate::cli::StatusArgs;
use crate::error::{Error, Result};

pub fn run(_args: &StatusArgs) -> Result<()> {
    Err(Error::Usage("`penv-guard status` is not built yet".into()))
}
