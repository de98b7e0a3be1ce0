//! The parking lot for idle HTTP/1 client connections.
//!
//! A keep-alive client that has gone quiet still holds its read and write buffers (some
//! kilobytes), and a task of its own costs about a kilobyte more (task cell, timer entry, the runtime's
//! per-socket readiness record). Parked here, it costs one slot of about 64 bytes in a
//! shared table: the socket is taken out of tokio's reactor and put in an epoll set of
//! the lot's own, which one thread of its own waits on (it sleeps in the kernel while no
//! parked client stirs). When the client sends again the socket goes back to tokio and
//! a new connection task serves it; when `idle_timeout` passes, or sluice shuts down, it
//! is closed.
//!
//! The lot's lock is taken when a connection parks or leaves, never on the request path
//! and never across an await.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::conn::now_ms;

/// Readiness events taken from the lot's epoll set per wakeup.
const EVENTS_PER_TURN: usize = 256;

/// A parked connection: the socket and what its next connection task needs back.
struct Parked {
    stream: mio::net::TcpStream,
    client: SocketAddr,
    permit: OwnedSemaphorePermit,
    /// Its listener's stop signal: a removed listener's parked connections close.
    stop: watch::Receiver<bool>,
}

/// One place in the table. `generation` tells a stale deadline (of an earlier occupant)
/// from the current one.
struct Slot {
    generation: u32,
    parked: Option<Parked>,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// (deadline in ms, slot, generation), earliest first; entries of slots that have
    /// since been vacated are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Shutting down: nothing parks any more.
    closed: bool,
}

