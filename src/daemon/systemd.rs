//! The systemd notify protocol (`Type=notify`): READY once model and index
//! are loaded, STATUS lines with progress, WATCHDOG pings, STOPPING at
//! shutdown. A datagram to `$NOTIFY_SOCKET`; without it (not under systemd)
//! every call is a no-op. Small enough not to warrant a crate.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` if systemd set one (path or `@abstract`).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let p = p.to_string_lossy().into_owned();
            let addr = if let Some(name) = p.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&p).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Self { socket }
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.socket
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }
    /// A reload began; `ready` ends it (systemd's reload protocol).
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
    /// One status line (newlines would end the field; they are replaced).
    pub fn status(&self, line: &str) {
        self.send(&format!("STATUS={}", line.replace('\n', " ")));
    }
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Half the watchdog interval systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID")
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        Some(Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let addr = std::os::unix::net::SocketAddr::from_pathname(&path).unwrap();
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), addr)),
        };
        n.ready();
        n.status("indexing 3/10\nfiles");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=indexing 3/10 files");
        // Not under systemd: nothing to do, nothing fails.
        Notifier { socket: None }.ready();
    }
}
