//! A real headless Chromium, driven through chromedriver's W3C WebDriver endpoint: the dozen
//! commands the console's tests use, over a blocking HTTP client (no async WebDriver crate and
//! its TLS stack to compile for them).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The W3C name of an element reference in a WebDriver answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
    /// Where screenshots go.
    pub shots: PathBuf,
}

fn find(candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "none of {candidates:?} exists: install Debian's chromium and chromium-driver \
                 (`apt-get install -y chromium chromium-driver`; .ci/run does)"
            )
        })
        .to_string()
}

impl Browser {
    /// Starts chromedriver on a port it picks and reports, and a headless Chromium session
    /// (1280×1000) whose profile lives in `dir`.
    pub fn start(dir: &Path, shots: PathBuf) -> Browser {
        let driver_bin = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let mut driver = Command::new(&driver_bin)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {driver_bin}: {e}"));
        let stdout = driver.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let port = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("chromedriver did not say its port within 30 s");
            if let Some(rest) = line.split_once("started successfully on port ") {
                break rest.1.trim_end_matches('.').to_string();
            }
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(180)))
            .build();
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            agent: ureq::Agent::new_with_config(config),
            shots,
        };
        std::fs::create_dir_all(&browser.shots).unwrap();
        let profile = dir.join("chromium-profile");
        let session = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,1000",
                        format!("--user-data-dir={}", profile.display())],
                },
            }}}),
        );
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_string();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let answer = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(&body),
        };
        let mut response = answer.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let value: Value = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON: {e}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path} answered {status}: {}",
            value["value"]
        );
        value["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its value.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    pub fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    /// Replaces what the field `css` holds by typing `text` into it (`\u{E007}` is Enter).
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/clear"), json!({}));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    /// The text of the first element matching `css`, `None` when there is none.
    pub fn text(&self, css: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .as_str()
        .map(str::to_string)
    }

    /// The page's HTML as the browser holds it now.
    pub fn html(&self) -> String {
        self.js("return document.documentElement.outerHTML;", json!([]))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls until `css`'s text contains `needle`; panics with the page's text after `timeout`.
    pub fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(t) = self.text(css)
                && t.contains(needle)
            {
                return t;
            }
            if start.elapsed() > timeout {
                let body = self.text("main").unwrap_or_default();
                panic!(
                    "after {timeout:?} {css} on {} still lacks {needle:?}; it says {:?}; the page: {body}",
                    self.url(),
                    self.text(css)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            json!({ "width": width, "height": height }),
        );
    }

    /// Lays pages out as a phone `width` CSS pixels wide would (Chrome's device emulation: a
    /// desktop window cannot be made that narrow); `None` undoes it.
    pub fn emulate_width(&self, width: Option<u32>) {
        let (cmd, params) = match width {
            Some(w) => (
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": w, "height": 780, "deviceScaleFactor": 1, "mobile": false }),
            ),
            None => ("Emulation.clearDeviceMetricsOverride", json!({})),
        };
        self.call(
            "POST",
            "/goog/cdp/execute",
            json!({ "cmd": cmd, "params": params }),
        );
    }

    /// Renders pages as under the system's dark (`true`) or light colour scheme.
    pub fn emulate_dark(&self, dark: bool) {
        let value = if dark { "dark" } else { "light" };
        self.call(
            "POST",
            "/goog/cdp/execute",
            json!({ "cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{ "name": "prefers-color-scheme", "value": value }] } }),
        );
    }

    /// A PNG of what the window shows now, written to `shots/<name>.png`.
    pub fn screenshot_viewport(&self, name: &str) -> PathBuf {
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64_decode(png.as_str().unwrap_or_default());
        assert!(bytes.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A PNG of the whole page (the window grown to the page's height for it) at the window's
    /// width, written to `shots/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let size = self.js(
            "return [window.outerWidth, window.outerHeight, document.documentElement.scrollHeight];",
            json!([]),
        );
        let (w, h, full) = (
            size[0].as_u64().unwrap_or(1280) as u32,
            size[1].as_u64().unwrap_or(1000) as u32,
            size[2].as_u64().unwrap_or(1000) as u32,
        );
        self.resize(w, (full + 140).clamp(h, 6000));
        let png = self.call("GET", "/screenshot", Value::Null);
        self.resize(w, h);
        let bytes = base64_decode(png.as_str().unwrap_or_default());
        assert!(bytes.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        // chromedriver and the browser it started share its process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | d << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

#[test]
fn base64_decodes_padding() {
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("aGV5"), b"hey");
    assert_eq!(base64_decode("aA=="), b"h");
}
