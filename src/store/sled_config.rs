//! The sled settings a store is opened with. Compression is fixed when a
//! store is created (sled refuses to open a store with the other setting), so
//! an existing store is opened the way its `conf` file says it was made.

use std::path::Path;

/// zstd level for new stores: zstd's own default. Paths and file records
/// compress well (long shared prefixes); content hashes do not. BENCHMARKS.md
/// ("sled on disk") has the bytes per file with and without.
const COMPRESSION_LEVEL: i32 = 3;

/// Page cache: the HNSW already holds every vector in memory, and sled's
/// cache mostly serves file records, so its 1 GiB default is too generous.
const CACHE_BYTES: u64 = 256 * 1024 * 1024;

pub(super) fn config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_BYTES)
        .use_compression(compressed(dir))
        .compression_factor(COMPRESSION_LEVEL)
}

/// Whether the store in `dir` is (or, being new, will be) compressed. Stores
/// made before compression say `use_compression: false` in their `conf`
/// (text lines, then a binary checksum).
fn compressed(dir: &Path) -> bool {
    match std::fs::read(dir.join("conf")) {
        Ok(conf) => conf_says_compressed(&String::from_utf8_lossy(&conf)).unwrap_or(true),
        // No conf: a new store. An unreadable one: sled's open reports it.
        Err(_) => true,
    }
}

/// The `use_compression` line of sled's `conf`, if it has one.
fn conf_says_compressed(conf: &str) -> Option<bool> {
    conf.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "use_compression")
        .and_then(|(_, v)| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_compression_setting_sled_wrote() {
        let conf = "segment_size: 524288\nuse_compression: false\nversion: 0.34\n";
        assert_eq!(conf_says_compressed(conf), Some(false));
        assert_eq!(conf_says_compressed("use_compression: true\n"), Some(true));
        assert_eq!(conf_says_compressed("segment_size: 1\n"), None);
    }

    #[test]
    fn a_new_store_is_compressed_and_an_old_one_opens_as_it_was_made() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        drop(config(&new).open().unwrap());
        let conf = std::fs::read(new.join("conf")).unwrap();
        assert_eq!(
            conf_says_compressed(&String::from_utf8_lossy(&conf)),
            Some(true)
        );

        let old = dir.path().join("old");
        drop(sled::Config::new().path(&old).open().unwrap());
        // sled refuses a change of setting, so this open proves it matched.
        config(&old).open().unwrap().flush().unwrap();
        assert!(!compressed(&old));
    }
}
