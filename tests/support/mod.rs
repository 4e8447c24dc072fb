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

/// A request to `addr` with a JSON body (when given) and extra headers.
fn build_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, String)],
) -> Result<Request<Full<Bytes>>, String> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())
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
        let req = build_request(self.addr, method, path, body, headers)?;
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

// ---------------------------------------------------------------------------------------
// Adversarial suite helpers (tests/adversarial_*.rs, run by scripts/adversarial).
// ---------------------------------------------------------------------------------------

/// Run one adversarial case, bounded by `limit`: print and record
/// `ok <name> <figures>` or `FAIL <name>: <why>` (in `$PALISADE_ADV_RESULTS` when set),
/// and fail the test on FAIL. A panic inside `body` is a FAIL with the panic message.
pub async fn case<F>(name: &str, limit: Duration, body: F)
where
    F: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    let started = Instant::now();
    let task = tokio::spawn(body);
    let abort = task.abort_handle();
    let line = match tokio::time::timeout(limit, task).await {
        Ok(Ok(Ok(figures))) => format!("ok {name} {figures}").trim_end().to_string(),
        Ok(Ok(Err(why))) => format!("FAIL {name}: {}", one_line(&why)),
        Ok(Err(e)) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            format!("FAIL {name}: panicked: {}", one_line(&msg))
        }
        Ok(Err(e)) => format!("FAIL {name}: task failed: {e}"),
        Err(_) => {
            abort.abort();
            format!("FAIL {name}: did not finish within {limit:?}")
        }
    };
    record(&line);
    eprintln!("# {name} took {:.1} s", started.elapsed().as_secs_f64());
    assert!(line.starts_with("ok "), "{line}");
}

fn one_line(s: &str) -> String {
    let joined: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut out = joined.join(" | ");
    if out.len() > 600 {
        let mut cut = 600;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Print a result line and append it to `$PALISADE_ADV_RESULTS`.
pub fn record(line: &str) {
    use std::io::Write;
    println!("{line}");
    if let Some(path) = std::env::var_os("PALISADE_ADV_RESULTS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// `Err(why)` unless `cond` holds: `ensure(x == 3, || format!(...))?`.
pub fn ensure(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(why())
    }
}

/// A demo laid out on disk and stopped: a complete appliance directory (config, policy,
/// certificates, secrets, a database with the demo operator) to run `serve` on, with the
/// policy changed first where a test needs it.
pub struct Layout {
    pub demo: Demo,
}

impl Layout {
    pub fn new() -> Layout {
        let mut demo = Demo::start();
        demo.stop();
        // These tests are not about the offline case: visitors may queue with nobody online.
        let chat = demo.config().parent().unwrap().join("policy/chat.toml");
        let text = std::fs::read_to_string(&chat).unwrap();
        std::fs::write(
            &chat,
            text.replace("queue_when_offline = false", "queue_when_offline = true"),
        )
        .unwrap();
        Layout { demo }
    }

    pub fn s(&self, key: &str) -> String {
        self.demo.s(key)
    }
    pub fn config(&self) -> PathBuf {
        self.demo.config()
    }
    pub fn policy_dir(&self) -> PathBuf {
        PathBuf::from(self.demo.s("policy_dir"))
    }
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(self.demo.s("state_dir"))
    }
    pub fn root(&self) -> PathBuf {
        self.config().parent().unwrap().to_path_buf()
    }
    /// A scratch directory beside the layout (removed with it).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.demo.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Rewrite network.toml: listen addresses and the operator allowlist.
    pub fn set_network(&self, visitor: &[&str], operator: &[&str], allow: &[&str]) {
        let list = |v: &[&str]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            "# Test network policy.\n\n[visitor]\n# Visitor listener.\nlisten = [{}]\n\n[operator]\n# Operator listener.\nlisten = [{}]\n# Admitted sources.\nallow = [{}]\n# Most operator connections.\nmax_connections = 256\n\n[proxies]\n# None.\ntrusted = []\n",
            list(visitor),
            list(operator),
            list(allow)
        );
        std::fs::write(self.policy_dir().join("network.toml"), text).unwrap();
        self.render();
    }

    /// Set `key = value` (value as TOML text) inside `[section]` ("" = top level) of a
    /// policy file; the key must already be there.
    pub fn set_policy(&self, file: &str, section: &str, key: &str, value: &str) {
        let path = self.policy_dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut current = String::new();
        let mut done = false;
        let mut out = String::new();
        for line in text.lines() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix('[') {
                current = rest.trim_end().trim_end_matches(']').trim().to_string();
            } else if !done
                && current == section
                && t.strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            {
                out.push_str(&format!("{key} = {value}\n"));
                done = true;
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        assert!(done, "{file}: no key {key} in [{section}]");
        std::fs::write(&path, out).unwrap();
        self.render();
    }

    /// Render the socket units and firewall rules from the policy as it is now (an admin
    /// does this after editing network.toml; `serve` refuses stale ones).
    pub fn render(&self) {
        let root = self.root();
        let (code, out, err) = run(
            &[
                "policy",
                "render",
                "--config",
                self.config().to_str().unwrap(),
                "--systemd",
                root.join("rendered/systemd").to_str().unwrap(),
                "--nftables",
                root.join("rendered/palisade.nft").to_str().unwrap(),
            ],
            None,
        );
        assert_eq!(code, 0, "policy render: {out}{err}");
    }

    /// Start `palisade serve` on this layout (after rendering its policy's artefacts).
    pub fn serve(&self, env: &[(&str, &str)]) -> Result<Daemon, String> {
        self.render();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(self.config());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon::spawn(cmd, &self.next_log())
    }

    /// A fresh log file path for the next daemon run.
    pub fn next_log(&self) -> PathBuf {
        for i in 0.. {
            let p = self.demo.dir.path().join(format!("serve-{i}.log"));
            if !p.exists() {
                return p;
            }
        }
        unreachable!()
    }

    pub fn visitor_client(&self, addr: SocketAddr) -> Client {
        Client::new(addr, self.s("visitor_pin"), None)
    }
    pub fn operator_client(&self, addr: SocketAddr) -> Client {
        Client::new(addr, self.s("operator_pin"), None)
    }

    /// Log in as the demo operator through `op`; returns the session cookie.
    pub async fn login(&self, op: &Client) -> Result<String, String> {
        login_as(
            op,
            &self.s("operator_user"),
            &self.s("operator_password"),
            &self.s("auth_string"),
        )
        .await
    }

    /// Run `palisade ARGS --config <this config>`.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let cfg = self.config();
        let mut all: Vec<&str> = args.to_vec();
        all.push("--config");
        all.push(cfg.to_str().unwrap());
        run(&all, stdin)
    }
}

/// Log in; returns the session cookie (`name=value`) or why not.
pub async fn login_as(op: &Client, user: &str, pw: &str, auth: &str) -> Result<String, String> {
    let r = op
        .post_json(
            "/api/v1/operator/login",
            &serde_json::json!({"username": user, "password": pw, "auth_string": auth}),
            &[],
        )
        .await?;
    if r.status != 200 {
        return Err(format!("login answered {}: {}", r.status, r.text()));
    }
    let c = r.header("set-cookie").ok_or("no session cookie")?;
    Ok(c.split(';').next().unwrap().to_string())
}

/// A `palisade serve` (or anything that execs it) whose stderr goes to a file; ready once
/// it logged `daemon_ready` with its listener addresses. Killed on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub visitor: Vec<SocketAddr>,
    pub operator: Vec<SocketAddr>,
    pub pid: u32,
}