impl Table {
    fn take(&mut self, idx: u32, generation: Option<u32>) -> Option<Parked> {
        let slot = self.slots.get_mut(idx as usize)?;
        if generation.is_some_and(|g| g != slot.generation) {
            return None;
        }
        let parked = slot.parked.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(idx);
        Some(parked)
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Connections that leave the lot leave their deadlines behind; once those
    /// outnumber the live ones, sweep them (amortized O(1) per park).
    fn forget_stale_deadlines(&mut self) {
        if self.deadlines.len() <= 2 * self.len() + EVENTS_PER_TURN {
            return;
        }
        let slots = &self.slots;
        self.deadlines.retain(|Reverse((_, idx, generation))| {
            slots
                .get(*idx as usize)
                .is_some_and(|s| s.generation == *generation && s.parked.is_some())
        });
    }
}

/// A connection leaving the lot because its client sent something. The socket is
/// still outside tokio: `tokio::net::TcpStream::from_std` in a runtime task takes it back.
pub struct Woken {
    pub stream: std::net::TcpStream,
    pub client: SocketAddr,
    pub permit: OwnedSemaphorePermit,
    pub stop: watch::Receiver<bool>,
}

/// The token of the lot's own wakeups (a new earliest deadline, or closing).
const WAKE: Token = Token(usize::MAX);

/// The lot shared by a server's connection tasks.
pub struct Lot {
    registry: Registry,
    waker: Waker,
    table: Mutex<Table>,
}

/// Closes the lot, and with it every parked connection, when dropped.
pub struct Closer(Arc<Lot>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Lot {
    /// Opens a lot and starts its thread, which hands every connection whose client
    /// sends again to `serve` (called on that thread, with the lot).
    pub fn start(
        serve: impl FnMut(Woken, &Arc<Lot>) + Send + 'static,
    ) -> io::Result<(Arc<Lot>, Closer)> {
        let poll = Poll::new()?;
        let lot = Arc::new(Lot {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKE)?,
            table: Mutex::new(Table::default()),
        });
        let watched = Arc::clone(&lot);
        std::thread::Builder::new()
            .name("sluice-park".into())
            .spawn(move || watched.watch(poll, serve))?;
        Ok((Arc::clone(&lot), Closer(lot)))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent across a panic elsewhere: no invariant spans calls.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parks a connection until its client sends, or until `deadline_ms` (see
    /// `conn::now_ms`). If it cannot be parked (the lot is closing, or the socket
    /// cannot join the lot's epoll set), it is closed: it is idle, so no request is
    /// lost, and a keep-alive client must expect that.
    pub fn park(
        &self,
        stream: TcpStream,
        client: SocketAddr,
        permit: OwnedSemaphorePermit,
        stop: watch::Receiver<bool>,
        deadline_ms: u64,
    ) {
        let Ok(std) = stream.into_std() else {
            return; // it could not leave tokio's reactor and is closed by now
        };
        let mut stream = mio::net::TcpStream::from_std(std);
        let mut table = self.table();
        if table.closed {
            return;
        }
        let idx = match table.free.pop() {
            Some(i) => i,
            None => match u32::try_from(table.slots.len()) {
                Ok(i) if (i as usize) < WAKE.0 => {
                    table.slots.push(Slot {
                        generation: 0,
                        parked: None,
                    });
                    i
                }
                _ => return,
            },
        };
        if let Err(e) = self
            .registry
            .register(&mut stream, Token(idx as usize), Interest::READABLE)
        {
            table.free.push(idx);
            tracing::debug!(client = %client, error = %e, "cannot park an idle connection; closing it");
            return;
        }
        let slot = &mut table.slots[idx as usize];
        slot.parked = Some(Parked {
            stream,
            client,
            permit,
            stop,
        });
        let generation = slot.generation;
        let sooner = table
            .deadlines
            .peek()
            .is_none_or(|Reverse((d, _, _))| deadline_ms < *d);
        table
            .deadlines
            .push(Reverse((deadline_ms, idx, generation)));
        table.forget_stale_deadlines();
        drop(table);
        super::memory::note_freed();
        if sooner {
            // The thread may be waiting for a later deadline (or none).
            let _ = self.waker.wake();
        }
    }

    /// How many connections are parked now.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the parked connections whose listener was stopped (removed by a reload):
    /// idle, they drain at once. How many.
    pub fn close_stopped(&self) -> usize {
        let mut table = self.table();
        let stopped: Vec<(u32, u32)> = table
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.parked.as_ref().is_some_and(|p| *p.stop.borrow()))
            .map(|(i, s)| (i as u32, s.generation))
            .collect();
        let mut closed = 0;
        for (idx, generation) in stopped {
            if let Some(mut p) = table.take(idx, Some(generation)) {
                let _ = self.registry.deregister(&mut p.stream);
                closed += 1;
            }
        }
        closed
    }

    /// Closes every parked connection and ends the thread; later parking closes.
    pub fn close(&self) {
        let mut table = self.table();
        table.closed = true;
        table.slots = Vec::new();
        table.free = Vec::new();
        table.deadlines = BinaryHeap::new();
        drop(table);
        let _ = self.waker.wake();
    }

    /// The thread: waits for parked sockets to become readable or for the earliest
    /// deadline, until the lot is closed.
    fn watch(self: Arc<Self>, mut poll: Poll, mut serve: impl FnMut(Woken, &Arc<Lot>)) {
        let mut events = Events::with_capacity(EVENTS_PER_TURN);
        let mut woken = Vec::new();
        let mut next: Option<u64> = None;
        loop {
            let timeout = next.map(|ms| Duration::from_millis(ms.saturating_sub(now_ms())));
            if let Err(e) = poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::warn!(error = %e, "parked connections can no longer be watched");
                self.close();
                return;
            }
            let now = now_ms();
            {
                let mut table = self.table();
                if table.closed {
                    return;
                }
                for ev in &events {
                    if ev.token() == WAKE {
                        continue;
                    }
                    let Ok(idx) = u32::try_from(ev.token().0) else {
                        continue;
                    };
                    if let Some(mut p) = table.take(idx, None) {
                        // A client that just hung up is closed here, without a task.
                        if ev.is_read_closed() && matches!(p.stream.peek(&mut [0u8; 1]), Ok(0)) {
                            continue;
                        }
                        let _ = self.registry.deregister(&mut p.stream);
                        woken.push(p);
                    }
                }
                next = table.expire(now);
            }
            for p in woken.drain(..) {
                let woken = Woken {
                    stream: p.stream.into(),
                    client: p.client,
                    permit: p.permit,
                    stop: p.stop,
                };
                serve(woken, &self);
            }
        }
    }
}

impl Table {
    /// Closes connections past their deadline; returns the next deadline.
    fn expire(&mut self, now: u64) -> Option<u64> {
        while let Some(&Reverse((deadline, idx, generation))) = self.deadlines.peek() {
            if deadline > now {
                return Some(deadline);
            }
            self.deadlines.pop();
            // Dropping the socket closes it, which also takes it out of the epoll set.
            drop(self.take(idx, Some(generation)));
        }
        // Let a burst's table shrink back once it is empty.
        if self.len() == 0 && self.slots.len() > EVENTS_PER_TURN {
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Semaphore, mpsc};

    use super::{Lot, Woken};
    use crate::proxy::conn::now_ms;
    use tokio::sync::watch;

    const DEADLINE: Duration = Duration::from_secs(5);

    /// A connected pair: (sluice's side, the client's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (server, client)
    }

