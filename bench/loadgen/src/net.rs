//! TLS and HTTP/1.1 client plumbing: pinned TLS to a loopback listener from a chosen
//! source address, keep-alive connections, and a server-sent-event reader.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Every network wait in the load generator is bounded by this.
pub const IO_LIMIT: Duration = Duration::from_secs(30);

/// A loopback TLS listener and the client config that trusts its pinned key.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn new(addr: SocketAddr, pin: &str) -> Target {
        assert!(
            addr.ip().is_loopback(),
            "benchmark traffic goes to loopback only"
        );
        Target {
            addr,
            tls: palisade::tls::pinned_client_config(vec![pin.to_string()]),
        }
    }

    /// The same target with TLS session resumption off: every connection is a full handshake.
    pub fn without_resumption(&self) -> Target {
        let mut cfg = (*self.tls).clone();
        cfg.resumption = rustls::client::Resumption::disabled();
        Target {
            addr: self.addr,
            tls: Arc::new(cfg),
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub async fn tcp(&self, source: Option<IpAddr>) -> Result<TcpStream, String> {
        let sock = if self.addr.is_ipv6() {
            TcpSocket::new_v6()
        } else {
            TcpSocket::new_v4()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(src) = source {
            sock.bind(SocketAddr::new(src, 0))
                .map_err(|e| format!("bind {src}: {e}"))?;
        }
        let s = tokio::time::timeout(IO_LIMIT, sock.connect(self.addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    pub async fn tls(&self, source: Option<IpAddr>) -> Result<TlsStream<TcpStream>, String> {
        let tcp = self.tcp(source).await?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        tokio::time::timeout(
            IO_LIMIT,
            TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("tls: {e}"))
    }

    /// One full handshake, then an orderly close: close_notify, and wait for the server
    /// to close its side (so the server has processed the whole handshake).
    pub async fn handshake_only(&self, source: Option<IpAddr>) -> Result<(), String> {
        let mut tls = self.tls(source).await?;
        tls.get_mut().1.send_close_notify();
        tokio::time::timeout(IO_LIMIT, async {
            tls.flush().await.map_err(|e| format!("flush: {e}"))?;
            let mut buf = [0u8; 512];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return Ok::<(), String>(()),
                    Ok(_) => {}
                }
            }
        })
        .await
        .map_err(|_| "server did not close".to_string())?
    }

    /// A keep-alive HTTP/1.1 connection.
    pub async fn conn(&self, source: Option<IpAddr>) -> Result<Conn, String> {
        let tls = self.tls(source).await?;
        let (sender, conn) = http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            host: self.host(),
        })
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    pub host: String,
}

impl Conn {
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("valid request")
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        tokio::time::timeout(IO_LIMIT, async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection: {e}"))?;
            self.sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))
        })
        .await
        .map_err(|_| "request timed out".to_string())?
    }

    pub async fn call(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let resp = self.send(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(IO_LIMIT, resp.into_body().collect())
            .await
            .map_err(|_| "body timed out".to_string())?
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let req = self.request("GET", path, headers, None);
        self.call(req).await
    }

    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let req = self.request("POST", path, headers, Some(body));
        self.call(req).await
    }

    /// Open an event stream on this connection (which it then occupies).
    pub async fn events(mut self, path: &str, headers: &[(&str, &str)]) -> Result<Sse, String> {
        let req = self.request("GET", path, headers, None);
        let resp = self.send(req).await?;
        if resp.status() != 200 {
            return Err(format!("event stream status {}", resp.status()));
        }
        Ok(Sse {
            body: resp.into_body(),
            buf: Vec::with_capacity(1024),
            _conn: self,
        })
    }
}

/// One server-sent event (comments are skipped).
#[derive(Debug)]
pub struct Frame {
    pub event: String,
    pub data: String,
}

pub struct Sse {
    body: Incoming,
    buf: Vec<u8>,
    _conn: Conn,
}

impl Sse {
    /// The next event, or `None` when the stream ended or failed.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8_lossy(&frame);
                let (mut event, mut data) = (String::from("message"), String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Frame { event, data });
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(d) = frame.into_data() {
                self.buf.extend_from_slice(&d);
            }
        }
    }
}

/// Source addresses in 127.B.C.D for `n` clients: distinct loopback sources, so per-source
/// limits see many visitors (as on the internet) and no source runs out of ports.
pub fn sources(b: u8, n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::from([127, b, (i / 250) as u8, (i % 250 + 1) as u8]))
        .collect()
}
