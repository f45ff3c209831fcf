//! Build-directory sizes (not built yet).

use std::path::Path;

use crate::cli::SizeArgs;
use crate::error::{Error, Result};

pub fn run(_args: &SizeArgs) -> Result<()> {
    Err(Error::Usage("`penv-guard size` is not built yet".into()))
}

pub fn cached_summary(_project_dir: &Path, _env: &str) -> Option<String> {
    None
}
