//! The proxy's listeners while sluice runs, and what a reload does to them (SPEC §7): a
//! new address is bound before anything else changes (a bind failure, or a certificate
//! that cannot be read, refuses the whole reload); a removed one stops accepting and its
//! connections drain as at shutdown; one that stays keeps its socket and connections and
//! takes the new TLS and PROXY protocol settings for its next connections.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::Shared;
use super::park::Lot;
use super::server::{BindError, Protocols, accept_loop};
use crate::config::ListenerConfig;

/// A listener bound and its certificates read, not yet accepting.
pub struct Bound {
    pub(super) config: ListenerConfig,
    pub(super) socket: TcpListener,
    pub(super) setup: Setup,
}

/// How a listener takes each new connection; a reload replaces it for the next ones.
pub(super) struct Setup {
    /// Plain HTTP, or TLS with these certificates.
    pub(super) tls: Option<TlsAcceptor>,
    /// Every connection opens with a PROXY header naming the client.
    pub(super) proxy_protocol: bool,
}

impl Bound {
    /// Binds `config`'s address and reads its certificates (first: a bad one leaves
    /// no port bound).
    pub fn bind(config: &ListenerConfig) -> Result<Bound, BindError> {
        let setup = setup_of(config)?;
        let addr = config.address;
        let socket = std::net::TcpListener::bind(addr)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            })
            .map_err(|source| BindError::Io { addr, source })?;
        Ok(Bound {
            config: config.clone(),
            socket,
            setup,
        })
    }

    /// Serves `config` on `socket`, a listening socket taken over from another
    /// process (an upgrade), reading its certificates as `bind` does.
    pub fn adopt(
        config: &ListenerConfig,
        socket: std::net::TcpListener,
    ) -> Result<Bound, BindError> {
        let setup = setup_of(config)?;
        let addr = config.address;
        let socket = socket
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(socket))
            .map_err(|source| BindError::Io { addr, source })?;
        Ok(Bound {
            config: config.clone(),
            socket,
            setup,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }
}

fn setup_of(config: &ListenerConfig) -> Result<Setup, BindError> {
    let tls = config
        .tls
        .as_ref()
        .map(|t| {
            super::tls::acceptor(t).map_err(|source| BindError::Tls {
                addr: config.address,
                source,
            })
        })
        .transpose()?;
    Ok(Setup {
        tls,
        proxy_protocol: config.proxy_protocol,
    })
}

/// What accept loops share, set once the proxy serves.
pub(super) struct AcceptCtx {
    pub(super) permits: Arc<Semaphore>,
    pub(super) protocols: Arc<Protocols>,
    pub(super) lot: Option<Arc<Lot>>,
}

/// A listener accepting.
struct Listening {
    config: ListenerConfig,
    local: Option<SocketAddr>,
    /// Read at each accept.
    setup: Arc<ArcSwap<Setup>>,
    /// Stops the accept loop and drains the listener's connections.
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The listening socket, for handing it to a new process (an upgrade); dropped
    /// with the listener, so that a removed one stops listening.
    fd: Option<OwnedFd>,
}

/// The listeners of a running proxy.
#[derive(Default)]
pub struct Listeners {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    running: Vec<Listening>,
    ctx: Option<AcceptCtx>,
}

/// A reload's listener changes, prepared: what is new is bound, every certificate read.
pub struct Plan {
    new: Vec<Bound>,
    /// Listeners that stay, with their settings from now on.
    kept: Vec<(Key, Setup)>,
}

/// Which listener a config entry is: its address, and which of the entries with that
/// address (the same `:0` may be configured twice) in order.
type Key = (SocketAddr, usize);

fn keys(addrs: impl Iterator<Item = SocketAddr>) -> Vec<Key> {
    let mut seen: Vec<SocketAddr> = Vec::new();
    addrs
        .map(|a| {
            let nth = seen.iter().filter(|s| **s == a).count();
            seen.push(a);
            (a, nth)
        })
        .collect()
}

impl Listeners {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prepares `configs` against the running listeners: binds the addresses not
    /// listened on yet and reads the certificates of every TLS listener, kept ones
    /// included (files may have changed at the same paths). Nothing changes yet; an
    /// error leaves everything as it is.
    pub fn prepare(&self, configs: &[ListenerConfig]) -> Result<Plan, BindError> {
        let running = keys(self.lock().running.iter().map(|l| l.config.address));
        let mut plan = Plan {
            new: Vec::new(),
            kept: Vec::new(),
        };
        for (c, key) in configs.iter().zip(keys(configs.iter().map(|c| c.address))) {
            if running.contains(&key) {
                plan.kept.push((key, setup_of(c)?));
            } else {
                plan.new.push(Bound::bind(c)?);
            }
        }
        Ok(plan)
    }

