//! The CLI side of the admin API.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Request, Response};

/// Time allowed for one request, including a policy reload on a large store.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors from talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "failed to connect to the admin socket {path}: {source}; check that `enforcer run` is running and that you are root or in the admin group"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on the admin socket {path}: run the command as root, or as a member of the group that `[admin] group` names in the daemon's configuration"
    )]
    Denied { path: PathBuf },
    #[error(
        "timed out after {} s waiting for the daemon's response on {path}; the daemon applies admin requests one at a time, so a long request (a reload, a large batch) or a daemon stuck in a store write holds it; check its log",
        REQUEST_TIMEOUT.as_secs()
    )]
    Timeout { path: PathBuf },
    #[error("failed to talk to the daemon on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid response from the daemon on {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Sends `request` to the daemon listening on `socket` and returns its response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::Denied {
                path: socket.to_path_buf(),
            }
        } else {
            ClientError::Connect {
                path: socket.to_path_buf(),
                source,
            }
        }
    })?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|err| ClientError::Invalid {
        path: socket.to_path_buf(),
        message: err.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;

    let mut reply = String::new();
    // An expired SO_RCVTIMEO makes the read fail with EAGAIN, whose text ("Resource
    // temporarily unavailable") does not say that the daemon was slow.
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
                path: socket.to_path_buf(),
            },
            _ => io(source),
        })?;
    if reply.is_empty() {
        return Err(ClientError::Invalid {
            path: socket.to_path_buf(),
            message: "the daemon closed the connection without a response".to_owned(),
        });
    }
    serde_json::from_str(&reply).map_err(|err| ClientError::Invalid {
        path: socket.to_path_buf(),
        message: err.to_string(),
    })
}