fn parse_addrs(s: &str) -> Vec<SocketAddr> {
    // "A, B MESSAGE_ID=…": addresses are separated by ", " and end at the first field.
    s.split(", ")
        .filter_map(|a| a.split_whitespace().next()?.parse().ok())
        .collect()
}

impl Daemon {
    /// Spawn `cmd` (stdout discarded, stderr to `log`) and wait until it is ready.
    pub fn spawn(cmd: Command, log: &Path) -> Result<Daemon, String> {
        let mut d = Daemon::spawn_unready(cmd, log)?;
        d.wait_ready(Duration::from_secs(60))?;
        Ok(d)
    }

    /// Spawn without waiting for readiness (call [`Daemon::wait_ready`]).
    pub fn spawn_unready(mut cmd: Command, log: &Path) -> Result<Daemon, String> {
        let f = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let pid = child.id();
        Ok(Daemon {
            child: Some(child),
            log: log.to_path_buf(),
            visitor: vec![],
            operator: vec![],
            pid,
        })
    }

    /// Wait until the daemon logged `daemon_ready` (or exited, or `limit` passed).
    pub fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if let Some(pos) = text.find("daemon_ready: serving visitors on ") {
                let rest = &text[pos + "daemon_ready: serving visitors on ".len()..];
                let line = rest.lines().next().unwrap_or("");
                if let Some((v, o)) = line.split_once(" and operators on ") {
                    self.visitor = parse_addrs(v);
                    self.operator = parse_addrs(o);
                    return Ok(());
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "exited before ready ({status}): {}",
                        self.log_text()
                    ));
                }
            }
            if start.elapsed() > limit {
                return Err(format!("not ready within {limit:?}: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while !self.log_text().contains(needle) {
            if Instant::now() > deadline {
                return Err(format!("log never showed {needle:?} within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    pub fn v(&self) -> SocketAddr {
        self.visitor[0]
    }
    pub fn o(&self) -> SocketAddr {
        self.operator[0]
    }

    /// Resident memory of the daemon process, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmRSS:")
    }

    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait (bounded), then SIGKILL.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Signal the daemon and reap it.
    pub fn signal_and_wait(
        &mut self,
        sig: nix::sys::signal::Signal,
    ) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        // Bounded: `None` if it did not exit within 10 s (it is then killed).
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A field of /proc/PID/status in KiB (e.g. "VmRSS:", "VmHWM:").
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A kept-alive HTTPS connection (several requests, one TLS handshake).
pub struct Conn {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    /// Open one TLS connection for several requests.
    pub async fn connect(&self) -> Result<Conn, String> {
        let tcp = self.tcp().await.map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(conn);
        Ok(Conn {
            addr: self.addr,
            sender,
        })
    }
}

impl Conn {
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<Reply, String> {
        let req = build_request(self.addr, method, path, body, headers)?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
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

    pub async fn post_json(
        &mut self,
        path: &str,
        v: &Value,
        headers: &[(&str, String)],
    ) -> Result<Reply, String> {
        let mut h: Vec<(&str, String)> = vec![("origin", format!("https://{}", self.addr))];
        h.extend(headers.iter().cloned());
        self.request("POST", path, Some(serde_json::to_vec(v).unwrap()), &h)
            .await
    }
}

/// Start a chat, returning (chat id, token) or why not.
pub async fn try_start_chat(
    v: &Client,
    name: &str,
    question: &str,
) -> Result<(i64, String), String> {
    let r = v
        .post_json(
            "/api/v1/visitor/chats",
            &serde_json::json!({"name": name, "question": question}),
            &[],
        )
        .await?;
    if r.status != 201 {
        return Err(format!("start chat answered {}: {}", r.status, r.text()));
    }
    let j = r.json();
    Ok((
        j["chat_id"].as_i64().ok_or("no chat_id")?,
        j["token"].as_str().ok_or("no token")?.to_string(),
    ))
}

/// Percentile (0..=100) of a sample, in the sample's unit.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

/// Read from a raw socket until EOF, error, `limit` bytes or `wait`; returns (bytes, closed).
pub async fn drain<R: tokio::io::AsyncRead + Unpin>(r: &mut R, wait: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 1 << 20 {
                    return (out, false);
                }
            }
        }
    }
}

/// Is `root` running us (namespaces, tmpfs mounts)?
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A raw TLS ClientHello record (for probes the TLS libraries refuse to send).
/// `extensions` adds what an ECDHE-ECDSA handshake needs (groups, point formats,
/// signature algorithms), so a hello the server can accept really is accepted.
pub fn client_hello(
    record_version: u16,
    client_version: u16,
    suites: &[u16],
    extensions: bool,
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(client_version.to_be_bytes());
    body.extend([0x42u8; 32]);
    body.push(0);
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]);
    if extensions {
        let mut ext = Vec::new();
        ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
        ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
        ext.extend([
            0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
        ]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
    }
    let mut hs = vec![1u8];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16];
    rec.extend(record_version.to_be_bytes());
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

/// What a server answered to a raw probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// Closed without sending a byte.
    Silent,
    /// A TLS alert record (description code).
    Alert(u8),
    /// A TLS handshake record: the server went on with the handshake.
    Handshake,
    /// Still open and silent after the wait.
    Open,
    /// Anything else (first bytes, as text).
    Other(String),
}

