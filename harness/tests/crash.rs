//! A short run of the crash harness against the real daemon (the full
//! 100-round run is `target/release/dualsight-crash --rounds 100`, its
//! result in BENCHMARKS.md).

use std::path::PathBuf;
use std::time::Duration;

use dualsight_harness::crash::{Harness, Options};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_survives_kill_9_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let dualsight =
        PathBuf::from(env!("CARGO_BIN_EXE_dualsight-crash")).with_file_name("dualsight");
    assert!(
        dualsight.is_file(),
        "build the dualsight binary first: cargo build --release"
    );
    let options = Options {
        dualsight,
        model: repo().join("tests/fixtures/fashion/model"),
        sources: dualsight_harness::photos_under(&repo().join("tests/fixtures/fashion/train"))
            .unwrap(),
        work: tmp.path().to_path_buf(),
        rounds: 6,
        seed: 7,
        settle: Duration::from_secs(60),
    };
    let report = Harness::new(options).unwrap().run().await.unwrap();
    assert!(
        report.broken.is_empty(),
        "{} of {} rounds survived:\n{}",
        report.survived,
        report.rounds,
        report.broken.join("\n")
    );
    assert_eq!(report.survived, 6);
    assert!(report.changes > 6 && report.files > 0);
}
