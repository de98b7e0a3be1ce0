//! HTTP/1.1 upgrades (WebSocket): after the backend answers 101, the client's socket
//! (handed back by the HTTP/1.1 loop, see server.rs) and the backend's connection are joined into
//! a byte tunnel until either side closes.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::client::Upgraded;

/// Runs the tunnel to its end; returns when either side closes or fails.
pub async fn tunnel<C: AsyncRead + AsyncWrite + Unpin>(mut client: C, backend: Upgraded) {
    let Upgraded { mut stream, read } = backend;
    // What the backend sent right behind its 101 head goes first.
    if !read.is_empty() && client.write_all(&read).await.is_err() {
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut stream).await {
        tracing::debug!(error = %e, "upgraded tunnel closed");
    }
}
