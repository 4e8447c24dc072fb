//! Adversarial suite, category 5: resource exhaustion.
//!
//! Thousands of idle connections, slow headers and slow bodies, oversized headers, bodies
//! and messages, message floods from one visitor and from many, a chat-start flood: other
//! visitors and operators keep being served, memory stays bounded, and the limits answer
//! 413/431/429 quickly. Every loop is bounded in count and in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CASE: Duration = Duration::from_secs(180);
const T: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn layout() -> Layout {
    let l = Layout::new();
    l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.1/32"]);
    l
}

/// Healthy traffic next to an attack: a visitor chat the operator accepted, a message every
/// `every`, each acknowledged and delivered on the operator's stream; operator requests too.
struct Healthy {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(Vec<f64>, usize), String>>,
}

impl Healthy {
    async fn start(
        v: Client,
        o: Client,
        session: String,
        every: Duration,
    ) -> Result<Healthy, String> {
        let (chat, token) = try_start_chat(&v, "Healthy Visitor", "am I still served?").await?;
        let r = o
            .post_json(
                &format!("/api/v1/operator/chats/{chat}/accept"),
                &json!({}),
                &[cookie(&session)],
            )
            .await?;
        ensure(r.status == 200, || format!("accept {}", r.status))?;
        let mut stream = o
            .events("/api/v1/operator/events", &[cookie(&session)])
            .await?;
        stream.until("snapshot", T).await.ok_or("no snapshot")?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut lat = vec![];
            let mut n = 0;
            while !s2.load(Ordering::Relaxed) && n < 3000 {
                n += 1;
                let text = format!("healthy-{n}");
                let t0 = Instant::now();
                // A fresh connection each time: new visitors must get in, too.
                let r = v
                    .post_json(
                        "/api/v1/visitor/messages",
                        &json!({"text": text}),
                        &[bearer(&token)],
                    )
                    .await;
                match r {
                    Ok(r) if r.status == 200 => {}
                    other => return Err(format!("healthy visitor message {n}: {other:?}")),
                }
                let e = stream
                    .until("message", T)
                    .await
                    .ok_or_else(|| format!("healthy message {n} not delivered"))?;
                if e.data["text"] != text.as_str() {
                    return Err(format!("delivered {:?}, want {text}", e.data["text"]));
                }
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                match o.get("/api/v1/operator/me", &[cookie(&session)]).await {
                    Ok(r) if r.status == 200 => {}
                    other => return Err(format!("operator request: {other:?}")),
                }
                tokio::time::sleep(every).await;
            }
            Ok((lat, n))
        });
        Ok(Healthy { stop, task })
    }

    /// Stop; (p95 ms of send-to-delivery, messages).
    async fn finish(self) -> Result<(f64, usize), String> {
        self.stop.store(true, Ordering::Relaxed);
        let (lat, n) = self.task.await.map_err(|e| e.to_string())??;
        Ok((percentile(&lat, 95.0), n))
    }
}

