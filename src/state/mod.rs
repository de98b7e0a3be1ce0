//! The control side of a running sluice: the configuration in force and every way it
//! changes (reload from the file, admin edits), the checks a configuration must pass
//! before it is applied, and the health checkers that go with each snapshot. The data
//! plane (proxy) reads what this installs in `Shared`; it never imports this module.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{self, Config, LoadError, UpstreamConfig};
use crate::proxy::Shared;

mod discovered;

pub use discovered::{Discovered, Phase, Seen, Status};

/// Changes applied to every config loaded from the file (command-line overrides).
pub type Overrides =
    Box<dyn Fn(&mut Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// The running configuration and what changes it.
pub struct State {
    /// What the data plane serves from.
    pub shared: Arc<Shared>,
    /// The file to read again on reload; None when running from flags only.
    config_path: Option<PathBuf>,
    overrides: Option<Overrides>,
    /// Serializes configuration changes (reloads and admin edits).
    edits: Mutex<()>,
    /// Active health checkers of the current snapshot, replaced with it; None once
    /// stopped for good (shutdown), so a late reload does not start them again.
    checkers: Mutex<Option<Option<crate::proxy::probe::Checkers>>>,
    /// The discovery tasks of discovered upstreams (discovered.rs).
    pub discovered: Discovered,
    /// A new admin listener a reload bound, for the admin side to take.
    pub admin_moves: AdminMoves,
    /// The admin listener's configured address and a copy of its socket, for a new
    /// process to take over (an upgrade).
    admin_socket: Mutex<Option<(std::net::SocketAddr, std::os::fd::OwnedFd)>>,
}

/// Where the admin API listens after a reload that moved it.
pub enum AdminListener {
    At(std::net::TcpListener),
    /// The `[admin]` section is gone: stop listening.
    Off,
}

/// The hand-over of a moved admin listener: a reload binds it (so that a bind failure
/// refuses the reload) and the admin side, above this layer, takes it.
#[derive(Default)]
pub struct AdminMoves {
    next: Mutex<Option<AdminListener>>,
    /// Signalled when `next` is filled.
    pub moved: tokio::sync::Notify,
}

impl AdminMoves {
    /// The admin listener to switch to, if a reload moved it.
    pub fn take(&self) -> Option<AdminListener> {
        self.next.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn hand_over(&self, to: AdminListener) {
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
        self.moved.notify_one();
    }
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (sluice was started without --config)")]
    NoFile,
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("applying the command-line flags")]
    Override(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Unsupported(#[from] CheckError),
    #[error(transparent)]
    Listener(#[from] crate::proxy::server::BindError),
    #[error("sluice is starting or shutting down; reload once it serves")]
    NotServing,
    #[error("cannot move the admin API to {addr}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// An upstream whose backends cannot be used though its config file parsed.
#[derive(Debug, thiserror::Error)]
#[error("upstream \"{upstream}\"")]
pub struct CheckError {
    pub upstream: String,
    #[source]
    pub source: UpstreamError,
}

/// What makes an upstream's backends unusable.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("protocol \"{protocol}\" needs {needs} backends, not {backend}")]
    Protocol {
        protocol: &'static str,
        needs: &'static str,
        backend: String,
    },
    #[error(transparent)]
    Trust(#[from] crate::proxy::stream::TrustError),
}

impl State {
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        overrides: Option<Overrides>,
    ) -> Arc<State> {
        Arc::new(State {
            shared: Shared::new(config),
            config_path,
            overrides,
            edits: Mutex::new(()),
            checkers: Mutex::new(Some(None)),
            discovered: Discovered::default(),
            admin_moves: AdminMoves::default(),
            admin_socket: Mutex::new(None),
        })
    }

    /// Records the admin listener for an upgrade to hand over (None: no admin API).
    pub fn set_admin_socket(
        &self,
        configured: std::net::SocketAddr,
        socket: &impl std::os::fd::AsFd,
    ) {
        let copy = socket.as_fd().try_clone_to_owned().ok();
        *self.admin_socket.lock().unwrap_or_else(|p| p.into_inner()) =
            copy.map(|fd| (configured, fd));
    }

    /// Forgets the admin listener (the API was turned off).
    pub fn clear_admin_socket(&self) {
        *self.admin_socket.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The admin listener's configured address and a copy of its socket.
    pub fn admin_socket(&self) -> Option<(std::net::SocketAddr, std::os::fd::OwnedFd)> {
        let slot = self.admin_socket.lock().unwrap_or_else(|p| p.into_inner());
        let (addr, fd) = slot.as_ref()?;
        Some((*addr, fd.try_clone().ok()?))
    }

    /// Holds off other changes (reloads, edits) while the caller makes one.
    pub fn edit(&self) -> MutexGuard<'_, ()> {
        self.edits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (Re)starts the active health checkers for the current snapshot: those of
    /// upstreams configured as before go on, the others stop or start anew. Must run
    /// inside the runtime.
    pub fn restart_health_checks(&self) {
        let mut slot = self.checkers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(running) = slot.as_mut() else {
            return; // stopped for good
        };
        let previous = running.take();
        *running = Some(crate::proxy::probe::start(
            &self.shared.snapshot.load(),
            previous,
        ));
    }

    /// Stops the active health checkers and discovery for good (shutdown).
    pub fn stop_health_checks(&self) {
        self.checkers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.discovered.stop();
    }

    /// Stopped for good (shutdown): nothing starts again.
    fn stopped(&self) -> bool {
        self.checkers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Makes `config` the running configuration: one store for routes, upstreams and
    /// their tables; backend stats and pools carry over by URL.
    pub fn apply(&self, config: Config) {
        let snapshot = crate::proxy::build::build(&config, Some(&self.shared.snapshot.load()));
        self.shared.install(config, snapshot);
        self.restart_health_checks();
    }

    /// Makes `config`, edited through the admin API, the running configuration; unlike
    /// `apply`, drains set through the API stay.
    pub fn apply_edit(&self, config: Config) {
        let snapshot = crate::proxy::build::build_edited(&config, &self.shared.snapshot.load());
        self.shared.install(config, snapshot);
        self.restart_health_checks();
    }

    /// Reloads the config file (SIGHUP, `POST /reload`): read, validate, apply the
    /// command-line overrides again, check, and swap; on any error the running
    /// configuration stays.
    pub fn reload(self: &Arc<Self>) -> Result<(), ReloadError> {
        let _edit = self.edit();
        // Listener changes need the running proxy (and a draining one takes none).
        if !self.shared.listeners.serving() {
            return Err(ReloadError::NotServing);
        }
        let path = self.config_path.as_deref().ok_or(ReloadError::NoFile)?;
        let mut config = config::load(path)?;
        if let Some(overrides) = &self.overrides {
            overrides(&mut config).map_err(ReloadError::Override)?;
        }
        check_supported(&config)?;
        let old = self.shared.config.load();
        discovered::carry_over(&old, &mut config);
        // Everything that can fail comes first: new listeners bound, certificates read,
        // a moved admin address bound. Then nothing can.
        let listeners = self.shared.listeners.prepare(&config.listeners)?;
        let admin = admin_move(&old, &config)?;
        self.apply(config);
        self.shared.listeners.commit(listeners, &self.shared);
        if let Some(to) = admin {
            self.admin_moves.hand_over(to);
        }
        self.sync_discovery();
        tracing::info!(path = %path.display(), "configuration reloaded");
        Ok(())
    }
}

/// Checks what the config file's validation cannot: trust for https backends (files
/// and system roots), and, for admin edits, that backends match their upstream's
/// protocol.
pub fn check_supported(config: &Config) -> Result<(), CheckError> {
    config.upstreams.iter().try_for_each(check_upstream)
}

/// `check_supported` for one upstream (an admin edit checks only the one it changes).
pub fn check_upstream(u: &UpstreamConfig) -> Result<(), CheckError> {
    use crate::config::{Protocol, Scheme};
    let fail = |source: UpstreamError| CheckError {
        upstream: u.name.clone(),
        source,
    };
    // The config file is checked for this; admin edits come here.
    let wrong = match u.protocol {
        Protocol::Http1 => None,
        Protocol::H2 => Some((Scheme::Http, "h2", "https")),
        Protocol::H2c => Some((Scheme::Https, "h2c", "plain http")),
    };
    if let Some((scheme, protocol, needs)) = wrong
        && let Some(b) = u.backends.iter().find(|b| b.url.scheme == scheme)
    {
        return Err(fail(UpstreamError::Protocol {
            protocol,
            needs,
            backend: b.url.to_string(),
        }));
    }
    // Trust for https backends: ca_file readable, or system roots present.
    crate::proxy::stream::connector(u).map_err(|e| fail(e.into()))?;
    Ok(())
}

/// The admin listener a reload from `old` to `new` moves to, bound; None when the
/// admin address stays.
fn admin_move(old: &Config, new: &Config) -> Result<Option<AdminListener>, ReloadError> {
    let (from, to) = (
        old.admin.as_ref().map(|a| a.address),
        new.admin.as_ref().map(|a| a.address),
    );
    if from == to {
        return Ok(None);
    }
    let Some(addr) = to else {
        return Ok(Some(AdminListener::Off));
    };
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map(|l| Some(AdminListener::At(l)))
        .map_err(|source| ReloadError::Admin { addr, source })
}
