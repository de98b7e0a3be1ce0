//! A large response body from a plain backend connection to a plain client connection,
//! moved by the kernel: splice(2) from the backend's socket into a pipe and from the
//! pipe into the client's socket. The bytes are never copied into sluice's memory and
//! back, which is most of the cost of a large body (see the README's 1 MiB figures).
//!
//! Only the bytes a length-framed body still has to come go this way, and only when
//! both sides are plain TCP; TLS on either side, chunked bodies and small ones take
//! the ordinary path through `write_response`.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::task::Poll;

use bytes::BytesMut;
use rustix::pipe::{self, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::respond::{Cut, client_left};
use super::sock::Reader;

/// The least a body must still have to come for the pipe to be worth it: below this,
/// one read and one write through sluice's buffer cost less than the splices.
pub(super) const SPLICE_MIN: u64 = 64 * 1024;

/// How much a pipe holds, asked of the kernel (it gives 64 KiB without asking). The
/// same as the largest read of the ordinary path (decode.rs).
const PIPE_SIZE: usize = 256 * 1024;

/// Pipes kept per thread for the next body. More pipes than this are closed after
/// use: each one is two file descriptors.
const KEPT: usize = 32;

/// An empty pipe: its reading and writing ends, and how much it holds.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// A kept pipe, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(p) = PIPES.with_borrow_mut(Vec::pop) {
            return Ok(p);
        }
        let (r, w) = pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // A larger pipe may be refused (past the user's pipe quota): the default will do.
        let size = pipe::fcntl_setpipe_size(&w, PIPE_SIZE)
            .or_else(|_| pipe::fcntl_getpipe_size(&w))
            .unwrap_or(64 * 1024);
        Ok(Pipe { r, w, size })
    }

    /// Keeps an empty pipe for the next body.
    fn keep(self) {
        PIPES.with_borrow_mut(|kept| {
            if kept.len() < KEPT {
                kept.push(self);
            }
        });
    }
}

/// Moves up to `len` bytes from `from` to `to` with splice(2), without blocking on
/// the pipe; `more`: more bytes follow (as MSG_MORE).
fn splice(from: impl AsFd, to: impl AsFd, len: usize, more: bool) -> io::Result<usize> {
    let mut flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    if more {
        flags |= SpliceFlags::MORE;
    }
    Ok(pipe::splice(from, None, to, None, len, flags)?)
}

