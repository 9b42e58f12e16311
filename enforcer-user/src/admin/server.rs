//! The daemon side of the admin API: the socket, the peer credential check and the request
//! loop.

use std::{
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;

use super::{ErrorCode, Request, Response, handlers};
use crate::daemon::DaemonState;

/// Maximum length of one request line.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Errors from setting up the admin socket.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin group {group:?} not found: create it, or set [admin] group to an existing group name or numeric gid"
    )]
    UnknownGroup { group: String },
    #[error("failed to set up the admin socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Identity of the process on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS) at connect time.
    pub groups: Vec<u32>,
}

impl Peer {
    /// Audit actor name of this peer.
    pub fn actor(&self) -> String {
        format!("admin:uid={}", self.uid)
    }
}

/// Returns whether `peer` may use the admin API, which root and members of `admin_gid` may.
pub fn is_authorized(peer: &Peer, admin_gid: Option<u32>) -> bool {
    if peer.uid == 0 {
        return true;
    }
    match admin_gid {
        Some(gid) => peer.gid == gid || peer.groups.contains(&gid),
        None => false,
    }
}

/// Resolves a group name or numeric gid.
pub fn resolve_group(group: &str) -> Result<u32, AdminError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        _ => Err(AdminError::UnknownGroup {
            group: group.to_owned(),
        }),
    }
}

/// Binds the admin socket at `path`, readable and writable by root and `admin_gid` only, and
/// serves requests until `shutdown`.
pub fn serve(
    state: DaemonState,
    path: &Path,
    admin_gid: Option<u32>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let socket_error = |source| AdminError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(socket_error)?;
    }
    // The store lock guarantees that no other daemon owns this socket, so a file left here is
    // stale.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(socket_error(err)),
    }
    let listener = UnixListener::bind(path).map_err(socket_error)?;
    let mode = if admin_gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(socket_error)?;
    if let Some(gid) = admin_gid {
        std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(socket_error)?;
    }
    tracing::info!(socket = %path.display(), ?admin_gid, "admin API listening");

    let path = path.to_path_buf();
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::error!(error = %err, "failed to accept an admin connection");
                        continue;
                    }
                },
            };
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(err) = serve_connection(state, stream, admin_gid).await {
                    tracing::warn!(error = %err, "admin connection failed");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn serve_connection(
    state: DaemonState,
    stream: UnixStream,
    admin_gid: Option<u32>,
) -> std::io::Result<()> {
    let peer = peer_of(&stream)?;
    let (reader, mut writer) = stream.into_split();
    // The request is read before the check, so a rejected client reads the rejection instead
    // of failing to write its request to a closed socket.
    let mut line = String::new();
    let mut reader = BufReader::new(reader).take(MAX_REQUEST_BYTES as u64);
    reader.read_line(&mut line).await?;
    if !is_authorized(&peer, admin_gid) {
        tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "rejected admin caller");
        let response = Response::Error {
            code: ErrorCode::Denied,
            message: format!(
                "permission denied: uid {} is neither root nor in the admin group",
                peer.uid
            ),
        };
        return write_response(&mut writer, &response).await;
    }

    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let actor = peer.actor();
            tokio::task::spawn_blocking(move || handlers::handle(&state, request, &actor))
                .await
                .unwrap_or_else(|err| Response::Error {
                    code: ErrorCode::Internal,
                    message: format!("request handler failed: {err}"),
                })
        }
        Err(err) => Response::Error {
            code: ErrorCode::Invalid,
            message: format!("invalid request: {err}"),
        },
    };
    write_response(&mut writer, &response).await
}

async fn write_response(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes).await?;
    writer.shutdown().await
}

fn peer_of(stream: &UnixStream) -> std::io::Result<Peer> {
    let credentials = stream.peer_cred()?;
    Ok(Peer {
        pid: credentials.pid(),
        uid: credentials.uid(),
        gid: credentials.gid(),
        groups: peer_groups(stream)?,
    })
}

/// Returns the peer's supplementary groups at connect time (SO_PEERGROUPS, Linux 4.13).
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut length = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `length` bytes and the kernel writes at most that
        // many. The kernel sets `length` to the bytes written, or to the size needed on ERANGE.
        let result = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut length,
            )
        };
        let count = length as usize / std::mem::size_of::<libc::gid_t>();
        if result == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: Some(1),
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_is_authorized_without_group() {
        assert!(is_authorized(&peer(0, 0, &[]), None));
    }

    #[test]
    fn supplementary_admin_group_is_authorized() {
        assert!(is_authorized(&peer(1000, 1000, &[27, 4242]), Some(4242)));
    }

    #[test]
    fn primary_admin_group_is_authorized() {
        assert!(is_authorized(&peer(1000, 4242, &[]), Some(4242)));
    }

    #[test]
    fn other_user_is_rejected() {
        assert!(!is_authorized(&peer(1000, 1000, &[27]), Some(4242)));
    }

    #[test]
    fn other_user_without_admin_group_is_rejected() {
        assert!(!is_authorized(&peer(1000, 1000, &[4242]), None));
    }

    #[test]
    fn numeric_group_resolves() {
        assert_eq!(resolve_group("4242").unwrap(), 4242);
    }

    #[test]
    fn unknown_group_name_is_an_error() {
        let err = resolve_group("no-such-group-enforcer").unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }
}