/// Send `bytes` on a fresh connection and classify the first answer.
pub async fn probe(client: &Client, bytes: &[u8], wait: Duration) -> Result<ProbeAnswer, String> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = client.tcp().await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.write_all(bytes).await;
    let (got, closed) = drain(&mut tcp, wait).await;
    Ok(classify(&got, closed))
}

pub fn classify(got: &[u8], closed: bool) -> ProbeAnswer {
    match got.first() {
        None if closed => ProbeAnswer::Silent,
        None => ProbeAnswer::Open,
        Some(0x15) if got.len() >= 7 => ProbeAnswer::Alert(got[6]),
        Some(0x16) => ProbeAnswer::Handshake,
        _ => ProbeAnswer::Other(String::from_utf8_lossy(&got[..got.len().min(40)]).to_string()),
    }
}

impl EventStream {
    /// Does the stream end (EOF) within `limit`? Events on the way are skipped.
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

impl Client {
    /// A raw TLS stream (for requests written by hand, or abandoned half-way).
    pub async fn tls_stream(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp = self.tcp().await.map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))
    }

    /// The bytes of a JSON POST as a browser on the listener's origin would send it.
    pub fn raw_post(&self, path: &str, body: &Value) -> Vec<u8> {
        let b = serde_json::to_vec(body).unwrap();
        let mut r = format!(
            "POST {path} HTTP/1.1\r\nHost: {a}\r\nOrigin: https://{a}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            b.len(),
            a = self.addr
        )
        .into_bytes();
        r.extend(b);
        r
    }
}
