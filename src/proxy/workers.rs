//! Worker threads for `workers > 1`: one single-threaded tokio runtime per worker, and
//! each client connection served whole by one of them, as nginx and HAProxy do.
//!
//! A multi-threaded runtime with work stealing was measured to cost more here: hyper
//! runs each HTTP/2 stream as a task of its own, and a stream finished on the other
//! thread wakes its connection for a write of its own (0.91 writes, 0.20 context
//! switches and 0.12 futex calls per h2c request at two workers, against 0.31, 0.015
//! and 0 at one). On one thread, the connection batches the answers of several streams
//! into one write.
//!
//! The main thread is worker 0: it also runs the accept loops and everything else
//! (health checks, discovery, the admin listener). Each accepted connection goes to the
//! worker with the fewest connections, ties taken in turn. Idle backend connections are
//! kept per worker (pool.rs), so a connection is always driven by the thread using it.
//!
//! With one worker nothing here is set up, and connections are spawned as before.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;

struct Worker {
    handle: Handle,
    /// Client connections it serves.
    live: AtomicUsize,
}

struct Workers {
    all: Box<[Worker]>,
    /// Where the search for the least busy worker starts (so ties rotate).
    next: AtomicUsize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Starts `n - 1` worker threads beside the calling one, which must be in a tokio
/// runtime (it becomes worker 0). Does nothing for `n <= 1`, or when already started.
pub fn start(n: usize) -> io::Result<()> {
    if n <= 1 || WORKERS.get().is_some() {
        return Ok(());
    }
    let mut all = Vec::with_capacity(n);
    all.push(Worker {
        handle: Handle::current(),
        live: AtomicUsize::new(0),
    });
    for i in 1..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        all.push(Worker {
            handle: rt.handle().clone(),
            live: AtomicUsize::new(0),
        });
        std::thread::Builder::new()
            .name(format!("sluice-worker-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(i));
                // Runs its connections' tasks until the process exits.
                rt.block_on(std::future::pending::<()>());
            })?;
    }
    let _ = WORKERS.set(Workers {
        all: all.into_boxed_slice(),
        next: AtomicUsize::new(0),
    });
    Ok(())
}

/// How many workers serve connections.
pub fn count() -> usize {
    WORKERS.get().map_or(1, |w| w.all.len())
}

/// The calling thread's worker (0 off the worker threads).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Connections each worker serves, for tests and `/status`-style views.
pub fn loads() -> Vec<usize> {
    WORKERS.get().map_or_else(Vec::new, |w| {
        w.all
            .iter()
            .map(|w| w.live.load(Ordering::Relaxed))
            .collect()
    })
}

/// Counts a connection against its worker until dropped.
struct Live(&'static AtomicUsize);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// The worker with the fewest connections, counted as taken by one more.
    fn least_busy(&'static self) -> (usize, &'static Worker, Live) {
        let n = self.all.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut fewest = usize::MAX;
        for k in 0..n {
            let i = (start + k) % n;
            let live = self.all[i].live.load(Ordering::Relaxed);
            if live < fewest {
                (best, fewest) = (i, live);
            }
        }
        let w = &self.all[best];
        w.live.fetch_add(1, Ordering::Relaxed);
        (best, w, Live(&w.live))
    }
}

/// Serves an accepted connection on the least busy worker: `serve` runs there, with the
/// socket registered in that worker's reactor.
pub fn spawn<S, F>(stream: TcpStream, serve: S)
where
    S: FnOnce(TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let Some(workers) = WORKERS.get() else {
        tokio::spawn(serve(stream));
        return;
    };
    let (i, worker, live) = workers.least_busy();
    if i == index() {
        tokio::spawn(async move {
            let _live = live;
            serve(stream).await;
        });
        return;
    }
    // Moves to the other reactor: out of this one here, into that one there.
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "a connection could not move to its worker; closed");
            return;
        }
    };
    worker.handle.spawn(async move {
        let _live = live;
        if let Ok(stream) = TcpStream::from_std(stream) {
            serve(stream).await;
        }
    });
}

/// Serves a connection held outside tokio (woken from the parking lot) on the least
/// busy worker, or on `fallback`'s runtime with one worker.
pub fn spawn_std<S, F>(stream: std::net::TcpStream, fallback: &Handle, serve: S)
where
    S: FnOnce(TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (handle, live) = match WORKERS.get() {
        None => (fallback, None),
        Some(workers) => {
            let (_, worker, live) = workers.least_busy();
            (&worker.handle, Some(live))
        }
    };
    handle.spawn(async move {
        let _live = live;
        if let Ok(stream) = TcpStream::from_std(stream) {
            serve(stream).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(n: usize) -> &'static Workers {
        let all = (0..n)
            .map(|_| Worker {
                handle: Handle::current(),
                live: AtomicUsize::new(0),
            })
            .collect();
        Box::leak(Box::new(Workers {
            all,
            next: AtomicUsize::new(0),
        }))
    }

    #[tokio::test]
    async fn connections_go_to_the_least_busy_worker_ties_in_turn() {
        let w = workers(3);
        let mut held = Vec::new();
        let mut picks = Vec::new();
        for _ in 0..6 {
            let (i, _, live) = w.least_busy();
            picks.push(i);
            held.push((i, live));
        }
        // Even counts, ties taken in turn.
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Worker 1's two connections end: the next two go there.
        held.retain(|(i, _)| *i != 1);
        let next: Vec<usize> = (0..2)
            .map(|_| {
                let (i, _, live) = w.least_busy();
                held.push((i, live));
                i
            })
            .collect();
        assert_eq!(next, [1, 1]);
        assert!(w.all.iter().all(|w| w.live.load(Ordering::Relaxed) == 2));
        drop(held);
        assert!(w.all.iter().all(|w| w.live.load(Ordering::Relaxed) == 0));
    }
}