    /// Applies a prepared plan: new listeners accept, kept ones take their settings for
    /// the next connections, the others stop accepting and drain.
    pub fn commit(&self, plan: Plan, shared: &Arc<Shared>) {
        let mut inner = self.lock();
        let Inner { running, ctx } = &mut *inner;
        let Some(ctx) = ctx.as_ref() else {
            return; // not serving (yet, or any more)
        };
        let mut removed = Vec::new();
        let mut current = keys(running.iter().map(|l| l.config.address)).into_iter();
        let mut kept = plan.kept;
        running.retain(|l| {
            let key = current.next();
            match kept.iter().position(|(k, _)| Some(*k) == key) {
                Some(i) => {
                    let (_, setup) = kept.swap_remove(i);
                    l.setup.store(Arc::new(setup));
                    true
                }
                None => {
                    let _ = l.stop.send(true);
                    removed.push(l.local);
                    false
                }
            }
        });
        for b in plan.new {
            running.push(spawn(b, ctx, shared));
        }
        // Idle connections of removed listeners waiting in the parking lot close now.
        if let Some(lot) = ctx.lot.as_ref().filter(|_| !removed.is_empty()) {
            let closed = lot.close_stopped() as u64;
            let drains = &shared.drains;
            drains
                .clean
                .fetch_add(closed, std::sync::atomic::Ordering::Relaxed);
        }
        for addr in removed.into_iter().flatten() {
            tracing::info!(address = %addr, "listener removed: no new connections, draining");
        }
    }

    /// Starts accepting on `bound` with `ctx` (the proxy begins to serve).
    pub(super) fn start(&self, ctx: AcceptCtx, bound: Vec<Bound>, shared: &Arc<Shared>) {
        let mut inner = self.lock();
        for b in bound {
            let l = spawn(b, &ctx, shared);
            inner.running.push(l);
        }
        inner.ctx = Some(ctx);
    }

    /// Stops every listener (shutdown): no new connections, open ones drain. The accept
    /// loops, to wait for.
    pub(super) fn stop_all(&self) -> Vec<JoinHandle<()>> {
        let mut inner = self.lock();
        inner.ctx = None;
        inner
            .running
            .drain(..)
            .map(|l| {
                let _ = l.stop.send(true);
                l.task
            })
            .collect()
    }

    /// Is the proxy serving (started, and not draining)? A reload changes listeners
    /// only then.
    pub fn serving(&self) -> bool {
        self.lock().ctx.is_some()
    }

    /// The addresses listened on, in the order listeners were started.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.lock().running.iter().filter_map(|l| l.local).collect()
    }

    /// Each running listener's configuration and the address it listens on.
    pub fn running(&self) -> Vec<(ListenerConfig, Option<SocketAddr>)> {
        self.lock()
            .running
            .iter()
            .map(|l| (l.config.clone(), l.local))
            .collect()
    }

    /// Each listener's configured address and a copy of its listening socket, for a
    /// new process to take over (an upgrade).
    pub fn sockets(&self) -> Vec<(SocketAddr, OwnedFd)> {
        self.lock()
            .running
            .iter()
            .filter_map(|l| Some((l.config.address, l.fd.as_ref()?.try_clone().ok()?)))
            .collect()
    }
}

fn spawn(b: Bound, ctx: &AcceptCtx, shared: &Arc<Shared>) -> Listening {
    let (stop, stop_rx) = watch::channel(false);
    let local = b.local_addr();
    let fd = b.socket.as_fd().try_clone_to_owned().ok();
    let setup = Arc::new(ArcSwap::from_pointee(b.setup));
    let task = tokio::spawn(accept_loop(
        b.socket,
        Arc::clone(&setup),
        Arc::clone(shared),
        Arc::clone(&ctx.permits),
        Arc::clone(&ctx.protocols),
        ctx.lot.clone(),
        stop_rx,
    ));
    Listening {
        config: b.config,
        local,
        setup,
        stop,
        task,
        fd,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_address_twice_is_two_listeners_in_order() {
        let a: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let b: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
        assert_eq!(super::keys([a, b, a].into_iter()), [(a, 0), (b, 0), (a, 1)]);
    }
}
