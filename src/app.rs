//! The whole of a running sluice: the proxy's listeners and the admin API side by side
//! over one shared state. `main`, `demo` and the tests start sluice through this, so
//! the data plane (proxy) never depends on the admin side above it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::server::{BindError, Server, bind_one};
use crate::state::{CheckError, State};

/// Why sluice could not start: a listener, or an upstream its config cannot use.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Check(#[from] CheckError),
}

/// Bound listeners, proxy and admin, ready to serve.
pub struct App {
    state: Arc<State>,
    proxy: Server,
    admin: Option<TcpListener>,
}

/// Listening sockets taken over from a running sluice (an upgrade), by the address its
/// configuration gives them.
#[derive(Default)]
pub struct Inherited {
    pub listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
}

impl App {
    /// Binds the proxy listeners, then the admin listener. Port 0 binds a free port; the
    /// bound addresses are then known (`local_addrs`, `admin_addr`).
    pub async fn bind(state: Arc<State>) -> Result<App, StartError> {
        Self::bind_inherited(state, Inherited::default()).await
    }

    /// Like `bind`, serving on the sockets `inherited` holds for configured addresses
    /// and binding the others (sockets left over close).
    pub async fn bind_inherited(
        state: Arc<State>,
        mut inherited: Inherited,
    ) -> Result<App, StartError> {
        let config = state.shared.config.load_full();
        crate::state::check_supported(&config)?;
        let proxy = Server::bind_inherited(Arc::clone(&state.shared), &mut inherited.listeners)?;
        let admin = match &config.admin {
            Some(a) => Some(match inherited.admin.take() {
                Some((at, l)) if at == a.address => l
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(l))
                    .map_err(|source| BindError::Io {
                        addr: a.address,
                        source,
                    })?,
                _ => bind_one(a.address).await?,
            }),
            None => None,
        };
        if let (Some(l), Some(a)) = (&admin, &config.admin) {
            state.set_admin_socket(a.address, l);
        }
        Ok(App {
            state,
            proxy,
            admin,
        })
    }

    /// The proxy listeners' bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.proxy.local_addrs()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves; then the admin API stops and the proxy drains
    /// (SPEC §4, `shutdown_timeout`).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        self.serve_telling(shutdown, None).await
    }

    /// `serve`, telling `started` once every listener accepts (an upgrade waits for
    /// that before the old process stops accepting).
    pub async fn serve_telling(
        self,
        shutdown: impl Future<Output = ()>,
        started: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (admin, state) = (self.admin, self.state);
        state.restart_health_checks();
        state.sync_discovery();
        let control = Arc::clone(&state);
        self.proxy
            .serve(
                async move {
                    // Started once the proxy's listeners are (they log first).
                    // Always: a reload may add the admin API, or move it.
                    let admin = Some(tokio::spawn(crate::admin::serve(
                        admin,
                        Arc::clone(&control),
                        stop_rx,
                    )));
                    shutdown.await;
                    control.stop_health_checks();
                    let _ = stop_tx.send(true);
                    if let Some(admin) = admin {
                        let _ = admin.await;
                    }
                },
                started,
            )
            .await;
    }
}

/// Binds and serves `shared`'s configuration until `shutdown` resolves.
pub async fn run(state: Arc<State>, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    App::bind(state).await?.serve(shutdown).await;
    Ok(())
}
