//! A `dualsight serve` child process for the harnesses: started on a
//! folder and a data dir, reached over gRPC on a free port, killed with
//! SIGKILL when dropped (the crash harness's kill), or stopped with SIGTERM.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dualsight::server::proto::dual_sight_client::DualSightClient;
use tonic::transport::Channel;

/// What a daemon is started on.
#[derive(Debug, Clone)]
pub struct Launch {
    pub dualsight: PathBuf,
    pub model: PathBuf,
    pub config: PathBuf,
    pub photos: PathBuf,
    pub data: PathBuf,
    /// stderr (the log, at `info`) is appended here.
    pub log: PathBuf,
    /// More `serve` flags (a node name).
    pub extra: Vec<String>,
}

pub struct Daemon {
    child: Option<Child>,
    pub addr: String,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Daemon {
    pub fn spawn(l: &Launch) -> Result<Daemon> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = OpenOptions::new().create(true).append(true).open(&l.log)?;
        let child = Command::new(&l.dualsight)
            .arg("serve")
            .arg("--config")
            .arg(&l.config)
            .arg("--model")
            .arg(&l.model)
            .arg("--watch")
            .arg(&l.photos)
            .arg("--data-dir")
            .arg(&l.data)
            .args(["--listen", &addr, "--device", "cpu"])
            .args(&l.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", l.dualsight.display()))?;
        Ok(Daemon {
            child: Some(child),
            addr,
            log: l.log.clone(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client, once the daemon listens (30 s at most).
    pub async fn client(&self) -> Result<DualSightClient<Channel>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = DualSightClient::connect(format!("http://{}", self.addr)).await {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not listen within 30 s (log: {})",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// SIGTERM, then waits for the exit (a graceful stop: commit, checkpoint).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the daemon was already stopped");
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        Ok(child.wait()?)
    }
}

/// Resident and peak resident bytes of a process (VmRSS, VmHWM).
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Bytes the files under `dir` take on disk (allocated blocks, so holes
/// punched in vector segments do not count).
pub fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.blocks() * 512;
            }
        }
    }
    total
}