/// Passes the `len` bytes of a body still to come from `from` on to `to`, adding to
/// `moved` what reached the client (also when it breaks off). While the backend keeps
/// the body waiting, a client that leaves ends it (`watch`, as in `write_response`).
/// None: no pipe could be had, nothing was done, the ordinary path is to be taken.
pub(super) async fn pass(
    from: &TcpStream,
    to: &TcpStream,
    len: u64,
    moved: &mut u64,
    watch: &mut Option<(&mut Reader, &mut BytesMut)>,
) -> Option<Result<(), Cut>> {
    let pipe = Pipe::take().ok()?;
    let mut left = len;
    // Bytes in the pipe, taken from the backend and not yet given to the client.
    let mut held = 0usize;
    // The backend's side ended early; what is in the pipe still goes out first.
    let mut broke = false;
    loop {
        let mut wait_in = false;
        if left > 0 && held < pipe.size && !broke {
            let want = left.min((pipe.size - held) as u64) as usize;
            let fill = || splice(from, &pipe.w, want, false);
            // With bytes in the pipe, "would block" may mean the pipe is full: that
            // must not clear the socket's readiness, so it is not asked through it.
            let filled = if held == 0 {
                from.try_io(Interest::READABLE, fill)
            } else {
                fill()
            };
            match filled {
                Ok(0) => broke = true,
                Ok(n) => {
                    left -= n as u64;
                    held += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_in = held == 0,
                Err(_) => broke = true,
            }
        }
        let mut wait_out = false;
        if held > 0 {
            match to.try_io(Interest::WRITABLE, || splice(&pipe.r, to, held, left > 0)) {
                Ok(n) => {
                    held -= n;
                    *moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_out = true,
                Err(_) => return Some(Err(Cut::Client)),
            }
        } else if broke {
            return Some(Err(Cut::Backend));
        } else if left == 0 {
            pipe.keep();
            return Some(Ok(()));
        }
        if wait_out {
            if to.writable().await.is_err() {
                return Some(Err(Cut::Client));
            }
        } else if wait_in && let Err(cut) = backend_or_client(from, watch).await {
            return Some(Err(cut));
        }
    }
}

/// Waits until the backend's socket may be read, or the client leaves.
async fn backend_or_client(
    from: &TcpStream,
    watch: &mut Option<(&mut Reader, &mut BytesMut)>,
) -> Result<(), Cut> {
    std::future::poll_fn(|cx| {
        // An error shows at the next splice.
        if from.poll_read_ready(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        client_left(watch, cx).map(Err)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected sockets on loopback: (the side sluice holds, the far side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (near, _) = l.accept().await.unwrap();
        (near, far)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn passes_exactly_the_body_and_leaves_what_follows() {
        let (from, mut backend) = pair().await;
        let (to, mut client) = pair().await;
        let body = pattern(3 * 1024 * 1024 + 17);
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            backend.write_all(&sent).await.unwrap();
            backend.write_all(b"NEXT").await.unwrap();
            backend
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 3 * 1024 * 1024 + 17];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        let mut moved = 0;
        let r = pass(&from, &to, body.len() as u64, &mut moved, &mut None).await;
        assert!(matches!(r, Some(Ok(()))));
        assert_eq!(moved, body.len() as u64);
        assert!(reader.await.unwrap() == body, "body corrupted");
        let _backend = writer.await.unwrap();
        // The bytes after the body are still the backend connection's.
        let mut next = [0; 4];
        let mut from = from;
        from.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"NEXT");
    }

    #[tokio::test]
    async fn a_slow_client_holds_the_body_back_without_loss() {
        let (from, mut backend) = pair().await;
        let (to, mut client) = pair().await;
        let body = pattern(8 * 1024 * 1024);
        let sent = body.clone();
        let (wrote_tx, wrote_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // More than the pipe and both sockets' buffers can hold before the client
            // reads anything.
            backend.write_all(&sent[..1 << 20]).await.unwrap();
            let _ = wrote_tx.send(());
            backend.write_all(&sent[1 << 20..]).await.unwrap();
            backend
        });
        let reader = tokio::spawn(async move {
            let _ = wrote_rx.await;
            let mut got = vec![0; 8 * 1024 * 1024];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        let mut moved = 0;
        let r = pass(&from, &to, body.len() as u64, &mut moved, &mut None).await;
        assert!(matches!(r, Some(Ok(()))));
        assert!(reader.await.unwrap() == body, "body corrupted");
    }

    #[tokio::test]
    async fn a_backend_that_stops_early_is_a_cut_after_what_it_sent() {
        let (from, mut backend) = pair().await;
        let (to, mut client) = pair().await;
        let part = pattern(300 * 1024);
        let sent = part.clone();
        tokio::spawn(async move {
            backend.write_all(&sent).await.unwrap();
            // dropped: closed before the promised megabyte
        });
        let mut moved = 0;
        let r = pass(&from, &to, 1 << 20, &mut moved, &mut None).await;
        assert!(matches!(r, Some(Err(Cut::Backend))));
        assert_eq!(moved, part.len() as u64, "what came was passed on");
        drop(to);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got == part);
    }

    #[tokio::test]
    async fn a_client_that_leaves_while_the_backend_waits_ends_it() {
        let (from, _backend) = pair().await;
        let (to, client) = pair().await;
        let (watched, mut client_rd) = pair().await;
        let mut rd = Reader::Tcp(watched.into_split().0);
        let mut buf = BytesMut::new();
        drop(client);
        client_rd.shutdown().await.unwrap();
        let mut watch = Some((&mut rd, &mut buf));
        let mut moved = 0;
        let r = pass(&from, &to, 1 << 20, &mut moved, &mut watch).await;
        assert!(matches!(r, Some(Err(Cut::Client))));
        assert_eq!(moved, 0);
    }
}