async fn session_of(l: &Layout, o: &Client) -> Result<String, String> {
    l.login(o).await
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn idle_connections() {
    case("exhaustion/idle-connections", CASE, async {
        const RAW: usize = 8000;
        const TLS: usize = 500;
        // This process holds one end of every connection: take the hard descriptor limit.
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
        ensure(hard >= (RAW + TLS + 1000) as u64, || {
            format!("the descriptor limit {hard} is too low for {} connections", RAW + TLS)
        })?;
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| e.to_string())?;
        let l = layout();
        let d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let session = session_of(&l, &o).await?;
        let base_rss = d.rss_kib().unwrap_or(0);
        let base_fds = open_fds(d.pid);
        let opened = Instant::now();
        // Raw TCP connections that never send a byte, from 80 source addresses.
        let sem = Arc::new(tokio::sync::Semaphore::new(400));
        let mut raw = vec![];
        for i in 0..RAW {
            ensure(opened.elapsed() < Duration::from_secs(60), || format!("only {i} connections opened in 60 s"))?;
            let c = v.with_source(ip(&format!("127.0.10.{}", 1 + i % 80)));
            let permit = sem.clone().acquire_owned().await.unwrap();
            raw.push(tokio::spawn(async move {
                let _p = permit;
                c.tcp().await
            }));
        }
        let mut raw_conns = vec![];
        for r in raw {
            raw_conns.push(r.await.unwrap().map_err(|e| format!("idle connect: {e}"))?);
        }
        // TLS connections that finish the handshake and then say nothing.
        let mut tls = vec![];
        for i in 0..TLS {
            ensure(opened.elapsed() < Duration::from_secs(60), || format!("only {i} TLS connections opened in 60 s"))?;
            let c = v.with_source(ip(&format!("127.0.11.{}", 1 + i % 50)));
            let permit = sem.clone().acquire_owned().await.unwrap();
            tls.push(tokio::spawn(async move {
                let _p = permit;
                c.tls_stream().await
            }));
        }
        let mut tls_conns = vec![];
        for t in tls {
            tls_conns.push(t.await.unwrap()?);
        }
        let open_s = opened.elapsed().as_secs_f64();
        let fds_during = open_fds(d.pid);
        // While they sit there: new visitors and the operator are served.
        let h = Healthy::start(v.clone(), o.clone(), session.clone(), Duration::from_millis(100)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (p95, n) = h.finish().await?;
        ensure(p95 < 1000.0, || format!("served p95 {p95:.0} ms with {} idle connections", RAW + TLS))?;
        // The daemon sheds them by itself (handshake / header timeouts, 10 s).
        let mut shed = 0;
        let deadline = opened + Duration::from_secs(25);
        for mut c in raw_conns {
            let (got, closed) = drain(&mut c, deadline.saturating_duration_since(Instant::now())).await;
            ensure(closed && got.is_empty(), || format!("an idle TCP connection was not closed in time ({} bytes)", got.len()))?;
            shed += 1;
        }
        for mut c in tls_conns {
            let (_, closed) = drain(&mut c, deadline.saturating_duration_since(Instant::now())).await;
            ensure(closed, || "an idle TLS connection was not closed in time".into())?;
            shed += 1;
        }
        let shed_s = opened.elapsed().as_secs_f64();
        let peak = proc_status_kib(d.pid, "VmHWM:").unwrap_or(0);
        // Let the daemon notice the last closes.
        let t0 = Instant::now();
        while open_fds(d.pid) > base_fds + 20 && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let fds_after = open_fds(d.pid);
        ensure(fds_after <= base_fds + 20, || format!("{fds_after} descriptors still open (baseline {base_fds})"))?;
        ensure(peak < base_rss + 400 * 1024, || format!("memory peak {} MiB (baseline {} MiB)", peak / 1024, base_rss / 1024))?;
        Ok(format!(
            "idle={} opened_in_s={open_s:.1} daemon_fds={base_fds}->{fds_during}->{fds_after} healthy_msgs={n} healthy_p95_ms={p95:.0} shed={shed} all_shed_by_s={shed_s:.1} rss_mib={}->{}",
            RAW + TLS,
            base_rss / 1024,
            peak / 1024
        ))
    })
    .await;
}

/// Write `first`, then one byte of `drip` every `every`, until the server closes (or
/// answers); returns (seconds until closed, what came back).
async fn dribble(
    c: Client,
    first: Vec<u8>,
    drip: Vec<u8>,
    every: Duration,
    limit: Duration,
) -> Result<(f64, Vec<u8>), String> {
    let mut s = c.tls_stream().await?;
    let t0 = Instant::now();
    s.write_all(&first).await.map_err(|e| e.to_string())?;
    let mut got = vec![];
    let mut buf = [0u8; 2048];
    let mut i = 0;
    loop {
        if t0.elapsed() > limit {
            return Err(format!("still open after {limit:?}"));
        }
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok((t0.elapsed().as_secs_f64(), got)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(every) => {
                let b = drip[i % drip.len()];
                i += 1;
                if s.write_all(&[b]).await.is_err() {
                    return Ok((t0.elapsed().as_secs_f64(), got));
                }
            }
        }
    }
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn slow_headers() {
    case("exhaustion/slow-headers", CASE, async {
        const N: usize = 300;
        let l = layout();
        let d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let session = session_of(&l, &o).await?;
        let h = Healthy::start(v.clone(), o.clone(), session, Duration::from_millis(200)).await?;
        let mut tasks = vec![];
        for i in 0..N {
            let c = if i % 10 == 9 { o.clone() } else { v.with_source(ip(&format!("127.0.12.{}", 1 + i % 50))) };
            tasks.push(tokio::spawn(dribble(
                c,
                b"GET /widget.js HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec(),
                b"abcdefgh".to_vec(),
                Duration::from_millis(500),
                Duration::from_secs(20),
            )));
        }
        let mut worst: f64 = 0.0;
        for t in tasks {
            let (secs, got) = t.await.unwrap()?;
            ensure(!String::from_utf8_lossy(&got).contains("200 OK"), || "a slow header block was served".into())?;
            worst = worst.max(secs);
        }
        let (p95, n) = h.finish().await?;
        ensure(worst <= 13.0, || format!("a slow header block held its connection {worst:.1} s (limit 10 s)"))?;
        ensure(p95 < 1000.0, || format!("healthy p95 {p95:.0} ms during the attack"))?;
        Ok(format!("connections={N} all_closed_by_s={worst:.1} header_timeout_s=10 healthy_msgs={n} healthy_p95_ms={p95:.0}"))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn slow_bodies() {
    case("exhaustion/slow-bodies", CASE, async {
        const N: usize = 150;
        let l = layout();
        let d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let session = session_of(&l, &o).await?;
        let h = Healthy::start(v.clone(), o.clone(), session, Duration::from_millis(200)).await?;
        let mut tasks = vec![];
        for i in 0..N {
            let (c, path) = if i % 10 == 9 {
                (o.clone(), "/api/v1/operator/login")
            } else {
                (v.with_source(ip(&format!("127.0.13.{}", 1 + i % 50))), "/api/v1/visitor/chats")
            };
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {a}\r\nOrigin: https://{a}\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{{\"name\": \"",
                a = c.addr
            );
            tasks.push(tokio::spawn(dribble(c, head.into_bytes(), b"slow".to_vec(), Duration::from_millis(500), Duration::from_secs(20))));
        }
        let mut worst: f64 = 0.0;
        let mut answered_408 = 0;
        for t in tasks {
            let (secs, got) = t.await.unwrap()?;
            let text = String::from_utf8_lossy(&got);
            ensure(text.is_empty() || text.starts_with("HTTP/1.1 408"), || format!("a slow body got {:?}", &text[..text.len().min(60)]))?;
            if text.starts_with("HTTP/1.1 408") {
                answered_408 += 1;
            }
            worst = worst.max(secs);
        }
        let (p95, n) = h.finish().await?;
        ensure(worst <= 13.0, || format!("a slow body held its connection {worst:.1} s (limit 10 s)"))?;
        ensure(answered_408 == N, || format!("{answered_408} of {N} slow bodies got 408"))?;
        ensure(p95 < 1000.0, || format!("healthy p95 {p95:.0} ms during the attack"))?;
        Ok(format!("connections={N} answered_408={answered_408} all_closed_by_s={worst:.1} healthy_msgs={n} healthy_p95_ms={p95:.0}"))
    })
    .await;
}

/// Send raw request bytes on a fresh TLS connection and read one response (or until the
/// server closes); (status, body, ms). Status 0: closed without an answer.
async fn raw(c: &Client, bytes: &[u8]) -> Result<(u16, String, u128), String> {
    let mut s = c.tls_stream().await?;
    let t0 = Instant::now();
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let ms = t0.elapsed().as_millis();
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body, ms))
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn oversized() {
    case("exhaustion/oversized", CASE, async {
        let l = layout();
        let d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let (_, token) = try_start_chat(&v, "Big", "sizes").await?;
        let host = |c: &Client| c.addr.to_string();
        let mut results = vec![];
        let mut check = |name: &str, got: (u16, String, u128), want: &[u16], why: &str| -> Result<(), String> {
            ensure(want.contains(&got.0), || format!("{name}: {} {:?}, want {want:?}", got.0, &got.1[..got.1.len().min(80)]))?;
            ensure(got.2 < 2000, || format!("{name}: answered after {} ms", got.2))?;
            if !why.is_empty() {
                ensure(got.1.contains(why), || format!("{name}: body {:?} lacks {why:?}", got.1))?;
            }
            results.push(format!("{name}={}/{}ms", got.0, got.2));
            Ok(())
        };
        let big_header = format!("GET /widget.js HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n", host(&v), "a".repeat(40_000));
        check("header-40KiB", raw(&v, big_header.as_bytes()).await?, &[431], "")?;
        let mut many = format!("GET /widget.js HTTP/1.1\r\nHost: {}\r\n", host(&v));
        for i in 0..120 {
            many.push_str(&format!("X-H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        check("headers-120", raw(&v, many.as_bytes()).await?, &[431], "")?;
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: {}\r\n\r\n", "u".repeat(30_000), host(&v));
        check("uri-30KiB", raw(&v, long_uri.as_bytes()).await?, &[414, 431], "")?;
        // A 10 MiB body announced, never sent: refused before it would be read.
        let announced = format!(
            "POST /api/v1/visitor/messages HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n",
            host(&v)
        );
        check("body-10MiB-announced", raw(&v, announced.as_bytes()).await?, &[413], "too large")?;
        let mut chunked = format!(
            "POST /api/v1/visitor/chats HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            host(&v)
        )
        .into_bytes();
        for _ in 0..25 {
            chunked.extend(format!("1000\r\n{}\r\n", "b".repeat(4096)).into_bytes());
        }
        chunked.extend(b"0\r\n\r\n");
        check("body-chunked-100KiB", raw(&v, &chunked).await?, &[413], "too large")?;
        let msg = v.raw_post("/api/v1/visitor/messages", &json!({"text": "m".repeat(4001)}));
        let mut with_auth = String::from_utf8(msg).unwrap();
        with_auth = with_auth.replacen("\r\n", &format!("\r\nAuthorization: Bearer {token}\r\n"), 1);
        check("message-4001-chars", raw(&v, with_auth.as_bytes()).await?, &[413], "too long")?;
        let name = v.raw_post("/api/v1/visitor/chats", &json!({"name": "n".repeat(201), "question": "q"}));
        check("name-201-chars", raw(&v, &name).await?, &[400], "longer than 200")?;
        let deep = format!("{{\"name\": {}1{}, \"question\": \"q\"}}", "[".repeat(5000), "]".repeat(5000));
        let deep = String::from_utf8(v.raw_post("/api/v1/visitor/chats", &json!(null))).unwrap().replace("Content-Length: 4\r\n\r\nnull", &format!("Content-Length: {}\r\n\r\n{deep}", deep.len()));
        check("json-depth-5000", raw(&v, deep.as_bytes()).await?, &[400], "invalid JSON")?;
        let login = o.raw_post("/api/v1/operator/login", &json!({"username": "demo", "password": "p".repeat(5000), "auth_string": "s"}));
        check("login-body-5KB", raw(&o, &login).await?, &[413], "too large")?;
        // Still serving.
        let ok = v.get("/widget.js", &[]).await?;
        ensure(ok.status == 200, || format!("/widget.js afterwards {}", ok.status))?;
        Ok(results.join(" "))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn message_flood_one_visitor() {
    case("exhaustion/message-flood-one", CASE, async {
        let l = layout();
        l.set_policy("visitor.toml", "", "messages_per_minute", "120");
        let d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let session = session_of(&l, &o).await?;
        let (_, token) = try_start_chat(&v, "Flooder", "spam").await?;
        let h = Healthy::start(v.clone(), o.clone(), session, Duration::from_millis(100)).await?;
        const N: usize = 1200;
        let flood_start = Instant::now();
        let mut tasks = vec![];
        for k in 0..4 {
            let (v, token) = (v.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = v.connect().await?;
                let mut out = vec![];
                for i in 0..N / 4 {
                    if flood_start.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    let t0 = Instant::now();
                    let r = conn.post_json("/api/v1/visitor/messages", &json!({"text": format!("flood {k}-{i}")}), &[bearer(&token)]).await?;
                    out.push((r.status, t0.elapsed().as_secs_f64() * 1000.0));
                }
                Ok::<_, String>(out)
            }));
        }
        let (mut ok, mut limited, mut limited_ms) = (0, 0, vec![]);
        for t in tasks {
            for (s, ms) in t.await.unwrap()? {
                match s {
                    200 => ok += 1,
                    429 => {
                        limited += 1;
                        limited_ms.push(ms);
                    }
                    other => return Err(format!("flood answer {other}")),
                }
            }
        }
        let (p95, n) = h.finish().await?;
        ensure(ok == 120, || format!("{ok} flood messages accepted, the policy allows 120 per minute"))?;
        let stored = v.get("/api/v1/visitor/transcript", &[bearer(&token)]).await?.json()["events"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["kind"] == "message").count())
            .unwrap_or(0);
        ensure(stored == 120, || format!("{stored} messages stored"))?;
        let l95 = percentile(&limited_ms, 95.0);
        ensure(l95 < 200.0, || format!("429 answers p95 {l95:.0} ms"))?;
        ensure(p95 < 1000.0, || format!("healthy p95 {p95:.0} ms during the flood"))?;
        Ok(format!("sent={N} accepted={ok} stored={stored} limited_429={limited} limited_p95_ms={l95:.1} healthy_msgs={n} healthy_p95_ms={p95:.0}"))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn message_flood_many_visitors() {
    case("exhaustion/message-flood-many", CASE, async {
        const VISITORS: usize = 200;
        const EACH: usize = 150;
        let l = layout();
        l.set_policy("visitor.toml", "", "messages_per_minute", "10000");
        let d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let session = session_of(&l, &o).await?;
        let base_rss = d.rss_kib().unwrap_or(0);
        let mut tokens = vec![];
        for i in 0..VISITORS {
            let c = v.with_source(ip(&format!("127.0.14.{}", 1 + i % 100)));
            tokens.push((c.clone(), try_start_chat(&c, &format!("Crowd {i}"), "hi").await?.1));
        }
        let h = Healthy::start(v.clone(), o.clone(), session, Duration::from_millis(100)).await?;
        let t0 = Instant::now();
        let mut tasks = vec![];
        for (c, token) in tokens {
            tasks.push(tokio::spawn(async move {
                let mut conn = c.connect().await?;
                let mut ok = 0;
                for i in 0..EACH {
                    let text = format!("crowd {i} {}", "w".repeat(500));
                    let r = conn.post_json("/api/v1/visitor/messages", &json!({"text": text}), &[bearer(&token)]).await?;
                    if r.status != 200 {
                        return Err(format!("crowd message answered {}", r.status));
                    }
                    ok += 1;
                    if t0.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                }
                Ok::<_, String>(ok)
            }));
        }
        let mut acked = 0;
        for t in tasks {
            acked += t.await.unwrap()?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let (p95, n) = h.finish().await?;
        let peak = proc_status_kib(d.pid, "VmHWM:").unwrap_or(0);
        ensure(acked == VISITORS * EACH, || format!("{acked} of {} crowd messages acknowledged", VISITORS * EACH))?;
        ensure(p95 < 2000.0, || format!("healthy p95 {p95:.0} ms during the crowd"))?;
        ensure(peak < base_rss + 300 * 1024, || format!("memory peak {} MiB (baseline {})", peak / 1024, base_rss / 1024))?;
        Ok(format!(
            "visitors={VISITORS} messages={acked} in_s={secs:.1} rate_per_s={:.0} healthy_msgs={n} healthy_p95_ms={p95:.0} rss_mib={}->{}",
            acked as f64 / secs,
            base_rss / 1024,
            peak / 1024
        ))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn chat_start_flood() {
    case("exhaustion/chat-start-flood", CASE, async {
        let l = layout();
        l.set_policy("visitor.toml", "", "chats_per_hour_per_source", "20");
        let d = l.serve(&[])?;
        let v = l.visitor_client(d.v()).with_source(ip("127.0.15.1"));
        let mut conn = v.connect().await?;
        let (mut ok, mut limited, mut ms) = (0, 0, vec![]);
        let flood_start = Instant::now();
        for i in 0..300 {
            if flood_start.elapsed() > Duration::from_secs(60) {
                break;
            }
            let t0 = Instant::now();
            let r = conn.post_json("/api/v1/visitor/chats", &json!({"name": format!("Bot {i}"), "question": "q"}), &[]).await?;
            match r.status {
                201 => ok += 1,
                429 => {
                    limited += 1;
                    ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                s => return Err(format!("chat start answered {s}")),
            }
        }
        ensure(ok == 20, || format!("{ok} chats started from one source; the policy allows 20 per hour"))?;
        let other = l.visitor_client(d.v()).with_source(ip("127.0.15.2"));
        try_start_chat(&other, "Real Visitor", "hello").await?;
        let p95 = percentile(&ms, 95.0);
        ensure(p95 < 200.0, || format!("429 p95 {p95:.0} ms"))?;
        Ok(format!("attempts={} started={ok} limited_429={limited} limited_p95_ms={p95:.1} other_source=201", ok + limited))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn streams_per_chat() {
    case("exhaustion/streams-per-chat", CASE, async {
        const LIMIT: usize = 8; // visitor::MAX_STREAMS_PER_CHAT
        let l = layout();
        let d = l.serve(&[])?;
        let v = l.visitor_client(d.v());
        let (_, token) = try_start_chat(&v, "Many Tabs", "one token, many streams").await?;
        let mut streams = vec![];
        for i in 0..LIMIT {
            let s = v.events("/api/v1/visitor/events", &[bearer(&token)]).await;
            streams.push(s.map_err(|e| format!("stream {} of {LIMIT}: {e}", i + 1))?);
        }
        // One more, a burst more: each refused at once, nothing piles up.
        let (mut refused, mut ms) = (0, vec![]);
        for _ in 0..50 {
            let t0 = Instant::now();
            match v.events("/api/v1/visitor/events", &[bearer(&token)]).await {
                Err(e) if e == "event stream status 429 Too Many Requests" => {}
                Err(e) => return Err(format!("stream beyond {LIMIT}: {e}")),
                Ok(_) => return Err(format!("a stream beyond {LIMIT} was opened")),
            }
            refused += 1;
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        // Every open stream still follows the chat.
        let r = v.post_json("/api/v1/visitor/messages", &json!({"text": "to every tab"}), &[bearer(&token)]).await?;
        ensure(r.status == 200, || format!("message answered {}", r.status))?;
        for (i, s) in streams.iter_mut().enumerate() {
            let e = s.until("message", T).await.ok_or_else(|| format!("tab {} missed the message", i + 1))?;
            ensure(e.data["text"] == "to every tab", || format!("tab {} got {:?}", i + 1, e.data))?;
        }
        // Another chat is not affected.
        let (_, other) = try_start_chat(&v, "Other Visitor", "hello").await?;
        v.events("/api/v1/visitor/events", &[bearer(&other)]).await.map_err(|e| format!("another chat's stream: {e}"))?;
        // Closing a tab frees its place.
        drop(streams.pop());
        let t0 = Instant::now();
        loop {
            match v.events("/api/v1/visitor/events", &[bearer(&token)]).await {
                Ok(s) => {
                    streams.push(s);
                    break;
                }
                Err(e) if t0.elapsed() < T => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(format!("a closed stream's place was not freed within {T:?}: {e}")),
            }
        }
        let freed_ms = t0.elapsed().as_millis();
        let p95 = percentile(&ms, 95.0);
        ensure(p95 < 200.0, || format!("429 p95 {p95:.0} ms"))?;
        Ok(format!("open={LIMIT} refused_429={refused} refused_p95_ms={p95:.1} all_tabs_delivered=yes other_chat=200 freed_ms={freed_ms}"))
    })
    .await;
}
