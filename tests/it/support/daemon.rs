//! A real server a test starts (dnsmasq, etcd, Redis): its process, frozen and thawed on
//! demand (SIGSTOP/SIGCONT, as a server that stops answering), killed on drop.

use std::process::{Child, Command};

pub struct Daemon(Child);

impl Daemon {
    pub fn new(child: Child) -> Daemon {
        Daemon(child)
    }

    /// Freezes the server (SIGSTOP): requests to it hang, as with a server that is down.
    pub fn pause(&self) {
        assert!(self.signal("STOP"), "kill -STOP");
    }

    /// Lets a paused server answer again (SIGCONT).
    pub fn resume(&self) {
        assert!(self.signal("CONT"), "kill -CONT");
    }

    /// Kills the server and waits for it to exit (again on drop: harmless).
    pub fn stop(&mut self) {
        self.signal("CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn signal(&self, sig: &str) -> bool {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.0.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
