//! A real browser for the dashboard's test: Debian's headless Chromium driven through
//! chromedriver (packages `chromium` and `chromium-driver`, installed by test.sh) over
//! the W3C WebDriver protocol, spoken with the tests' own HTTP client. chromedriver
//! runs in a process group of its own, so that its Chromium goes with it on drop.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::DEADLINE;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    profile: std::path::PathBuf,
}

impl Browser {
    /// A new headless Chromium session.
    pub async fn start() -> Browser {
        let port = super::dead_addr().await.port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (Debian packages chromium and chromium-driver; ./test.sh installs them)");
        let base = format!("http://127.0.0.1:{port}");
        let profile = std::env::temp_dir().join(format!("sluice-chromium-{port}"));
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            profile,
        };
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Ok(v) = b.call("GET", "/status", None).await
                    && v["ready"] == true
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("chromedriver ready");
        // The flags keep Chromium off the network it cannot reach here.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", b.profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .await
            .expect("new session");
        b.session = v["sessionId"].as_str().expect("session id").to_owned();
        b
    }

    /// One WebDriver command; its `value`, or the error it reported.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = super::client()
            .request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&bytes.to_bytes()).map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    async fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        match self.call(method, &path, body).await {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub async fn js(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `script` until it returns something truthy; that value.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let v = self.js(script).await;
                if !(v.is_null() || v == false || v == "" || v == 0) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("the page did not show {what}"))
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .session_call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().expect("element id").to_owned()
    }

    /// Clicks the element `css` selects, as a user would (it must be visible). The
    /// dashboard redraws every second: an element replaced between finding and
    /// clicking it is found again.
    pub async fn click(&self, css: &str) {
        for _ in 0..5 {
            let id = self.element(css).await;
            let path = format!("/session/{}/element/{id}/click", self.session);
            match self.call("POST", &path, Some(json!({}))).await {
                Ok(_) => return,
                Err(e) if e.contains("stale element") => continue,
                Err(e) => panic!("WebDriver click on {css}: {e}"),
            }
        }
        panic!("{css} kept being replaced before it could be clicked");
    }

    /// Types `text` into the element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Saves what the window shows as a PNG at `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let v = self.session_call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("PNG");
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) {
        let _ = self
            .call("DELETE", &format!("/session/{}", self.session), None)
            .await;
        self.kill();
    }

    fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--"])
            .arg(format!("-{}", self.driver.id()))
            .status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}
