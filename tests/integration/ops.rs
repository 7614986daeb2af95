//! Operating the daemon (issue 18), end to end against the real process:
//! `/metrics` scraped over HTTP and parsed as Prometheus text, the bearer
//! token, TLS and mutual TLS with certificates made here, the Unix socket's
//! mode, the refused insecure bind, and SIGHUP reloading the watched roots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dualsight::cli::client::{Client, Remote, connect_remote};
use dualsight::server::proto;
use tonic::Code;

use crate::cli::dualsight;
use crate::daemon::{Daemon, copy_photo, free_port, poll_status};
use crate::util::model_dir;

/// A client as the CLI builds it; retried while the daemon starts.
async fn connect(d: &Daemon, remote: &Remote) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect_remote(remote).await {
            Ok(c) => return c,
            Err(e) => assert!(
                Instant::now() < deadline,
                "cannot connect: {e}\nlog:\n{}",
                d.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls Status until `pred` holds (60 s), through the token-carrying client.
async fn wait_until(
    d: &Daemon,
    c: &mut Client,
    what: &str,
    pred: impl Fn(&proto::StatusResponse) -> bool,
) -> proto::StatusResponse {
    let ask = async || Ok(c.status(proto::StatusRequest {}).await?.into_inner());
    poll_status(d, what, ask, pred).await
}

async fn search(c: &mut Client, text: &str) -> Result<Vec<proto::Hit>, tonic::Status> {
    c.search(proto::SearchRequest {
        text: text.into(),
        limit: 10,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().hits)
}

async fn by_path(c: &mut Client, path: &Path) -> Result<Vec<proto::Hit>, tonic::Status> {
    c.search_by_image(proto::SearchByImageRequest {
        query: Some(proto::search_by_image_request::Query::Path(
            path.to_string_lossy().into(),
        )),
        limit: 1,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().hits)
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let mut resp = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .expect("GET /metrics");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = resp.body_mut().read_to_string().unwrap();
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels`: a counter
/// or gauge's value, a histogram's count (its +Inf bucket).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_the_work_done() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::prepare(model_dir("vit-bert"));
    d.args = vec!["--metrics-listen".into(), metrics.clone()];
    d.spawn();
    let mut c = connect(&d, &Remote::plain(&d.addr)).await;
    copy_photo("chelsea.png", &d.photos);
    copy_photo("rocket.jpg", &d.photos);
    wait_until(&d, &mut c, "2 indexed", |s| {
        s.indexed_files == 2 && s.pending_files == 0
    })
    .await;
    search(&mut c, "a cat").await.unwrap();
    search(&mut c, "a rocket").await.unwrap();
    let e = search(&mut c, " ").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let m = scrape(&metrics);
    let v = |name, labels: &[(&str, &str)]| {
        value(&m, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing"))
    };
    assert_eq!(v("dualsight_indexed_files", &[]), 2.0);
    assert_eq!(v("dualsight_index_vectors", &[]), 2.0);
    assert_eq!(v("dualsight_pending_files", &[]), 0.0);
    assert_eq!(v("dualsight_failed_files", &[]), 0.0);
    assert_eq!(v("dualsight_ingest_queue_depth", &[]), 0.0);
    assert_eq!(v("dualsight_embedded_images_total", &[]), 2.0);
    assert_eq!(v("dualsight_reused_vectors_total", &[]), 0.0);
    let ok = [("method", "Search"), ("code", "OK")];
    assert_eq!(v("dualsight_grpc_requests_total", &ok), 2.0);
    let bad = [("method", "Search"), ("code", "INVALID_ARGUMENT")];
    assert_eq!(v("dualsight_grpc_requests_total", &bad), 1.0);
    assert!(v("dualsight_grpc_requests_total", &[("method", "Status")]) >= 1.0);
    assert_eq!(
        v(
            "dualsight_grpc_request_duration_seconds",
            &[("method", "Search")]
        ),
        3.0
    );
    assert!(v("dualsight_embed_batch_duration_seconds", &[]) >= 1.0);
    assert!(v("process_resident_memory_bytes", &[]) > 10e6);
    assert!(v("dualsight_store_size_bytes", &[]) > 0.0);
    dashboard_plots_only_what_is_exported(&m);

    // A copy of a known photo reuses its vector; a new one is embedded.
    std::fs::copy(d.photos.join("chelsea.png"), d.photos.join("copy.png")).unwrap();
    copy_photo("coffee.webp", &d.photos);
    wait_until(&d, &mut c, "4 indexed", |s| {
        s.indexed_files == 4 && s.pending_files == 0
    })
    .await;
    let m = scrape(&metrics);
    assert_eq!(value(&m, "dualsight_embedded_images_total", &[]), Some(3.0));
    assert_eq!(value(&m, "dualsight_reused_vectors_total", &[]), Some(1.0));
    assert_eq!(value(&m, "dualsight_indexed_files", &[]), Some(4.0));
    assert_eq!(value(&m, "dualsight_index_vectors", &[]), Some(3.0));
}

/// Every series the shipped Grafana dashboard queries is in the scrape.
fn dashboard_plots_only_what_is_exported(m: &prometheus_parse::Scrape) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("dualsight_") || word.starts_with("process_") {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                names.insert(base.to_owned());
            }
        }
    }
    for name in &names {
        assert!(
            m.samples.iter().any(|x| &x.metric == name),
            "the dashboard plots {name}, which /metrics does not export"
        );
    }
    assert!(names.len() >= 10, "{names:?}");
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_locks_every_dualsight_rpc_but_not_health() {
    const TOKEN: &str = "tok-3f9a1c7e55d2";
    let mut d = Daemon::prepare(model_dir("vit-bert"));
    let token_file = d.data.with_extension("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    d.args = vec!["--token-file".into(), token_file.display().to_string()];
    d.spawn();
    copy_photo("chelsea.png", &d.photos);

    let mut open = connect(&d, &Remote::plain(&d.addr)).await;
    // Health answers without a token (probes), once the daemon is up.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", d.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        if h.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "never SERVING\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for e in [
        search(&mut open, "a cat").await.unwrap_err(),
        open.status(proto::StatusRequest {}).await.unwrap_err(),
        open.list_failures(proto::ListFailuresRequest { limit: 1 })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }

    let wrong = d.data.with_extension("wrong");
    std::fs::write(&wrong, "tok-3f9a1c7e55d3").unwrap();
    let mut bad = connect(
        &d,
        &Remote {
            token_file: Some(wrong),
            ..Remote::plain(&d.addr)
        },
    )
    .await;
    let e = search(&mut bad, "a cat").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let remote = Remote {
        token_file: Some(token_file.clone()),
        ..Remote::plain(&d.addr)
    };
    let mut c = connect(&d, &remote).await;
    wait_until(&d, &mut c, "1 indexed", |s| s.indexed_files == 1).await;
    let hits = search(&mut c, "a cat").await.unwrap();
    assert_eq!(hits.len(), 1);

    // The CLI takes the token from DUALSIGHT_TOKEN_FILE too.
    let out = dualsight()
        .args(["search", "a cat", "--json", "--addr", &d.addr])
        .env("DUALSIGHT_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("chelsea.png"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dualsight()
        .args(["status", "--addr", &d.addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unauthenticated"),
        "{stderr}"
    );
    assert!(!d.log().contains(TOKEN), "the token reached the log");
}

/// A CA, a server certificate for 127.0.0.1 it signed, and a client one.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "dualsight test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, sans) in [
            ("server", vec!["127.0.0.1", "localhost"]),
            ("client", vec!["client"]),
        ] {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(sans.into_iter().map(String::from).collect::<Vec<_>>())
                    .unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_mutual_tls_with_certificates_made_here() {
    let pki = Pki::new();
    let mut d = Daemon::prepare(model_dir("vit-bert"));
    d.args = vec![
        "--tls-cert".into(),
        pki.arg("server.pem"),
        "--tls-key".into(),
        pki.arg("server.key"),
    ];
    d.spawn();
    let https = format!("https://{}", d.addr);
    let tls = Remote {
        tls_ca: Some(pki.path("ca.pem")),
        ..Remote::plain(&https)
    };
    let mut c = connect(&d, &tls).await;
    wait_until(&d, &mut c, "ready", |s| s.ready).await;
    // Plaintext gRPC gets no answer from a TLS port.
    let plain = connect_remote(&Remote::plain(&d.addr)).await;
    if let Ok(mut p) = plain {
        p.status(proto::StatusRequest {}).await.unwrap_err();
    }
    // The CLI over https with the CA.
    let out = dualsight()
        .args(["status", "--json", "--addr", &https, "--tls-ca"])
        .arg(pki.path("ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A CA that did not sign the server's certificate is refused.
    let other = Pki::new();
    let e = connect_remote(&Remote {
        tls_ca: Some(other.path("ca.pem")),
        ..Remote::plain(&https)
    })
    .await;
    assert!(e.is_err(), "a foreign CA was accepted");
    drop(c);
    d.signal("TERM");

    // Mutual TLS: the same server, now requiring client certificates.
    d.args.extend(["--tls-client-ca".into(), pki.arg("ca.pem")]);
    d.spawn();
    let https = format!("https://{}", d.addr);
    let mut with_cert = connect(
        &d,
        &Remote {
            tls_ca: Some(pki.path("ca.pem")),
            tls_client_cert: Some(pki.path("client.pem")),
            tls_client_key: Some(pki.path("client.key")),
            ..Remote::plain(&https)
        },
    )
    .await;
    wait_until(&d, &mut with_cert, "ready", |s| s.ready).await;
    let without = connect_remote(&Remote {
        tls_ca: Some(pki.path("ca.pem")),
        ..Remote::plain(&https)
    })
    .await;
    match without {
        Err(_) => {}
        Ok(mut c) => {
            let e = c.status(proto::StatusRequest {}).await.unwrap_err();
            assert_ne!(e.code(), Code::Ok);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unix_socket_is_for_its_owner_and_group() {
    use std::os::unix::fs::PermissionsExt;
    for (config, want) in [("", 0o660), ("[server]\nsocket_mode = \"0600\"\n", 0o600)] {
        let mut d = Daemon::prepare(model_dir("vit-bert"));
        let socket = d.data.with_extension("sock");
        d.args = vec!["--unix-socket".into(), socket.display().to_string()];
        d.config_head = config.into();
        d.spawn();
        let addr = format!("unix:{}", socket.display());
        let mut c = connect(&d, &Remote::plain(&addr)).await;
        wait_until(&d, &mut c, "ready", |s| s.ready).await;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "socket mode {mode:o} with config {config:?}");
    }
}

#[test]
fn a_public_listen_address_without_token_or_tls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dualsight()
        .args(["serve", "--device", "cpu", "--listen"])
        .arg(format!("0.0.0.0:{port}"))
        .arg("--model")
        .arg(model_dir("vit-bert"))
        .arg("--watch")
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for words in [
        "0.0.0.0",
        "not a loopback",
        "--token-file",
        "allow_insecure = true",
    ] {
        assert!(stderr.contains(words), "`{words}` not in: {stderr}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "refused before touching the data dir"
    );
}

/// A root dropped from the config while the daemon was stopped is
/// forgotten at the next start, as a reload forgets one; before, no scan
/// covered it and its photos stayed searchable for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_root_dropped_while_stopped_is_forgotten_at_start() {
    let mut d = Daemon::prepare(model_dir("vit-bert"));
    let (a, b) = (d.photos.join("a"), d.photos.join("b"));
    for r in [a.clone(), b.join("deep")] {
        std::fs::create_dir_all(r).unwrap();
    }
    let in_a = copy_photo("chelsea.png", &a);
    let in_b = copy_photo("rocket.jpg", &b.join("deep"));
    d.roots = Some(vec![a.clone(), b.clone()]);
    d.spawn();
    let mut c = connect(&d, &Remote::plain(&d.addr)).await;
    wait_until(&d, &mut c, "a and b indexed", |s| {
        s.indexed_files == 2 && s.pending_files == 0
    })
    .await;
    assert!(d.signal("TERM").success(), "{}", d.log());

    d.roots = Some(vec![a.clone()]);
    d.spawn();
    let mut c = connect(&d, &Remote::plain(&d.addr)).await;
    wait_until(&d, &mut c, "b forgotten", |s| {
        s.indexed_files == 1 && s.pending_files == 0
    })
    .await;
    assert_eq!(
        by_path(&mut c, &in_b).await.unwrap_err().code(),
        Code::NotFound
    );
    let hits = by_path(&mut c, &in_a).await.unwrap();
    assert_eq!(Path::new(&hits[0].path), in_a);
    assert!(in_b.exists(), "the photo itself is left alone");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_and_removes_watched_roots() {
    let mut d = Daemon::prepare(model_dir("vit-bert"));
    let (a, b, c_root) = (d.photos.join("a"), d.photos.join("b"), d.photos.join("c"));
    for r in [&a, &b, &c_root] {
        std::fs::create_dir_all(r).unwrap();
    }
    let in_a = copy_photo("chelsea.png", &a);
    let in_b = copy_photo("rocket.jpg", &b);
    let in_c = copy_photo("coffee.webp", &c_root);
    d.roots = Some(vec![a.clone(), b.clone()]);
    d.spawn();
    let mut c = connect(&d, &Remote::plain(&d.addr)).await;
    wait_until(&d, &mut c, "a and b indexed", |s| {
        s.indexed_files == 2 && s.pending_files == 0
    })
    .await;
    assert_eq!(
        by_path(&mut c, &in_c).await.unwrap_err().code(),
        Code::NotFound
    );

    // Swap b for c, and turn debug logging on: one SIGHUP.
    d.roots = Some(vec![a.clone(), c_root.clone()]);
    d.config_head = "[log]\nlevel = \"debug\"\n".into();
    d.write_config();
    let pid = d.pid();
    hup(pid);
    let s = wait_until(&d, &mut c, "c in, b out", |s| {
        s.indexed_files == 2
            && s.pending_files == 0
            && s.roots.iter().any(|r| Path::new(&r.path) == c_root)
    })
    .await;
    let roots: Vec<&str> = s.roots.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(roots.len(), 2, "{roots:?}");
    assert!(!roots.iter().any(|r| Path::new(r) == b), "{roots:?}");
    // The counts above can also be the old state's (a + b) for a moment,
    // before the new root's scan is queued: wait for the swap itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while by_path(&mut c, &in_c).await.is_err() || by_path(&mut c, &in_b).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "c never replaced b:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = by_path(&mut c, &in_c).await.unwrap();
    assert_eq!(Path::new(&hits[0].path), in_c);
    assert_eq!(
        by_path(&mut c, &in_b).await.unwrap_err().code(),
        Code::NotFound
    );
    let hits = by_path(&mut c, &in_a).await.unwrap();
    assert_eq!(Path::new(&hits[0].path), in_a);
    assert!(in_b.exists(), "the photo itself is left alone");
    // Still a running daemon (no restart), now logging at debug.
    assert_eq!(d.pid(), pid);
    let log = d.log();
    assert!(log.contains("reload done"), "{log}");
    assert!(
        log.contains("DEBUG"),
        "no debug lines after the reload:\n{log}"
    );

    // New excludes: indexed files they leave out are forgotten (the watcher's
    // scans alone would only add).
    d.watch = "exclude = [\".*\", \"*.webp\"]\n".into();
    d.write_config();
    hup(pid);
    wait_until(&d, &mut c, "the webp left out", |s| {
        s.indexed_files == 1 && s.pending_files == 0
    })
    .await;
    assert_eq!(
        by_path(&mut c, &in_c).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(in_c.exists());
    let hits = by_path(&mut c, &in_a).await.unwrap();
    assert_eq!(Path::new(&hits[0].path), in_a);

    // New image limits apply to the next files.
    d.ingest = "max_image_bytes = 1000\n".into();
    d.write_config();
    hup(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.log().matches("reload done").count() < 3 {
        assert!(Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    copy_photo("camera.png", &a);
    wait_until(&d, &mut c, "the large photo refused", |s| {
        s.failed_files == 1 && s.pending_files == 0
    })
    .await;

    // A config that no longer parses is refused; the daemon keeps running.
    std::fs::write(&d.config, "[watch\n").unwrap();
    hup(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("reload refused") {
        assert!(Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        d.log().contains("dualsight.toml"),
        "the error names the file"
    );
    wait_until(&d, &mut c, "still serving", |s| s.indexed_files == 1).await;
}

/// `kill -HUP pid`: what `systemctl reload` sends.
fn hup(pid: u32) {
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

#[test]
fn the_log_can_be_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = dualsight()
        .args([
            "serve",
            "--device",
            "cpu",
            "--log-format",
            "json",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--model")
        .arg(model_dir("vit-bert"))
        .arg("--watch")
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        seen.push(v);
        if seen
            .iter()
            .any(|v| v["fields"]["message"].as_str() == Some("ready"))
        {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|v| v["fields"]["message"] == "listening"),
        "{seen:?}"
    );
}
