//! `dualsight fsck`: checks a stopped daemon's store, for operators and the
//! crash harness: every vector read back against its checksum, every record
//! recounted, every cross-tree link and counter checked ([`Store::verify`]).
//! `--repair` forgets damaged vectors so the daemon embeds their files again.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::store::SledStore;

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// The daemon's --data-dir (the daemon must be stopped).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Print the counts as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Forget vectors whose records are damaged: their files stay recorded
    /// and the daemon's next scan embeds them again.
    #[arg(long)]
    pub repair: bool,
}

pub fn run(args: &FsckArgs) -> Result<()> {
    let dir = args.data_dir.join("store");
    if !dir.is_dir() {
        bail!("{}: no store (is --data-dir the daemon's?)", dir.display());
    }
    let store = SledStore::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let mut repaired = 0u64;
    for info in store.spaces()? {
        let space = store.space(&info.fingerprint, info.dim)?;
        let damaged = store.damaged_vectors(&space)?;
        if damaged.is_empty() {
            continue;
        }
        if !args.repair {
            bail!(
                "{}: {} damaged vectors (ids {}{}) in model space {}: run `dualsight fsck --data-dir {} --repair`, then start the daemon to embed their files again",
                space.segment_path().display(),
                damaged.len(),
                damaged
                    .iter()
                    .take(10)
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if damaged.len() > 10 { ", ..." } else { "" },
                info.fingerprint,
                args.data_dir.display(),
            );
        }
        repaired += store.forget_vectors(&space, &damaged)?;
    }
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
                "failures": failures, "spaces": spaces, "repaired_vectors": repaired,
            })
        );
    } else {
        println!(
            "{}: ok: {files} files ({indexed} indexed), {failures} failures, {} model spaces{}",
            dir.display(),
            spaces.len(),
            if repaired > 0 {
                format!(
                    ", {repaired} damaged vectors forgotten (the daemon embeds their files again)"
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
