//! HTTP/1.1 upgrades (WebSocket): after the backend answers 101, the client's socket
//! (handed back by hyper, see server.rs) and the backend's upgraded connection are
//! joined into a byte tunnel until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Runs the tunnel to its end; returns when either side closes or fails.
pub async fn tunnel<C: AsyncRead + AsyncWrite + Unpin>(mut client: C, backend: OnUpgrade) {
    let backend = match backend.await {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "backend upgrade did not complete");
            return;
        }
    };
    let mut backend = TokioIo::new(backend);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "upgraded tunnel closed");
    }
}
