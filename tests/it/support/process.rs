//! The real `sluice` binary as a child process, for what only a process shows: exit
//! codes, stderr, stdout logs and signals. Killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Writes `text` to `name` in this test run's own temporary directory.
pub fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("sluice-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

/// Replaces the file at `path` whole (a write, then a rename), as config tools do: a
/// reader never sees half a file.
pub fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// sluice with `args`, no stdin, stdout and stderr piped.
fn command(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs sluice with `args` to completion (it must exit by itself within 10s).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let mut child = command(args).spawn().expect("spawn sluice");
    let deadline = Instant::now() + super::DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice {args:?} did not exit within the deadline");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running sluice whose stdout lines arrive on a channel.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Self::spawn_with_env(args, &[])
    }

    /// `spawn`, with these environment variables set.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = command(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn sluice");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take();
        let err_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = stderr {
            let sink = err_text.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        Proc {
            child,
            lines: rx,
            stderr: err_text,
        }
    }

    /// The next stdout line containing `needle`, within the deadline.
    pub fn line_with(&self, needle: &str) -> String {
        self.try_line_with(needle, super::DEADLINE)
            .unwrap_or_else(|seen| panic!(
                "no stdout line containing {needle:?} within the deadline; saw {seen:?}; stderr: {}",
                self.stderr.lock().unwrap()
            ))
    }

    /// The stdout lines before the next one containing `needle` (which must come).
    pub fn lines_before(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + super::DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return seen,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no stdout line containing {needle:?}; saw {seen:?}"),
            }
        }
    }

    /// Like `line_with` but gives up after `wait`, returning the lines seen meanwhile.
    pub fn try_line_with(&self, needle: &str, wait: Duration) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(l) => seen.push(l),
                Err(_) => return Err(seen),
            }
        }
    }

    /// Sends `sig` (e.g. "TERM", "HUP") to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for exit within the deadline and returns the exit code.
    pub fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + super::DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "sluice did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// From async code: the next stdout line containing `needle`, then a SIGTERM and
    /// the exit (its code).
    pub async fn line_then_stop(mut self, needle: &str) -> (String, i32) {
        let needle = needle.to_owned();
        tokio::task::spawn_blocking(move || {
            let line = self.line_with(&needle);
            self.signal("TERM");
            (line, self.wait())
        })
        .await
        .unwrap()
    }
}

/// Starts sluice with `args` plus `--log-format json` (from async code) and returns it
/// with the address its first listener bound, read from the "listening" event.
pub async fn start_json(args: &[&str]) -> (Proc, String) {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--log-format".into(), "json".into()]);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = Proc::spawn(&args);
        let line = p.line_with("\"listening\"");
        let j: serde_json::Value = serde_json::from_str(&line).expect("JSON event line");
        assert!(
            j.get("ts").is_some() && j["level"] == "info" && j["event"] == "listening",
            "event lines carry ts, level, event: {line}"
        );
        let addr = j["address"].as_str().expect("address field").to_owned();
        (p, addr)
    })
    .await
    .unwrap()
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