    fn lot() -> (Arc<Lot>, super::Closer, mpsc::UnboundedReceiver<Woken>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (lot, closer) = Lot::start(move |w, _| {
            let _ = tx.send(w);
        })
        .unwrap();
        (lot, closer, rx)
    }

    async fn eof(client: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(DEADLINE, client.read(&mut b)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn a_parked_connection_comes_back_when_its_client_sends() {
        let (lot, _closer, mut woken) = lot();
        let permits = Arc::new(Semaphore::new(1));
        let (server, mut client) = pair().await;
        let addr = client.local_addr().unwrap();
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let (_stop, stop) = watch::channel(false);
        lot.park(server, addr, permit, stop, now_ms() + 60_000);
        assert_eq!((lot.len(), permits.available_permits()), (1, 0));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let w = tokio::time::timeout(DEADLINE, woken.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((w.client, lot.len()), (addr, 0));
        // The same socket, its bytes unread.
        let mut s = TcpStream::from_std(w.stream).unwrap();
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn the_parked_connections_of_a_stopped_listener_close() {
        let (lot, _closer, _woken) = lot();
        let permits = Arc::new(Semaphore::new(2));
        let (removed, removed_rx) = watch::channel(false);
        let (_kept, kept_rx) = watch::channel(false);
        let mut clients = Vec::new();
        for stop in [removed_rx, kept_rx] {
            let (server, client) = pair().await;
            let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
            let addr = client.local_addr().unwrap();
            lot.park(server, addr, permit, stop, now_ms() + 60_000);
            clients.push(client);
        }
        assert_eq!(lot.close_stopped(), 0, "no listener stopped yet");
        removed.send(true).unwrap();
        assert_eq!(lot.close_stopped(), 1);
        assert!(
            eof(&mut clients[0]).await,
            "its listener's connection closed"
        );
        assert_eq!((lot.len(), permits.available_permits()), (1, 1));
    }

    #[tokio::test]
    async fn idle_past_the_deadline_or_hung_up_it_is_closed_and_its_permit_returned() {
        let (lot, closer, mut woken) = lot();
        let permits = Arc::new(Semaphore::new(3));
        let (_stopper, stop) = watch::channel(false);
        let mut clients = Vec::new();
        for deadline in [now_ms() + 50, now_ms() + 60_000, now_ms() + 60_000] {
            let (server, client) = pair().await;
            let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
            let addr = client.local_addr().unwrap();
            lot.park(server, addr, permit, stop.clone(), deadline);
            clients.push(client);
        }
        assert_eq!(lot.len(), 3);
        assert!(eof(&mut clients[0]).await, "closed at its deadline");
        // A client that hangs up is closed by the lot, not handed on.
        drop(clients.remove(1));
        tokio::time::timeout(DEADLINE, async {
            while lot.len() > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(permits.available_permits(), 2);
        // Closing the lot closes the rest.
        drop(closer);
        assert!(eof(&mut clients[0]).await, "closed at shutdown");
        assert_eq!(permits.available_permits(), 3);
        assert!(woken.try_recv().is_err(), "nothing was handed on");
    }
}
