//! Reload and shutdown (SPEC §4 signals, §5 POST /reload): a new config takes effect
//! without dropping the listener, a bad one is refused and the running one kept, and
//! shutting down lets in-flight requests finish.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::sync::Notify;

use crate::support::process::Proc;
use crate::support::*;

fn write(path: &std::path::Path, text: &str) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn config(backend: &str, admin: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"{admin}\"\n[upstream.web]\nbackends = [{{ url = \"{backend}\" }}]\n"
    )
}

#[tokio::test]
async fn sighup_and_post_reload_swap_the_config_and_keep_it_when_invalid() {
    let a = TestBackend::replying("a").await;
    let b = TestBackend::replying("b").await;
    let dir = std::env::temp_dir().join(format!("sluice-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    // The admin port must be fixed in the file (reloads keep it); take a free one.
    let admin = dead_addr().await.to_string();
    write(&path, &config(&a.url(), &admin));
    let p = {
        let path = path.to_str().unwrap().to_owned();
        tokio::task::spawn_blocking(move || Proc::spawn(&["-c", &path, "--log-format", "json"]))
            .await
            .unwrap()
    };
    let p = Arc::new(std::sync::Mutex::new(p));
    let addr = {
        let p = p.clone();
        tokio::task::spawn_blocking(move || {
            let line = p.lock().unwrap().line_with("\"listening\"");
            let j: serde_json::Value = serde_json::from_str(&line).unwrap();
            j["address"].as_str().unwrap().to_owned()
        })
        .await
        .unwrap()
    };
    let c = client();
    let get = |path: &str| {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(Default::default())
            .unwrap();
        send_with(&c, req)
    };
    assert_eq!(get("/").await.2, "a");

    // SIGHUP with a new backend.
    write(&path, &config(&b.url(), &admin));
    {
        let p = p.clone();
        tokio::task::spawn_blocking(move || {
            let p = p.lock().unwrap();
            p.signal("HUP");
            p.line_with("configuration reloaded");
        })
        .await
        .unwrap();
    }
    assert_eq!(get("/").await.2, "b");

    // An invalid file: logged, refused, the running config kept.
    write(
        &path,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.web]\nbackends = [{ url = \"htp://x:1\" }]\n",
    );
    {
        let p = p.clone();
        tokio::task::spawn_blocking(move || {
            let p = p.lock().unwrap();
            p.signal("HUP");
            p.line_with("reload failed");
        })
        .await
        .unwrap();
    }
    assert_eq!(get("/").await.2, "b");
    let req = http::Request::post(format!("http://{admin}/reload"))
        .body(Default::default())
        .unwrap();
    let (s, _, body) = send_with(&c, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("sluice.toml:4:"),
        "errors name the file and line: {body}"
    );

    // POST /reload with a valid file again.
    write(&path, &config(&a.url(), &admin));
    let req = http::Request::post(format!("http://{admin}/reload"))
        .body(Default::default())
        .unwrap();
    assert_eq!(send_with(&c, req).await.0, StatusCode::OK);
    assert_eq!(get("/").await.2, "a");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let gate = Arc::new(Notify::new());
    let be = {
        let gate = gate.clone();
        TestBackend::start(move |_| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                http::Response::new(full("finished"))
            }
        })
        .await
    };
    let lb = Sluice::over(&[be.url()], "").await;
    let url = lb.url("/");
    let in_flight = tokio::spawn(async move {
        let req = http::Request::get(url).body(Default::default()).unwrap();
        send_with(&client(), req).await
    });
    tokio::time::timeout(DEADLINE, async {
        while be.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let addr = lb.addr;
    let shutdown = tokio::spawn(lb.shutdown());
    // New connections are refused once shutdown began...
    tokio::time::timeout(DEADLINE, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("listener closed");
    // ...while the request in flight completes normally.
    gate.notify_one();
    let (s, _, body) = in_flight.await.unwrap();
    assert_eq!((s, body.as_str()), (StatusCode::OK, "finished"));
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .unwrap()
        .unwrap();
}
