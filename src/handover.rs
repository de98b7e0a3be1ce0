//! Upgrades without a restart (SPEC §7): a running sluice offers its listening sockets
//! on a Unix socket; a new process (`--upgrade`) takes them (SCM_RIGHTS), serves on
//! them, and says so; the old one then stops accepting, lets go of the Unix socket, and
//! drains like at SIGTERM. Both processes hold the same listening sockets during the
//! handover, so the kernel's accept queue never closes: no connection is refused.
//!
//! The exchange, one line of JSON and then short text lines:
//! 1. old → new: `{"listeners": [ADDR, ...], "admin": ADDR | null}` with the sockets,
//!    in that order, as ancillary data;
//! 2. new → old: `serving` once it accepts on them;
//! 3. old → new: `released` once it let go of the Unix socket, which the new process
//!    then listens on for the next upgrade;
//! 4. new → old: `ok`; only then does the old process stop accepting and drain.
//!
//! A new process that fails (a bad config, a crash) before step 4 leaves the old one
//! serving, listening on the Unix socket again. The old process waits for each step
//! as long as the new one lives: it gives up only when the connection closes, never
//! on a timer that a slow but healthy new process could outlast (two processes would
//! then serve for good). The Unix socket is made accessible to its owner only.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

use crate::app::Inherited;
use crate::state::State;

/// The most sockets one handover carries.
const MAX_SOCKETS: usize = 128;
/// How long the old process may take to answer the new one.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("no sluice is running on the upgrade socket {path}: {source}")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("upgrade socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("upgrade socket {path}: {why}")]
    Protocol { path: PathBuf, why: String },
    #[error(
        "upgrade socket {path} is in use by a running sluice; start the new one with --upgrade"
    )]
    InUse { path: PathBuf },
    #[error("upgrade socket {path}: a file that is not a socket is in the way")]
    NotASocket { path: PathBuf },
}

/// What the old process offers: the configured address of each socket, in order.
#[derive(serde::Serialize, serde::Deserialize)]
struct Offer {
    listeners: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// The new process's side of a handover under way.
pub struct Taking {
    stream: UnixStream,
    path: PathBuf,
}

/// Connects to the sluice running on `path` and takes its listening sockets. Blocking.
pub fn take(path: &Path) -> Result<(Inherited, Taking), HandoverError> {
    let stream = UnixStream::connect(path).map_err(|source| HandoverError::NotRunning {
        path: path.to_owned(),
        source,
    })?;
    let io_err = |source| HandoverError::Io {
        path: path.to_owned(),
        source,
    };
    stream
        .set_read_timeout(Some(RELEASE_TIMEOUT))
        .map_err(io_err)?;
    let mut header = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut header)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io_err(e.into()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let bad = |why: String| HandoverError::Protocol {
        path: path.to_owned(),
        why,
    };
    let offer: Offer = serde_json::from_slice(&header[..got.bytes])
        .map_err(|e| bad(format!("unreadable offer: {e}")))?;
    let expected = offer.listeners.len() + usize::from(offer.admin.is_some());
    if fds.len() != expected {
        return Err(bad(format!(
            "{} sockets for {expected} addresses",
            fds.len()
        )));
    }
    // Each must be a listening TCP socket on the address it is offered for.
    let listening = |addr: SocketAddr, fd: OwnedFd| {
        let accepts = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
        let socket = std::net::TcpListener::from(fd);
        let fits = socket.local_addr().ok().is_some_and(|on| {
            on.ip() == addr.ip() && (addr.port() == 0 || on.port() == addr.port())
        });
        if accepts && fits {
            Ok(socket)
        } else {
            Err(bad(format!(
                "the socket offered for {addr} is not listening there"
            )))
        }
    };
    let mut fds = fds.into_iter();
    let mut inherited = Inherited::default();
    for addr in offer.listeners {
        if let Some(fd) = fds.next() {
            inherited.listeners.push((addr, listening(addr, fd)?));
        }
    }
    if let (Some(addr), Some(fd)) = (offer.admin, fds.next()) {
        inherited.admin = Some((addr, listening(addr, fd)?));
    }
    Ok((
        inherited,
        Taking {
            stream,
            path: path.to_owned(),
        },
    ))
}

impl Taking {
    /// Tells the old process that this one serves, waits until it has let go of the
    /// Unix socket, listens on it, and tells the old process to drain. Blocking; the
    /// Unix socket comes back to serve the next upgrade on.
    pub fn serving(self) -> Result<std::os::unix::net::UnixListener, HandoverError> {
        let path = self.path;
        let io_err = |source| HandoverError::Io {
            path: path.clone(),
            source,
        };
        (&self.stream).write_all(b"serving\n").map_err(io_err)?;
        let mut line = String::new();
        BufReader::new(&self.stream)
            .read_line(&mut line)
            .map_err(io_err)?;
        if line.trim() != "released" {
            return Err(HandoverError::Protocol {
                path,
                why: format!("expected \"released\", got {:?}", line.trim()),
            });
        }
        let listener = bind_owner_only(&path)?;
        (&self.stream).write_all(b"ok\n").map_err(io_err)?;
        Ok(listener)
    }
}

/// Listens on `path` for a new process to take over (the running process's side).
/// Returns once one has: the caller then stops accepting and drains. A new process
/// that gives up changes nothing; the next one may try. Dropping the future (at
/// shutdown) removes the Unix socket.
pub async fn offer(path: PathBuf, state: Arc<State>) -> Result<(), HandoverError> {
    let listener = listen(&path)?;
    offer_on(listener, path, state).await
}

/// `offer`, on a Unix socket already bound (by a process that took over).
pub async fn offer_on(
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    state: Arc<State>,
) -> Result<(), HandoverError> {
    let io_err = |source| HandoverError::Io {
        path: path.clone(),
        source,
    };
    let mut socket = OwnedSocket::new(listener, &path).map_err(io_err)?;
    tracing::info!(path = %path.display(), "upgrade socket listening");
    loop {
        let stream = match socket.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sockets = Sockets::of(&state);
        if sockets.listeners.is_empty() {
            continue; // not serving (starting, or draining): nothing to hand over
        }
        let exchange = tokio::task::spawn_blocking(move || hand_over(stream, sockets)).await;
        let stream = match exchange {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upgrade abandoned by the new process; still serving");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "upgrade failed; still serving");
                continue;
            }
        };
        // The new process serves: let go of the Unix socket for it, tell it, and wait
        // until it listens there. If it dies meanwhile, take the socket back.
        drop(socket);
        let released = tokio::task::spawn_blocking(move || {
            (&stream).write_all(b"released\n")?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            Ok::<_, io::Error>(line.trim() == "ok")
        })
        .await;
        if let Ok(Ok(true)) = released {
            tracing::info!("upgrade: the new process serves; draining");
            return Ok(());
        }
        tracing::warn!(
            "upgrade abandoned by the new process before it took the socket; still serving"
        );
        socket = OwnedSocket::new(listen(&path)?, &path).map_err(io_err)?;
    }
}

