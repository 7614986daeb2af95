//! `dualsight fsck`: checks a stopped daemon's store, for operators and the
//! crash harness: every record recounted, every cross-tree link and counter
//! checked ([`Store::verify`]).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::store::Store;

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// The daemon's --data-dir (the daemon must be stopped).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Print the counts as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &FsckArgs) -> Result<()> {
    let dir = args.data_dir.join("store");
    if !dir.is_dir() {
        bail!("{}: no store (is --data-dir the daemon's?)", dir.display());
    }
    let store = Store::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    store
        .verify()
        .with_context(|| format!("{}: inconsistent", dir.display()))?;
    let spaces = store.spaces()?;
    let (files, indexed, failures) = (
        store.file_count()?,
        store.indexed_file_count()?,
        store.failure_count()?,
    );
    if args.json {
        let spaces: Vec<_> = spaces
            .iter()
            .map(|s| {
                serde_json::json!({
                    "fingerprint": s.fingerprint, "dim": s.dim, "vectors": s.vectors,
                    "indexed_paths": s.indexed_paths, "active": s.active,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "ok": true, "files": files, "indexed_files": indexed,
                "failures": failures, "spaces": spaces,
            })
        );
    } else {
        println!(
            "{}: ok: {files} files ({indexed} indexed), {failures} failures, {} model spaces",
            dir.display(),
            spaces.len()
        );
    }
    Ok(())
}
