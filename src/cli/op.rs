//! `palisade op`: a terminal operator client speaking the console's API.
//!
//! It pins the operator listener's key (`--pin sha256/…`), reads the password, the
//! authentication string (and a TOTP code with `--totp`) from standard input — never from
//! argv — logs in, follows the event stream, and takes commands on standard input:
//!
//! ```text
//! /queue            show the waiting queue        /chats      my chats
//! /accept ID        accept a queued chat          /chat ID    make ID the current chat
//! /end              end the current chat          /quit       log out and leave
//! anything else     a message to the current chat
//! ```

use crate::secret::Secret;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncBufReadExt;
use tokio_rustls::TlsConnector;

#[derive(Clone)]
struct Conn {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    cookie: Arc<Mutex<String>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Conn {
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed (is the pin right?): {e}", self.addr))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("origin", format!("https://{}", self.addr));
        let cookie = self
            .cookie
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        let data = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                serde_json::to_vec(&v).map_err(|e| e.to_string())?
            }
            None => Vec::new(),
        };
        let req = req
            .body(Full::new(Bytes::from(data)))
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            Err(v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| status.to_string()))
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A visitor- or operator-supplied string made safe for a terminal (no escape sequences).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

#[derive(Debug, Default)]
struct View {
    current: Option<i64>,
    names: BTreeMap<i64, String>,
    queue: Vec<(i64, String, String)>,
}

fn print_event(view: &Mutex<View>, event: &str, data: &serde_json::Value) {
    let s = |k: &str| printable(data[k].as_str().unwrap_or(""));
    let chat = data["chat_id"].as_i64().unwrap_or(0);
    let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
    match event {
        "snapshot" => {
            v.queue = queue_of(&data["queue"]);
            for c in data["chats"].as_array().into_iter().flatten() {
                if let Some(id) = c["chat_id"].as_i64() {
                    v.names
                        .insert(id, printable(c["name"].as_str().unwrap_or("")));
                }
            }
            say(&format!(
                "[queue] {} waiting; {} chats of yours",
                v.queue.len(),
                v.names.len()
            ));
            for (id, name, q) in &v.queue {
                say(&format!("[queue] #{id} {name}: {q}"));
            }
        }
        "queue" => {
            let q = queue_of(&data["queue"]);
            for (id, name, question) in &q {
                if !v.queue.iter().any(|(x, ..)| x == id) {
                    say(&format!("[queue] #{id} {name}: {question}"));
                }
            }
            v.queue = q;
        }
        "chat" => {
            v.names.insert(chat, s("name"));
            if data["state"] == "ended" {
                say(&format!("[#{chat}] chat ended"));
            }
        }
        "joined" => say(&format!("[#{chat}] {} joined", s("author"))),
        "message" | "whisper" => {
            let tag = if event == "whisper" { " (whisper)" } else { "" };
            say(&format!("[#{chat}] {}{tag}: {}", s("author"), s("text")));
        }
        "ended" => say(&format!("[#{chat}] chat ended by the {}", s("from"))),
        "requeued" => say(&format!("[#{chat}] back in the queue: {}", s("text"))),
        "transfer" => say(&format!("[#{chat}] {} {}", s("author"), s("text"))),
        "chat_removed" => {
            v.names.remove(&chat);
            say(&format!("[#{chat}] no longer yours"));
        }
        "typing" if data["typing"] == true => say(&format!("[#{chat}] … typing")),
        _ => {}
    }
}

fn queue_of(q: &serde_json::Value) -> Vec<(i64, String, String)> {
    q.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["chat_id"].as_i64().unwrap_or(0),
                printable(e["name"].as_str().unwrap_or("")),
                printable(e["question"].as_str().unwrap_or("")),
            )
        })
        .collect()
}

async fn follow(conn: Conn, view: Arc<Mutex<View>>) {
    let resp = match conn.send("GET", "/api/v1/operator/events", None).await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            say(&format!("event stream refused: {}", r.status()));
            return;
        }
        Err(e) => {
            say(&format!("event stream failed: {e}"));
            return;
        }
    };
    let mut body = resp.into_body();
    let mut buf = String::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(pos) = buf.find("\n\n") {
            let block: String = buf.drain(..pos + 2).collect();
            let (mut event, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if let Ok(v) = serde_json::from_str(&data) {
                print_event(&view, &event, &v);
            }
        }
    }
    say("event stream closed");
}

async fn read_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
) -> Option<String> {
    lines.next_line().await.ok().flatten()
}