/// The Unix socket this process listens on; its file is removed when this is dropped
/// (handed over, or shutdown).
struct OwnedSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl OwnedSocket {
    fn new(listener: std::os::unix::net::UnixListener, path: &Path) -> io::Result<OwnedSocket> {
        listener.set_nonblocking(true)?;
        Ok(OwnedSocket {
            listener: tokio::net::UnixListener::from_std(listener)?,
            path: path.to_owned(),
        })
    }

    /// The next connection, as a blocking std stream (the exchange is a few lines).
    async fn accept(&self) -> io::Result<UnixStream> {
        let (stream, _) = self.listener.accept().await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

impl Drop for OwnedSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the Unix socket at `path`, replacing a stale socket file, refusing one in use
/// or a file that is not a socket.
fn listen(path: &Path) -> Result<std::os::unix::net::UnixListener, HandoverError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(HandoverError::NotASocket {
                path: path.to_owned(),
            });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(HandoverError::InUse {
                path: path.to_owned(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    bind_owner_only(path)
}

/// Binds a Unix socket at `path` that only this user may connect to: whoever connects
/// receives the listening sockets.
fn bind_owner_only(path: &Path) -> Result<std::os::unix::net::UnixListener, HandoverError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |source| HandoverError::Io {
        path: path.to_owned(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// The sockets to hand over, with their configured addresses.
struct Sockets {
    listeners: Vec<(SocketAddr, OwnedFd)>,
    admin: Option<(SocketAddr, OwnedFd)>,
}

impl Sockets {
    fn of(state: &State) -> Sockets {
        Sockets {
            listeners: state.shared.listeners.sockets(),
            admin: state.admin_socket(),
        }
    }
}

/// Sends the offer and waits for the new process to serve, as long as it lives.
/// Blocking.
fn hand_over(stream: UnixStream, sockets: Sockets) -> io::Result<UnixStream> {
    let offer = Offer {
        listeners: sockets.listeners.iter().map(|(a, _)| *a).collect(),
        admin: sockets.admin.as_ref().map(|(a, _)| *a),
    };
    let header = serde_json::to_vec(&offer).map_err(io::Error::other)?;
    {
        let fds: Vec<_> = sockets
            .listeners
            .iter()
            .map(|(_, fd)| fd.as_fd())
            .chain(sockets.admin.as_ref().map(|(_, fd)| fd.as_fd()))
            .collect();
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("too many sockets for one message"));
        }
        sendmsg(
            &stream,
            &[IoSlice::new(&header)],
            &mut control,
            SendFlags::empty(),
        )?;
    }
    // Our copies go now: a listener a reload removes meanwhile must not stay open.
    drop(sockets);
    stream.set_read_timeout(None)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    match line.trim() {
        "serving" => Ok(stream),
        "" => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the new process left before serving",
        )),
        other => Err(io::Error::other(format!("unexpected {other:?}"))),
    }
}
