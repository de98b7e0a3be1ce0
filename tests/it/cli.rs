//! The binary itself (SPEC §1): flags, exit codes, stderr lines, `check`, logs, signals.

use crate::support::process::{run, start_json, temp_config};
use crate::support::*;

#[test]
fn bad_flags_exit_non_zero_with_the_problem_on_the_first_line() {
    for args in [
        &["--no-such-flag"][..],
        &["--strategy", "fastest", "-b", "127.0.0.1:1"],
        &["--backend", "ftp://x:1"],
        &["--listen", "not-an-address", "-b", "127.0.0.1:1"],
        &["--workers", "0", "-b", "127.0.0.1:1"],
    ] {
        let (code, _, err) = run(args);
        assert_ne!(code, 0, "{args:?}");
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (code, _, err) = run(&[]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--backend"), "{err}");
}

#[tokio::test]
async fn an_address_in_use_is_one_line_and_exit_1() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run(&["-l", &addr, "-b", "127.0.0.1:1"]))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn check_reports_every_problem_as_file_line_col() {
    let path = temp_config(
        "bad.toml",
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n\n[limits]\nidle_timeout = \"5 parsecs\"\n\n[[route]]\nupstream = \"nope\"\n\n[upstream.web]\nbackends = [{ url = \"htp://10.0.0.1:80\" }]\n",
    );
    let p = path.to_str().unwrap();
    let (code, _, err) = run(&["check", "-c", p]);
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].starts_with(&format!("{p}:5:16: ")), "{err}");
    assert!(lines[1].starts_with(&format!("{p}:8:12: ")), "{err}");
    assert!(lines[2].starts_with(&format!("{p}:11:21: ")), "{err}");
    // The same file at startup: one line, exit 1.
    let (code, _, err) = run(&["-c", p]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{p}:5:16: ")), "{err}");

    let good = temp_config(
        "good.toml",
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[upstream.web]\nbackends = [{ url = \"127.0.0.1:9000\" }]\n",
    );
    let (code, _, err) = run(&["check", "-c", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["check", "-c", "/nonexistent/sluice.toml"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn json_access_log_and_graceful_sigterm() {
    let be = TestBackend::replying("a").await;
    let url = be.url();
    let (p, addr) = start_json(&["-l", "127.0.0.1:0", "-b", &url, "--workers", "1"]).await;
    let c = client();
    let req = http::Request::get(format!("http://{addr}/hello?x=1"))
        .header("x-request-id", "rid-1")
        .body(Default::default())
        .unwrap();
    let (s, _, _) = send_with(&c, req).await;
    assert_eq!(s, 200);
    let (line, code) = p.line_then_stop("rid-1").await;
    let j: serde_json::Value = serde_json::from_str(&line).expect("access line is JSON");
    for k in [
        "ts",
        "client",
        "method",
        "path",
        "status",
        "upstream",
        "backend",
        "duration_ms",
        "bytes",
        "request_id",
        "attempts",
    ] {
        assert!(j.get(k).is_some(), "missing {k}: {line}");
    }
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/hello?x=1");
    assert_eq!(j["status"], 200);
    assert_eq!(j["upstream"], "default");
    assert_eq!(j["backend"], be.addr.to_string());
    assert_eq!(j["bytes"], 1);
    assert_eq!(j["attempts"], 1);
    assert_eq!(code, 0, "SIGTERM exits 0");
}

#[tokio::test]
async fn json_access_lines_list_every_attempt() {
    let dead = dead_addr().await;
    let live = TestBackend::replying("a").await;
    let (dead_url, live_url) = (format!("http://{dead}"), live.url());
    let (p, addr) = start_json(&[
        "-l",
        "127.0.0.1:0",
        "-b",
        &dead_url,
        "-b",
        &live_url,
        "--strategy",
        "first",
        "--workers",
        "1",
    ])
    .await;
    let req = http::Request::get(format!("http://{addr}/t"))
        .header("x-request-id", "rid-tries")
        .body(Default::default())
        .unwrap();
    let (s, _, _) = send_with(&client(), req).await;
    assert_eq!(s, 200);
    let (line, _) = p.line_then_stop("rid-tries").await;
    let j: serde_json::Value = serde_json::from_str(&line).expect("access line is JSON");
    assert_eq!(j["attempts"], 2, "{line}");
    let tries = j["tries"].as_array().expect("tries");
    assert_eq!(tries.len(), 2, "{line}");
    assert_eq!(tries[0]["backend"], dead.to_string());
    assert_eq!(tries[0]["outcome"], "refused");
    assert_eq!(tries[1]["backend"], live.addr.to_string());
    assert_eq!(tries[1]["outcome"], "200");
    for t in tries {
        assert!(
            t["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{line}"
        );
    }
}

#[tokio::test]
async fn access_log_off_prints_no_request_lines_and_events_are_json() {
    let be = TestBackend::replying("a").await;
    let url = be.url();
    let (mut p, addr) = start_json(&["-l", "127.0.0.1:0", "-b", &url, "--access-log", "off"]).await;
    let req = http::Request::get(format!("http://{addr}/"))
        .header("x-request-id", "rid-off")
        .body(Default::default())
        .unwrap();
    assert_eq!(send_with(&client(), req).await.0, 200);
    let (before_shutdown, code) = tokio::task::spawn_blocking(move || {
        p.signal("TERM");
        let seen = p.lines_before("shutting down");
        (seen, p.wait())
    })
    .await
    .unwrap();
    assert!(
        before_shutdown.is_empty(),
        "unexpected lines: {before_shutdown:?}"
    );
    assert_eq!(code, 0);
}

#[tokio::test]
async fn workers_sets_the_worker_threads() {
    let be = TestBackend::replying("a").await;
    let url = be.url();
    for (workers, threads) in [("1", 0), ("3", 2)] {
        let (p, _addr) = start_json(&["-l", "127.0.0.1:0", "-b", &url, "--workers", workers]).await;
        // The main thread is the first worker; each further one is a thread of its own,
        // named for it. tokio's own threads (a multi-threaded runtime) would be unnamed.
        // A new thread takes its name a moment after it starts, so look until they have.
        let pid = p.child.id();
        let count = move || {
            let (mut workers, mut unnamed) = (0, 0);
            for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
                let comm = std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap();
                if comm.starts_with("sluice-worker-") {
                    workers += 1;
                } else if comm.starts_with("tokio-") {
                    unnamed += 1;
                }
            }
            (workers, unnamed)
        };
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut n = count();
        while n.0 < threads && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            n = count();
        }
        assert_eq!(n, (threads, 0), "--workers {workers}");
    }
}

#[tokio::test]
async fn a_failed_request_is_logged_with_its_upstream_and_backend() {
    let dead = dead_addr().await.to_string();
    let (p, addr) = start_json(&["-l", "127.0.0.1:0", "-b", &dead, "--access-log", "off"]).await;
    let req = http::Request::get(format!("http://{addr}/"))
        .body(Default::default())
        .unwrap();
    assert_eq!(send_with(&client(), req).await.0, 502);
    let line = tokio::task::spawn_blocking(move || p.line_with("request failed"))
        .await
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["level"], "warn", "{line}");
    assert_eq!(j["upstream"], "default", "{line}");
    assert_eq!(j["backend"], dead.as_str(), "{line}");
    assert_eq!(j["status"], 502, "{line}");
}

/// Issue #9: `sluice check` does not stop at an unknown key; every problem, in order.
#[test]
fn check_lists_the_problems_after_a_misspelt_key() {
    let path = temp_config(
        "misspelt.toml",
        "[[listener]]\nadress = \"127.0.0.1:8080\"\n[limits]\nidle_timeout = \"5 parsecs\"\n[upstream.web]\nbackends = [{ url = \"htp://10.0.0.1:80\" }]\n",
    );
    let p = path.to_str().unwrap();
    let (code, _, err) = run(&["check", "-c", p]);
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!("{p}:2:1: unknown key \"adress\"")),
        "{err}"
    );
    assert!(lines[1].starts_with(&format!("{p}:4:16: ")), "{err}");
    assert!(lines[2].starts_with(&format!("{p}:6:21: ")), "{err}");
}

/// Issue #9: the same backend twice on the command line is refused, as the admin API
/// refuses it (409); a flag with no effect and an open admin API are warned about.
#[test]
fn duplicate_backends_are_refused_and_idle_flags_warned_about() {
    let (code, _, err) = run(&["-b", "127.0.0.1:9", "-b", "http://127.0.0.1:9"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1:9 is given twice"), "{err}");

    let p = crate::support::process::Proc::spawn(&[
        "-l",
        "127.0.0.1:0",
        "-b",
        "127.0.0.1:9",
        "--hash-key",
        "path",
        "--admin",
        "0.0.0.0:0",
    ]);
    let lines = p.lines_before("listening");
    let all = lines.join("\n");
    assert!(all.contains("--hash-key has no effect"), "{all}");
    assert!(all.contains("has no token"), "{all}");
}

#[test]
fn help_lists_strategies_and_log_formats() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for name in [
        "round_robin",
        "random",
        "least_conn",
        "p2c",
        "peak_ewma",
        "consistent_hash",
        "first",
        "json",
    ] {
        assert!(out.contains(name), "{name} in\n{out}");
    }
}

/// Issue #9: the demo summarizes its traffic, one line per second, instead of a line
/// per request.
#[tokio::test]
async fn the_demo_summarizes_traffic_unless_asked_for_access_lines() {
    let p = crate::support::process::Proc::spawn(&[
        "demo",
        "--backends",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let (p, lb) = tokio::task::spawn_blocking(move || {
        let line = p.line_with("balancer");
        let url = line.split_whitespace().last().unwrap().to_owned();
        (p, url)
    })
    .await
    .unwrap();
    let c = client();
    for _ in 0..20 {
        let req = http::Request::get(&lb).body(Default::default()).unwrap();
        assert_eq!(send_with(&c, req).await.0, 200);
    }
    let before = tokio::task::spawn_blocking(move || p.lines_before("requests in the last second"))
        .await
        .unwrap();
    assert!(
        !before.iter().any(|l| l.contains("\"GET /")),
        "no access lines: {before:?}"
    );
}
