//! Debian's Chromium, headless, driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands in on fd 3, answers out on fd 4, each a JSON text
//! ended by a NUL), so that a test clicks and types in the real console as an operator does.
//! Every request it makes stays on 127.0.0.1: anything else goes to a proxy that is not there.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::Child;

pub struct Browser {
    proc: Child,
    input: ChildStdin,
    from: Receiver<Value>,
    next: u64,
    session: String,
    /// Script exceptions, console errors and CSP refusals seen so far.
    pub errors: Vec<String>,
}

/// Whether Chromium is here (`VIGIL_REQUIRE_PEERS` makes its absence a failure).
pub fn available() -> bool {
    let ok = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var_os("VIGIL_REQUIRE_PEERS").is_none(),
        "chromium is required but missing (apt-get install chromium)"
    );
    ok
}

impl Browser {
    /// Starts Chromium with a profile under `dir`, and opens one blank tab.
    pub fn start(dir: &Path) -> Browser {
        let profile = dir.join("chromium-profile");
        let chromium = crate::peer("chromium");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            "--metrics-recording-only",
            "--password-store=basic",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            "--window-size=1280,2000",
        ];
        // fd 3 and 4 are the protocol's; the shell maps them onto this process's pipes.
        let script = format!(
            "exec \"$0\" {} --user-data-dir=\"$1\" 3<&0 4>&1 0</dev/null 1>&2",
            args.join(" ")
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(&chromium)
            .arg(&profile)
            .stdin(Stdio::piped());
        let log = dir.join("chromium.log");
        let f = std::fs::File::create(&log).expect("log");
        cmd.stderr(Stdio::from(f)).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("chromium");
        let input = child.stdin.take().expect("stdin");
        let out = child.stdout.take().expect("stdout");
        let (tx, from) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        let proc = Child {
            child,
            log,
            name: "chromium".into(),
        };
        let mut b = Browser {
            proc,
            input,
            from,
            next: 0,
            session: String::new(),
            errors: Vec::new(),
        };
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.browser_call(
            "Target.attachToTarget",
            json!({"targetId": id, "flatten": true}),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.call("Runtime.enable", json!({}));
        b.call("Log.enable", json!({}));
        b
    }

    fn send(&mut self, msg: Value) -> u64 {
        let id = msg["id"].as_u64().unwrap_or(0);
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.input.write_all(&bytes).expect("to chromium");
        self.input.flush().expect("to chromium");
        id
    }

    fn wait_answer(&mut self, id: u64, what: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let msg = self.from.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "chromium did not answer {what} within 60 s:\n{}",
                    self.proc.log_text()
                )
            });
            if msg["id"].as_u64() == Some(id) {
                if let Some(e) = msg.get("error") {
                    panic!("{what}: {e}");
                }
                return msg["result"].clone();
            }
            self.note(&msg);
        }
    }

    /// Keeps what went wrong in the page: exceptions, console errors, refused loads.
    fn note(&mut self, msg: &Value) {
        let p = &msg["params"];
        match msg["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(format!(
                "exception: {}",
                p["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .unwrap_or_else(|| p["exceptionDetails"]["text"].as_str().unwrap_or(""))
            )),
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => {
                self.errors.push(format!("console: {}", p["args"]))
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => self.errors.push(format!(
                "{}: {} {}",
                p["entry"]["source"].as_str().unwrap_or(""),
                p["entry"]["text"].as_str().unwrap_or(""),
                p["entry"]["url"].as_str().unwrap_or("")
            )),
            _ => {}
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.send(json!({"id": self.next, "method": method, "params": params}));
        self.wait_answer(id, method)
    }

    /// A command to the tab.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.send(
            json!({"id": self.next, "sessionId": self.session, "method": method, "params": params}),
        );
        self.wait_answer(id, method)
    }

    /// Evaluates `js` in the page (promises awaited); its value as JSON.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        let href = serde_json::to_string(url).expect("json");
        self.wait_for(
            &format!("location.href === {href} && document.readyState === 'complete'"),
            "the page to load",
            Duration::from_secs(60),
        );
    }

    /// Polls `js` until it is true; panics after `timeout` with `what` and the page's text.
    pub fn wait_for(&mut self, js: &str, what: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.eval(js) != Value::Bool(true) {
            if Instant::now() > end {
                let body = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "waited {timeout:?} for {what} ({js}); errors {:?}; page:\n{}",
                    self.errors,
                    body.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Clicks the first element `selector` finds, with the mouse, as a person would: where it
    /// is on the screen once nothing else is there (a page that moves is waited for).
    pub fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).expect("json");
        let end = Instant::now() + Duration::from_secs(30);
        let (x, y) = loop {
            let r = self.eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); const x = r.x + r.width / 2, y = r.y + r.height / 2; return e.contains(document.elementFromPoint(x, y)) ? [x, y] : null; }})()"
            ));
            if let (Some(x), Some(y)) = (r[0].as_f64(), r[1].as_f64()) {
                break (x, y);
            }
            assert!(
                Instant::now() < end,
                "nothing to click at {selector}: {:?}",
                self.errors
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Types `text` into the element `selector` finds (focused first; what it held is
    /// selected, so the text replaces it).
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).expect("json");
        let found = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return false; e.focus(); if (e.select) e.select(); return true; }})()"
        ));
        assert_eq!(
            found,
            Value::Bool(true),
            "nothing to type into at {selector}"
        );
        self.call("Input.insertText", json!({"text": text}));
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

impl Drop for Browser {
    /// Closes Chromium as its protocol asks (its renderers go with it), then the process.
    fn drop(&mut self) {
        self.next += 1;
        let mut bytes = serde_json::to_vec(&json!({"id": self.next, "method": "Browser.close"}))
            .unwrap_or_default();
        bytes.push(0);
        let _ = self.input.write_all(&bytes);
        let _ = self.input.flush();
        self.proc.wait_exit(Duration::from_secs(10));
    }
}
