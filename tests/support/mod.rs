//! Test support: run the real `palisade` binary, talk to it over real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// A running `palisade demo`, killed on drop.
pub struct Demo {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub info: Value,
}

fn wait_for_file(path: &Path, child: &mut Child, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("palisade exited early: {status}"));
        }
        if start.elapsed() > limit {
            return Err(format!(
                "{} did not appear within {limit:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

impl Demo {
    pub fn start() -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
        let mut child = Command::new(BIN)
            .args(["demo", "--dir"])
            .arg(dir.path().join("demo"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn palisade demo");
        let json = dir.path().join("demo").join("demo.json");
        if let Err(e) = wait_for_file(&json, &mut child, Duration::from_secs(60)) {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
            panic!("{e}\n{log}");
        }
        let info: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        Demo {
            dir,
            child: Some(child),
            info,
        }
    }

    pub fn s(&self, key: &str) -> String {
        self.info[key]
            .as_str()
            .unwrap_or_else(|| panic!("demo.json lacks {key}"))
            .to_string()
    }

    pub fn addr(&self, url_key: &str) -> SocketAddr {
        let url = self.s(url_key);
        url.trim_start_matches("https://")
            .trim_end_matches('/')
            .parse()
            .unwrap()
    }

    pub fn visitor(&self) -> Client {
        Client::new(self.addr("visitor_url"), self.s("visitor_pin"), None)
    }

    pub fn operator(&self) -> Client {
        Client::new(self.addr("operator_url"), self.s("operator_pin"), None)
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn config(&self) -> PathBuf {
        PathBuf::from(self.s("config"))
    }

    /// Stop the demo process gracefully (SIGTERM) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// Log in as the demo operator; returns the session cookie.
    pub async fn login(&self, op: &Client) -> String {
        let r = op
            .post_json(
                "/api/v1/operator/login",
                &serde_json::json!({
                    "username": self.s("operator_user"),
                    "password": self.s("operator_password"),
                    "auth_string": self.s("auth_string"),
                }),
                &[],
            )
            .await
            .expect("login request");
        assert_eq!(r.status, 200, "login: {}", r.text());
        let cookie = r.header("set-cookie").expect("session cookie");
        cookie.split(';').next().unwrap().to_string()
    }
}

/// An operator with an open console (event stream): visitors can start chats.
pub struct Online {
    pub client: Client,
    pub cookie: String,
    pub stream: EventStream,
}

impl Demo {
    /// Log the demo operator in and keep its event stream open.
    pub async fn operator_online(&self) -> Online {
        let client = self.operator();
        let cookie = self.login(&client).await;
        let mut stream = client
            .events("/api/v1/operator/events", &[("cookie", cookie.clone())])
            .await
            .expect("operator event stream");
        stream
            .until("snapshot", Duration::from_secs(10))
            .await
            .expect("snapshot");
        Online {
            client,
            cookie,
            stream,
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `palisade serve` process, killed on drop.
pub struct Serve {
    pub child: Child,
    log: PathBuf,
}

impl Serve {
    /// Where `serve` writes its stderr for a config: beside the demo directory.
    pub fn log_path(config: &Path) -> PathBuf {
        config.parent().unwrap().parent().unwrap().join("serve.log")
    }

    /// Start `serve` and wait until `addr` accepts connections (or the process exits).
    pub fn start(config: &Path, addr: SocketAddr) -> Result<Serve, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::log_path(config))
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(std::fs::read_to_string(Self::log_path(config)).unwrap_or_default());
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(Serve {
                    child,
                    log: Self::log_path(config),
                });
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                return Err("serve did not start listening within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) until the log contains `needle` `n` times or more.
    pub fn wait_log(&self, needle: &str, n: usize, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while self.log().matches(needle).count() < n {
            if start.elapsed() > limit {
                return Err(format!(
                    "{needle:?} did not appear {n} times within {limit:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `palisade ARGS` to completion; returns (exit code, stdout, stderr).
pub fn run(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palisade");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// An HTTPS client that trusts exactly one pinned key, optionally from a chosen source.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Client {
    pub fn new(addr: SocketAddr, pin: String, source: Option<IpAddr>) -> Client {
        Client {
            addr,
            source,
            tls: palisade::tls::pinned_client_config(vec![pin]),
        }
    }

    pub fn with_source(&self, source: IpAddr) -> Client {
        Client {
            source: Some(source),
            ..self.clone()
        }
    }

    pub async fn tcp(&self) -> std::io::Result<tokio::net::TcpStream> {
        let sock = if self.addr.is_ipv6() {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        if let Some(src) = self.source {
            sock.bind(SocketAddr::new(src, 0))?;
        }
        sock.connect(self.addr).await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let tcp = self.tcp().await.map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = self.send(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .map_err(|_| "body timeout".to_string())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str, headers: &[(&str, String)]) -> Result<Reply, String> {
        self.request("GET", path, None, headers).await
    }

    /// POST JSON with the listener's own Origin (as a browser on that origin would).
    pub async fn post_json(
        &self,
        path: &str,
        v: &Value,
        headers: &[(&str, String)],
    ) -> Result<Reply, String> {
        let mut h: Vec<(&str, String)> = vec![("origin", format!("https://{}", self.addr))];
        h.extend(headers.iter().cloned());
        self.request("POST", path, Some(serde_json::to_vec(v).unwrap()), &h)
            .await
    }

    /// Open an event stream.
    pub async fn events(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<EventStream, String> {
        let mut b = Request::builder()
            .method("GET")
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let resp = self.send(b.body(Full::new(Bytes::new())).unwrap()).await?;
        if resp.status() != 200 {
            return Err(format!("event stream status {}", resp.status()));
        }
        Ok(EventStream {
            body: resp.into_body(),
            buf: String::new(),
        })
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

pub struct EventStream {
    body: Incoming,
    buf: String,
}

impl EventStream {
    /// The next event (comments skipped), or None at end of stream / after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..pos + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                });
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Ok(d) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&d));
            }
        }
    }

    /// Skip events until one named `event` arrives.
    pub async fn until(&mut self, event: &str, limit: Duration) -> Option<Sse> {
        let deadline = Instant::now() + limit;
        while let Some(e) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            if e.event == event {
                return Some(e);
            }
        }
        None
    }
}

/// Start a visitor chat; returns (chat id, token).
pub async fn start_chat(v: &Client, name: &str, question: &str) -> (i64, String) {
    let r = v
        .post_json(
            "/api/v1/visitor/chats",
            &serde_json::json!({"name": name, "question": question}),
            &[],
        )
        .await
        .expect("start chat");
    assert_eq!(r.status, 201, "{}", r.text());
    let j = r.json();
    (
        j["chat_id"].as_i64().unwrap(),
        j["token"].as_str().unwrap().to_string(),
    )
}

pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

pub fn cookie(c: &str) -> (&'static str, String) {
    ("cookie", c.to_string())
}

/// All bytes of the database and its WAL.
pub fn database_bytes(state_dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for f in ["palisade.db", "palisade.db-wal"] {
        if let Ok(b) = std::fs::read(state_dir.join(f)) {
            out.extend(b);
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}
