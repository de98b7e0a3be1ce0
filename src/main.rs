//! The `sluice` binary: parse the command line, load the configuration, run. Every
//! failure ends as one line on stderr and a non-zero exit code, never a panic.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sluice::app::{App, Inherited};
use sluice::cli::{Cli, Command, OnOff, RunArgs};
use sluice::config::{self, LoadError};
use sluice::proxy::error::chain;
use sluice::state::{Overrides, State};
use sluice::{demo, handover, notify, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Demo {
            backends,
            listen,
            admin,
            access_log,
        }) => {
            let access_log = access_log == OnOff::On;
            telemetry::init(telemetry::LogFormat::Text, access_log);
            finish(runtime(None).and_then(|(rt, workers)| {
                rt.block_on(async move {
                    start_workers(workers)?;
                    demo::run(backends, listen, admin, !access_log).await
                })
            }))
        }
        None => finish(run(cli.run)),
    }
}

fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice check -c FILE`
fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(c) => {
            // Certificates are files of their own: read them as startup would, and
            // point at where the config names the file.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let mut ok = true;
            for u in &c.upstreams {
                if let Err(e) = sluice::proxy::stream::connector(u) {
                    let at = u
                        .ca_file
                        .as_ref()
                        .and_then(|p| position_of(&text, &p.display().to_string()));
                    let (line, col) = at.unwrap_or((1, 1));
                    eprintln!(
                        "{}:{line}:{col}: upstream \"{}\": {}",
                        path.display(),
                        u.name,
                        chain(&e)
                    );
                    ok = false;
                }
            }
            for l in &c.listeners {
                for e in l.tls.iter().flat_map(sluice::proxy::tls::problems) {
                    let (line, col) = e
                        .path()
                        .and_then(|p| position_of(&text, p))
                        .unwrap_or((1, 1));
                    eprintln!(
                        "{}:{line}:{col}: listener {}: {e}",
                        path.display(),
                        l.address
                    );
                    ok = false;
                }
            }
            if !ok {
                return ExitCode::FAILURE;
            }
            for w in c.warnings() {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(LoadError::Invalid(errs)) => {
            for line in errs.lines() {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// 1-based line and column of the first quoted occurrence of `value` in `text`.
fn position_of(text: &str, value: &str) -> Option<(usize, usize)> {
    let at = [format!("\"{value}\""), format!("'{value}'")]
        .iter()
        .filter_map(|q| text.find(q.as_str()))
        .min()?;
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, col))
}

/// The main thread's runtime, and how many workers serve connections. It is always
/// single-threaded: with more workers, each one runs a single-threaded runtime of its
/// own (proxy/workers.rs), and the main thread is the first of them.
fn runtime(workers: Option<usize>) -> Result<(tokio::runtime::Runtime, usize), String> {
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    Ok((rt, workers))
}

fn start_workers(n: usize) -> Result<(), String> {
    sluice::proxy::workers::start(n).map_err(|e| format!("cannot start {n} worker threads: {e}"))
}

fn run(args: RunArgs) -> Result<(), String> {
    let config = args.to_config()?;
    telemetry::init(args.log_format, args.access_log == OnOff::On);
    for w in args.warnings(&config).into_iter().chain(config.warnings()) {
        tracing::warn!("{w}");
    }
    let upgrade_socket = config.server.upgrade_socket.clone();
    // An upgrade takes the running sluice's sockets first: without one, nothing starts.
    let taken = match (args.upgrade, &upgrade_socket) {
        (false, _) => None,
        (true, None) => {
            return Err(
                "--upgrade needs --upgrade-socket PATH (or [server] upgrade_socket)".into(),
            );
        }
        (true, Some(path)) => Some(handover::take(path).map_err(|e| chain(&e))?),
    };
    let (rt, workers) = runtime(config.server.workers)?;
    let path = args.config.clone();
    let overrides: Overrides = {
        let args = args.clone();
        Box::new(move |c| args.apply(c).map_err(Into::into))
    };
    rt.block_on(async move {
        start_workers(workers)?;
        let state = State::new(config, path, Some(overrides));
        let (inherited, taking) = match taken {
            Some((inherited, taking)) => (inherited, Some(taking)),
            None => (Inherited::default(), None),
        };
        // Failing here leaves a running sluice as it was: it has not been told.
        let server = App::bind_inherited(Arc::clone(&state), inherited)
            .await
            .map_err(|e| chain(&e))?;
        tokio::spawn(reload_on_sighup(Arc::clone(&state)));
        let handed_over = Arc::new(tokio::sync::Notify::new());
        let (started, serving) = tokio::sync::oneshot::channel();
        let offering = match upgrade_socket {
            Some(path) => {
                let (state, done) = (Arc::clone(&state), Arc::clone(&handed_over));
                Some(tokio::spawn(upgrades(path, state, taking, serving, done)))
            }
            None => {
                tokio::spawn(async move {
                    if serving.await.is_ok() {
                        notify::serving(false);
                    }
                });
                None
            }
        };
        let shutdown = async {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = handed_over.notified() => {}
            }
            // Draining: no more upgrades (the Unix socket is removed with the task).
            if let Some(task) = &offering {
                task.abort();
            }
        };
        server.serve_telling(shutdown, Some(started)).await;
        Ok(())
    })
}

/// The upgrade socket's side of a running sluice: once this process serves, it tells
/// the process it took over from (if any), then offers its own sockets to the next
/// one; `done` is told when a next one has taken over.
async fn upgrades(
    path: std::path::PathBuf,
    state: Arc<State>,
    taking: Option<handover::Taking>,
    serving: tokio::sync::oneshot::Receiver<()>,
    done: Arc<tokio::sync::Notify>,
) {
    if serving.await.is_err() {
        return;
    }
    let offered = match taking {
        Some(taking) => match tokio::task::spawn_blocking(move || taking.serving()).await {
            Ok(Ok(socket)) => {
                tracing::info!("upgrade complete: serving the listeners taken over");
                notify::serving(true);
                handover::offer_on(socket, path, state).await
            }
            Ok(Err(e)) => {
                // The old process died during the exchange: this one serves on alone.
                tracing::error!(error = %chain(&e), "upgrade: the old process did not answer; serving on");
                notify::serving(true);
                handover::offer(path, state).await
            }
            Err(_) => return,
        },
        None => {
            notify::serving(false);
            handover::offer(path, state).await
        }
    };
    match offered {
        Ok(()) => done.notify_one(),
        Err(e) => {
            tracing::error!(error = %chain(&e), "no upgrades: the upgrade socket cannot be used")
        }
    }
}

async fn reload_on_sighup(state: Arc<State>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if let Err(e) = state.reload() {
            tracing::error!(error = %chain(&e), "reload failed; keeping the running configuration");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
