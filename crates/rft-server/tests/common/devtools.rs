//! A minimal DevTools-protocol client for the dashboard tests: headless Chromium on a loopback
//! port, spoken to over its page's WebSocket. `Runtime.evaluate` clicks buttons and reads the
//! DOM; `goto` and `wait_until` know the dashboard's page (`window.rftDashboard`, its notice and
//! main areas). Without Chromium a test skips, unless `RFT_REQUIRE_CHROMIUM` is set (CI sets it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|bin| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The browser, or `None` (the test then skips) when Chromium is missing and not required.
pub(crate) fn browser_or_skip(home: &Path) -> Option<Browser> {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("RFT_REQUIRE_CHROMIUM").is_none(),
            "RFT_REQUIRE_CHROMIUM is set but chromium is not installed"
        );
        eprintln!("skipping the dashboard in Chromium: `chromium` is not installed");
        return None;
    };
    Some(Browser::launch(bin, home))
}

pub(crate) struct Browser {
    child: Child,
    socket: TcpStream,
    next_id: u64,
}

impl Browser {
    fn launch(bin: &str, home: &Path) -> Browser {
        let profile = home.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .env("HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Chromium writes its port (and the browser's socket path) once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let start = Instant::now();
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "chromium did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let targets: Value = serde_json::from_str(
            &agent
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let path = &url[url.find("/devtools/").unwrap()..];
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: b3BlbnJmdC1kYXNoYm9hcmQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(socket.try_clone().unwrap());
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(
            status.contains(" 101 "),
            "websocket upgrade refused: {status}"
        );
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Browser {
            child,
            socket,
            next_id: 0,
        }
    }

    fn send_frame(&mut self, payload: &[u8]) {
        let mut frame = vec![0x81u8];
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65_536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).unwrap();
    }

    fn read_message(&mut self) -> Vec<u8> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).unwrap();
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.socket.read_exact(&mut b).unwrap();
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.socket.read_exact(&mut b).unwrap();
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.socket.read_exact(&mut payload).unwrap();
            match opcode {
                0x8 => panic!("chromium closed the DevTools connection"),
                0x9 | 0xA => continue,
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return message;
            }
        }
    }

    /// Calls a DevTools method and returns its `result`.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.send_frame(request.as_bytes());
        loop {
            let reply: Value = serde_json::from_slice(&self.read_message()).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub(crate) fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    pub(crate) fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_until(
            "document.readyState === 'complete' && !!window.rftDashboard",
            30,
        );
    }

    /// Waits until `condition` (a JS expression) is true in the page.
    pub(crate) fn wait_until(&mut self, condition: &str, seconds: u64) {
        let start = Instant::now();
        loop {
            let met = self.call(
                "Runtime.evaluate",
                json!({"expression": format!("!!({condition})"), "returnByValue": true}),
            );
            if met["result"]["value"] == Value::Bool(true) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(seconds),
                "still not true after {seconds} s: {condition}; the page: {}",
                self.eval(
                    "JSON.stringify({notice: (document.getElementById('notice') || {}).textContent, \
                     main: (document.getElementById('main') || {textContent: ''}).textContent.slice(0, 400), \
                     uncaught: window.rftDashboard && window.rftDashboard.uncaught})"
                )
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn number(&mut self, expression: &str) -> f64 {
        self.eval(expression).as_f64().unwrap_or(f64::NAN)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
