//! Real photo libraries (issue 19) against the real daemon: capture dates
//! read from EXIF (fixtures with known DateTimeOriginal, written by
//! scripts/make_dated_fixtures.py with the expected values), date filters,
//! paging, and thumbnails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use dualsight::server::proto::dual_sight_client::DualSightClient;
use dualsight::server::proto::{self, search_by_image_request::Query};
use tonic::Code;
use tonic::transport::Channel;

use crate::cli::{dualsight, run_ok};
use crate::daemon::{Daemon, wait_for};
use crate::util::{fixtures, image};

/// A file's mtime for the undated photo: 2020-02-02 02:02:02 UTC.
const UNDATED_MTIME: i64 = 1_580_608_922;

fn dated_dir() -> PathBuf {
    fixtures().join("images").join("dated")
}

#[derive(Debug, serde::Deserialize)]
struct Expected {
    taken_at_unix: Option<i64>,
    taken_from: String,
    width: u32,
    height: u32,
}

fn expected() -> BTreeMap<String, Expected> {
    serde_json::from_str(&std::fs::read_to_string(dated_dir().join("expected.json")).unwrap())
        .unwrap()
}

/// The dated photos copied into the daemon's folder (the undated one with a known mtime).
fn copy_dated(to: &Path) -> Vec<PathBuf> {
    expected()
        .keys()
        .map(|name| {
            let dest = to.join(name);
            std::fs::copy(dated_dir().join(name), &dest).unwrap();
            if name.contains("undated") {
                let t = UNIX_EPOCH + Duration::from_secs(UNDATED_MTIME as u64);
                std::fs::File::options()
                    .write(true)
                    .open(&dest)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
            dest
        })
        .collect()
}

async fn search(c: &mut DualSightClient<Channel>, req: proto::SearchRequest) -> Vec<proto::Hit> {
    c.search(req).await.unwrap().into_inner().hits
}

fn names(hits: &[proto::Hit]) -> Vec<String> {
    let mut n: Vec<String> = hits
        .iter()
        .map(|h| {
            Path::new(&h.path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_dates_are_read_and_filter_searches() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let paths = copy_dated(&d.photos);
    wait_for(&d, &mut c, "5 indexed", |s| {
        s.indexed_files == 5 && s.pending_files == 0
    })
    .await;
    let all = search(
        &mut c,
        proto::SearchRequest {
            text: "a photo".into(),
            limit: 100,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all.len(), 5);
    let want = expected();
    for hit in &all {
        let name = Path::new(&hit.path).file_name().unwrap().to_str().unwrap();
        let w = &want[name];
        let taken = w.taken_at_unix.unwrap_or(UNDATED_MTIME);
        assert_eq!(
            (
                hit.taken_at_unix,
                hit.taken_from.as_str(),
                hit.width,
                hit.height
            ),
            (taken, w.taken_from.as_str(), w.width, w.height),
            "{name}"
        );
        let size = std::fs::metadata(&hit.path).unwrap().len();
        assert_eq!(hit.size_bytes, size, "{name}");
    }

    // 2020-01-01 ..= 2023-12-31 keeps exactly the 2020, 2021 and 2023 photos.
    let ranged = |after: Option<i64>, before: Option<i64>| proto::SearchRequest {
        text: "a photo".into(),
        limit: 100,
        taken_after: after,
        taken_before: before,
        ..Default::default()
    };
    let hits = search(&mut c, ranged(Some(1_577_836_800), Some(1_704_067_199))).await;
    assert_eq!(
        names(&hits),
        [
            "astronaut_undated.jpg",
            "coffee_2023.jpg",
            "rocket_2021.jpg"
        ]
    );
    // Bounds are inclusive, to the second.
    let exact = want["camera_2024.jpg"].taken_at_unix.unwrap();
    let hits = search(&mut c, ranged(Some(exact), Some(exact))).await;
    assert_eq!(names(&hits), ["camera_2024.jpg"]);
    let hits = search(&mut c, ranged(Some(exact + 1), None)).await;
    assert!(hits.is_empty(), "{hits:?}");
    let hits = search(&mut c, ranged(None, Some(1_577_836_800))).await;
    assert_eq!(names(&hits), ["cat_2019.jpg"]);
    // The filter applies before the limit.
    let mut one = ranged(None, Some(1_577_836_800));
    one.limit = 1;
    assert_eq!(names(&search(&mut c, one).await), ["cat_2019.jpg"]);
    // By image too.
    let hits = c
        .search_by_image(proto::SearchByImageRequest {
            query: Some(Query::Path(paths[0].to_string_lossy().into())),
            limit: 100,
            taken_after: Some(1_600_000_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(
        names(&hits),
        ["camera_2024.jpg", "coffee_2023.jpg", "rocket_2021.jpg"]
    );
    // An empty range is a mistake, named.
    let e = c.search(ranged(Some(10), Some(9))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("taken_after"), "{e:?}");

    // The CLI's dates: --before a bare date includes that whole day.
    let out = run_ok(
        dualsight()
            .args(["search", "a photo", "--json", "--addr", &d.addr])
            .args(["--after", "2020-01-01", "--before", "2023-08-20"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<&str> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "astronaut_undated.jpg",
            "coffee_2023.jpg",
            "rocket_2021.jpg"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_follow_each_other_with_no_gap_and_no_repeat() {
    let d = Daemon::start();
    let mut c = d.client().await;
    copy_dated(&d.photos);
    for name in [
        "chelsea.png",
        "coffee.webp",
        "rocket.jpg",
        "camera.png",
        "logo.png",
        "camera_grey.jpg",
        "coffee_red_16bit.png",
    ] {
        std::fs::copy(image(name), d.photos.join(name)).unwrap();
    }
    // A copy: two hits with one vector, the same score.
    std::fs::copy(image("chelsea.png"), d.photos.join("chelsea copy.png")).unwrap();
    wait_for(&d, &mut c, "13 indexed", |s| {
        s.indexed_files == 13 && s.pending_files == 0
    })
    .await;
    let query = |limit, offset| proto::SearchRequest {
        text: "a cat".into(),
        limit,
        offset,
        ..Default::default()
    };
    let all = search(&mut c, query(100, 0)).await;
    assert_eq!(all.len(), 13);
    for per_page in [1u32, 3, 4, 5] {
        let mut paged = Vec::new();
        for page in 0.. {
            let hits = search(&mut c, query(per_page, page * per_page)).await;
            assert!(hits.len() <= per_page as usize);
            if hits.is_empty() {
                break;
            }
            paged.extend(hits);
        }
        let paths = |h: &[proto::Hit]| h.iter().map(|h| h.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&paged), paths(&all), "pages of {per_page}");
    }
    // The CLI's --page: ranks continue.
    let out = run_ok(
        dualsight()
            .args(["search", "a cat", "--json", "--limit", "4", "--page", "2"])
            .args(["--addr", &d.addr]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 4);
    assert_eq!(hits[0]["rank"], 5);
    assert_eq!(hits[0]["path"], all[4].path.as_str());
}

async fn thumbnail(
    c: &mut DualSightClient<Channel>,
    path: &Path,
    size: u32,
) -> Result<proto::Thumbnail, tonic::Status> {
    c.get_thumbnail(proto::ThumbnailRequest {
        path: path.to_string_lossy().into(),
        size,
    })
    .await
    .map(|r| r.into_inner())
}

fn thumbs_on_disk(data: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(data.join("thumbs"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn thumbnails_are_made_at_indexing_and_survive_a_rename() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let coffee = d.photos.join("coffee_2023.jpg");
    std::fs::copy(dated_dir().join("coffee_2023.jpg"), &coffee).unwrap();
    let cat = d.photos.join("cat.jpg");
    std::fs::copy(dated_dir().join("cat_2019.jpg"), &cat).unwrap();
    std::fs::write(d.photos.join("notes.txt"), "not a photo").unwrap();
    wait_for(&d, &mut c, "2 indexed", |s| {
        s.indexed_files == 2 && s.pending_files == 0
    })
    .await;
    assert_eq!(
        thumbs_on_disk(&d.data).len(),
        2,
        "one per photo, at indexing"
    );

    let t = thumbnail(&mut c, &coffee, 0).await.unwrap();
    let decoded = ::image::load_from_memory(&t.jpeg).unwrap();
    // 320×213 stored, turned upright by its EXIF orientation, at most 256 px.
    assert_eq!((t.width, t.height), (170, 256));
    assert_eq!((decoded.width(), decoded.height()), (170, 256));
    let small = thumbnail(&mut c, &coffee, 64).await.unwrap();
    assert_eq!(small.width.max(small.height), 64);
    assert_eq!(
        ::image::load_from_memory(&small.jpeg).unwrap().height(),
        small.height
    );

    // Renamed: the same thumbnail under the new path, none made again.
    let renamed = d.photos.join("renamed.jpg");
    std::fs::rename(&coffee, &renamed).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let moved = loop {
        if let Ok(t) = thumbnail(&mut c, &renamed, 0).await {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(moved.jpeg, t.jpeg);
    wait_for(&d, &mut c, "the old path gone", |s| {
        s.indexed_files == 2 && s.pending_files == 0
    })
    .await;
    assert_eq!(
        thumbnail(&mut c, &coffee, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(thumbs_on_disk(&d.data).len(), 2);

    // Only indexed paths: a file that exists but is not indexed is never read.
    for other in [
        d.photos.join("notes.txt"),
        PathBuf::from("/etc/hostname"),
        d.photos.join("missing.jpg"),
    ] {
        let e = thumbnail(&mut c, &other, 0).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{}: {e:?}", other.display());
    }
    let e = thumbnail(&mut c, Path::new("relative.jpg"), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A lost thumbnail (a cache) is made again from the indexed file.
    for f in thumbs_on_disk(&d.data) {
        std::fs::remove_file(f).unwrap();
    }
    let again = thumbnail(&mut c, &cat, 0).await.unwrap();
    assert_eq!(again.width.max(again.height), 256);
    assert_eq!(thumbs_on_disk(&d.data).len(), 1);
}
