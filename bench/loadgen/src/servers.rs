//! The servers under test: palisade (`demo` generates an appliance on loopback, `serve`
//! runs it) and nginx (Debian's package) serving the same bytes with the same certificate.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

/// Stop a child we started: the given signal, then SIGKILL after `limit`.
pub fn stop_child(child: &mut Child, sig: nix::sys::signal::Signal, limit: Duration) {
    signal(child, sig);
    if !wait_exit(child, limit) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Wait (bounded) until `addr` accepts TCP connections or the child exits.
pub fn wait_listening(child: &mut Child, addr: SocketAddr, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited early: {status}"));
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "{addr} did not accept connections within {limit:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn url_addr(info: &Value, key: &str) -> SocketAddr {
    info[key]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .expect("demo.json holds loopback URLs")
}

/// A loopback appliance made by `palisade demo`, run with `palisade serve`.
pub struct Palisade {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub info: Value,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Palisade {
    /// Generate a fresh appliance in `dir` (certificates, policy, data key, demo operator)
    /// with `palisade demo`, then stop the demo process; [`Palisade::serve`] runs it.
    pub fn create(bin: &Path, dir: &Path) -> Result<Palisade, String> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = dir.join("palisade.log");
        let app = dir.join("appliance");
        let mut child = Command::new(bin)
            .arg("demo")
            .arg("--dir")
            .arg(&app)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let json = app.join("demo.json");
        let start = Instant::now();
        while !json.exists() {
            if let Ok(Some(s)) = child.try_wait() {
                return Err(format!(
                    "palisade demo exited: {s}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if start.elapsed() > Duration::from_secs(60) {
                stop_child(
                    &mut child,
                    nix::sys::signal::Signal::SIGKILL,
                    Duration::ZERO,
                );
                return Err("palisade demo wrote no demo.json within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let info: Value = serde_json::from_str(
            &std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?,
        )
        .map_err(|e| format!("demo.json: {e}"))?;
        stop_child(
            &mut child,
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(10),
        );
        let p = Palisade {
            bin: bin.to_path_buf(),
            dir: app,
            info,
            log,
            child: None,
        };
        // Visitors may start chats before the operators' consoles are open: the benchmark
        // measures the relay, not the "leave a message" path.
        p.set_policy("chat.toml", "queue_when_offline", "true")?;
        Ok(p)
    }

    pub fn s(&self, key: &str) -> String {
        self.info[key].as_str().unwrap_or_default().to_string()
    }
    pub fn config(&self) -> PathBuf {
        PathBuf::from(self.s("config"))
    }
    pub fn visitor_addr(&self) -> SocketAddr {
        url_addr(&self.info, "visitor_url")
    }
    pub fn operator_addr(&self) -> SocketAddr {
        url_addr(&self.info, "operator_url")
    }

    /// Replace `key = …` in one policy file (the daemon reads policy at start and on SIGHUP).
    pub fn set_policy(&self, file: &str, key: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join("policy").join(file);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut found = false;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if !found && l.split('=').next().map(str::trim) == Some(key) {
                    found = true;
                    format!("{key} = {value}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        if !found {
            return Err(format!("{}: no key {key}", path.display()));
        }
        std::fs::write(&path, out.join("\n") + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Re-render the socket units and firewall rules from the (changed) policy, as an
    /// admin does after editing it; `serve` refuses to start while they disagree.
    pub fn render(&self) -> Result<(), String> {
        let out = Command::new(&self.bin)
            .args(["policy", "render", "--config"])
            .arg(self.config())
            .arg("--systemd")
            .arg(self.dir.join("rendered/systemd"))
            .arg("--nftables")
            .arg(self.dir.join("rendered/palisade.nft"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "policy render: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// A `palisade serve` command for this appliance (not yet started).
    pub fn serve_command(&self) -> Result<Command, String> {
        let mut c = Command::new(&self.bin);
        c.arg("serve")
            .arg("--config")
            .arg(self.config())
            .env("PALISADE_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .map_err(|e| e.to_string())?,
            );
        Ok(c)
    }

    /// Start `palisade serve` and wait until the visitor listener accepts connections.
    pub fn serve(&mut self) -> Result<(), String> {
        self.stop();
        let mut child = self
            .serve_command()?
            .spawn()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        let ready = wait_listening(&mut child, self.visitor_addr(), Duration::from_secs(30))
            .and_then(|_| wait_listening(&mut child, self.operator_addr(), Duration::from_secs(5)));
        if let Err(e) = ready {
            stop_child(
                &mut child,
                nix::sys::signal::Signal::SIGKILL,
                Duration::ZERO,
            );
            return Err(format!(
                "palisade serve: {e}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ));
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn adopt(&mut self, child: Child) {
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(
                &mut c,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(10),
            );
        }
    }

    /// Add operator accounts with `palisade operator add` (two at a time; each hashes).
    pub fn add_operators(&self, names: &[String], password: &str) -> Result<(), String> {
        for pair in names.chunks(2) {
            let mut kids = Vec::new();
            for n in pair {
                let mut c = Command::new(&self.bin)
                    .args(["operator", "add", n, "--config"])
                    .arg(self.config())
                    .args(["--display-name", &format!("Agent {n}")])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| e.to_string())?;
                use std::io::Write;
                if let Some(mut stdin) = c.stdin.take() {
                    let _ = writeln!(stdin, "{password}");
                }
                kids.push((n.clone(), c));
            }
            for (n, c) in kids {
                let out = c.wait_with_output().map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "operator add {n}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Palisade {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx from Debian's package, as a non-daemon child with a generated configuration.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Nginx {
    /// Serve `body` as `/widget.js` with palisade's response headers and the same
    /// certificate and key, TLS 1.3 only, no session tickets and no session cache.
    pub fn start(
        bin: &Path,
        dir: &Path,
        cert: &Path,
        key: &Path,
        body: &[u8],
        headers: &[(String, String)],
    ) -> Result<Nginx, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(bin, dir, cert, key, body, headers) {
                Ok(n) => return Ok(n),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start(
        bin: &Path,
        dir: &Path,
        cert: &Path,
        key: &Path,
        body: &[u8],
        headers: &[(String, String)],
    ) -> Result<Nginx, String> {
        let e = |e: std::io::Error| e.to_string();
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(e)?;
        }
        for d in ["www", "tmp", "logs"] {
            std::fs::create_dir_all(dir.join(d)).map_err(e)?;
        }
        std::fs::write(dir.join("www/widget.js"), body).map_err(e)?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().map_err(|_| "addr")?;
        let mut content_type = "text/javascript; charset=utf-8".to_string();
        let mut add = String::new();
        for (k, v) in headers {
            match k.as_str() {
                "content-type" => content_type = v.clone(),
                "content-length" | "date" | "connection" | "keep-alive" => {}
                _ => add.push_str(&format!(
                    "            add_header {k} \"{}\";\n",
                    v.replace('"', "\\\"")
                )),
            }
        }
        let d = dir.display();
        let conf = format!(
            r#"# Generated by the palisade benchmark: nginx's best static-file path, same bytes,
# same certificate, same headers as palisade's /widget.js.
daemon off;
master_process on;
worker_processes auto;
user root;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    server_tokens off;
    etag off;
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=16 inactive=60s;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    types {{ }}
    default_type "{content_type}";
    server {{
        listen {addr} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        root {d}/www;
        location = /widget.js {{
{add}        }}
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).map_err(e)?;
        let mut child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if let Err(err) = wait_listening(&mut child, addr, Duration::from_secs(10)) {
            stop_child(
                &mut child,
                nix::sys::signal::Signal::SIGKILL,
                Duration::ZERO,
            );
            return Err(format!(
                "nginx: {err}\n{}",
                std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
            ));
        }
        Ok(Nginx { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop_child(
            &mut self.child,
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(10),
        );
    }
}
