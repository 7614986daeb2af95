//! What the daemon exposes and how it is locked: the gRPC TCP listener, the
//! bearer token, TLS, the Unix socket's mode and group, and the metrics port.
//! Everything is read and bound here at start, so a wrong file or a taken
//! port stops the start with a message that names it.

use std::ffi::CString;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::{DaemonError, Result};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::server::{Access, Token};

/// Binds the gRPC TCP listener.
pub(super) async fn bind_grpc(settings: &Settings) -> Result<TcpListener> {
    let bind_error = |source| DaemonError::Bind {
        addr: settings.listen.clone(),
        source,
    };
    TcpListener::bind(settings.listen_addr()?)
        .await
        .map_err(bind_error)
}

/// The token, TLS and socket settings, read and checked.
pub(super) fn access(settings: &Settings, metrics: Option<Arc<Metrics>>) -> Result<Access> {
    let token = settings
        .server
        .token_file
        .as_deref()
        .map(Token::from_file)
        .transpose()?;
    let tls = settings.tls_files().map(|f| f.load()).transpose()?;
    let socket_group = settings
        .server
        .socket_group
        .as_deref()
        .map(group_id)
        .transpose()?;
    Ok(Access {
        token,
        tls,
        socket_mode: settings.socket_mode()?,
        socket_group,
        metrics,
    })
}

/// A group name or number as a gid.
fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let unknown = || {
        DaemonError::Config(crate::config::ConfigError::Invalid {
            key: "server.socket_group",
            msg: format!("`{group}`: no such group"),
        })
    };
    let name = CString::new(group).map_err(|_| unknown())?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the result only points into `grp` and `buf`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(unknown());
    }
    Ok(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        let e = group_id("no-such-group-dualsight").unwrap_err().to_string();
        assert!(
            e.contains("server.socket_group") && e.contains("no such group"),
            "{e}"
        );
    }
}