pub async fn run(
    url: String,
    pin: String,
    user: String,
    totp: bool,
) -> Result<std::process::ExitCode, String> {
    let hostport = url.trim_start_matches("https://").trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| format!("--url must be https://ADDRESS:PORT (got {url})"))?;
    if !crate::policy::pin_is_well_formed(&pin) {
        return Err("--pin must be sha256/BASE64 (palisade cert pin FILE.pem)".into());
    }
    let conn = Conn {
        addr,
        tls: crate::tls::pinned_client_config(vec![pin]),
        cookie: Arc::new(Mutex::new(String::new())),
    };
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let ask = |prompt: &'static str| {
        if interactive {
            eprint!("{prompt}: ");
        }
        prompt
    };
    ask("password");
    let password = Secret::new(
        read_line(&mut lines)
            .await
            .ok_or("no password on standard input")?,
    );
    ask("authentication string");
    let auth_string = Secret::new(
        read_line(&mut lines)
            .await
            .ok_or("no authentication string on standard input")?,
    );
    let code = if totp {
        ask("authenticator code");
        Secret::new(
            read_line(&mut lines)
                .await
                .ok_or("no authenticator code on standard input")?,
        )
    } else {
        Secret::default()
    };
    let resp = conn
        .send(
            "POST",
            "/api/v1/operator/login",
            Some(serde_json::json!({"username": user, "password": password.expose(), "auth_string": auth_string.expose(), "totp": code.expose()})),
        )
        .await?;
    if !resp.status().is_success() {
        return Err(format!("login failed: {}", resp.status()));
    }
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or("no session cookie in the login answer")?
        .to_string();
    *conn.cookie.lock().unwrap_or_else(|p| p.into_inner()) = cookie;
    drop((password, auth_string, code));
    let me = conn.call("GET", "/api/v1/operator/me", None).await?;
    say(&format!(
        "logged in as {} ({})",
        printable(me["display_name"].as_str().unwrap_or("")),
        me["role"].as_str().unwrap_or("")
    ));
    let view = Arc::new(Mutex::new(View::default()));
    tokio::spawn(follow(conn.clone(), view.clone()));
    while let Some(line) = read_line(&mut lines).await {
        let line = line.trim().to_string();
        if line.is_empty() {
            continue;
        }
        let current = view.lock().unwrap_or_else(|p| p.into_inner()).current;
        let result: Result<(), String> = match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("/quit", _) => break,
            ("/queue", _) => conn
                .call("GET", "/api/v1/operator/state", None)
                .await
                .map(|q| {
                    for (id, name, question) in queue_of(&q["queue"]) {
                        say(&format!("[queue] #{id} {name}: {question}"));
                    }
                }),
            ("/chats", _) => {
                let v = view.lock().unwrap_or_else(|p| p.into_inner());
                for (id, name) in &v.names {
                    say(&format!(
                        "[chats] #{id} {name}{}",
                        if Some(*id) == v.current {
                            " (current)"
                        } else {
                            ""
                        }
                    ));
                }
                Ok(())
            }
            ("/accept", id) => match id.trim().trim_start_matches('#').parse::<i64>() {
                Ok(id) => conn
                    .call(
                        "POST",
                        &format!("/api/v1/operator/chats/{id}/accept"),
                        Some(serde_json::json!({})),
                    )
                    .await
                    .map(|_| {
                        view.lock().unwrap_or_else(|p| p.into_inner()).current = Some(id);
                        say(&format!("[#{id}] accepted; it is your current chat"));
                    }),
                Err(_) => Err("usage: /accept ID".into()),
            },
            ("/chat", id) => match id.trim().trim_start_matches('#').parse::<i64>() {
                Ok(id) => {
                    view.lock().unwrap_or_else(|p| p.into_inner()).current = Some(id);
                    say(&format!("[#{id}] is your current chat"));
                    Ok(())
                }
                Err(_) => Err("usage: /chat ID".into()),
            },
            ("/end", _) => match current {
                Some(id) => conn
                    .call(
                        "POST",
                        &format!("/api/v1/operator/chats/{id}/end"),
                        Some(serde_json::json!({})),
                    )
                    .await
                    .map(|_| ()),
                None => Err("no current chat (/accept ID or /chat ID)".into()),
            },
            (cmd, _) if cmd.starts_with('/') => Err(format!(
                "unknown command {cmd}; try /queue /chats /accept /chat /end /quit"
            )),
            _ => match current {
                Some(id) => conn
                    .call(
                        "POST",
                        &format!("/api/v1/operator/chats/{id}/messages"),
                        Some(serde_json::json!({"text": line})),
                    )
                    .await
                    .map(|_| ()),
                None => Err("no current chat (/accept ID or /chat ID)".into()),
            },
        };
        if let Err(e) = result {
            say(&format!("error: {e}"));
        }
    }
    let _ = conn
        .call(
            "POST",
            "/api/v1/operator/logout",
            Some(serde_json::json!({})),
        )
        .await;
    say("logged out");
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn terminal_escape_sequences_are_neutralised() {
        assert_eq!(
            printable("a\u{1b}[31mb\u{7}c\nd"),
            "a\u{fffd}[31mb\u{fffd}c\nd"
        );
    }
}
