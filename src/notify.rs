//! systemd's readiness protocol (`sd_notify`): with `Type=notify` and `NotifyAccess=all`
//! in the unit, sluice says `READY=1` once it serves, and a process that took over by
//! an upgrade also says `MAINPID=` with its own process id, so that systemd follows
//! the new process as the service's main one while the old one drains and exits.
//! Without `NOTIFY_SOCKET` in the environment, nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (lines such as `READY=1`) to `$NOTIFY_SOCKET`, if set; errors are
/// only logged (a supervisor that does not listen must not stop sluice).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Serving: ready, and (after an upgrade) the main process from now on.
pub fn serving(took_over: bool) {
    if took_over {
        notify(&format!("MAINPID={}\nREADY=1\n", std::process::id()));
    } else {
        notify("READY=1\n");
    }
}
