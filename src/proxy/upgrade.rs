//! HTTP/1.1 upgrades (WebSocket): after the backend answers 101, both sides' connections
//! are taken over from hyper and joined into a byte tunnel until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Spawns the tunnel; it ends when either side closes or fails.
pub fn tunnel(client: OnUpgrade, backend: OnUpgrade) {
    tokio::spawn(async move {
        let (c, b) = tokio::join!(client, backend);
        let (Ok(c), Ok(b)) = (c, b) else {
            tracing::debug!("upgrade handshake did not complete");
            return;
        };
        let mut c = TokioIo::new(c);
        let mut b = TokioIo::new(b);
        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
            tracing::debug!(error = %e, "upgraded tunnel closed");
        }
    });
}
