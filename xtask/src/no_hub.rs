//! A build without the `hub` feature: no `fetch` or `publish`, and a
//! `hub:` checkpoint is refused with the way to get one.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// A plain path stays as it is; `hub:<user/name>` needs the `hub` feature.
pub fn resolve_init(init: Option<PathBuf>) -> Result<Option<PathBuf>> {
    let Some(p) = init else { return Ok(None) };
    if let Some(repo) = p.to_str().and_then(|s| s.strip_prefix("hub:")) {
        bail!(
            "hub:{repo}: this xtask was built without the `hub` feature; rebuild with default \
             features, or download the checkpoint and pass its directory"
        );
    }
    Ok(Some(p))
}
