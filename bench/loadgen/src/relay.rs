//! P4–P6: the durable relay with a realistic population, and the login flood.
//!
//! Operators log in and keep their event streams open. Chatting visitors each have a chat
//! accepted by an operator, an event stream and a keep-alive connection to send on.
//! Browsing visitors load the loader and the chat page and poll the status every 30 s, as
//! the chat page does. A message's latency is from its scheduled send time (open loop, so
//! a slow server cannot hide its delays) to its arrival on the operator's event stream.

use crate::net::{sources, Conn, Sse, Target};
use crate::stats::now_ns;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// Latencies (µs) of delivered messages, by round.
#[derive(Default)]
pub struct Recorder {
    delivered: Mutex<HashMap<u32, Vec<u32>>>,
    acked: Mutex<HashMap<u32, u64>>,
    pub send_errors: AtomicU64,
    pub last_error: Mutex<String>,
}

impl Recorder {
    fn deliver(&self, round: u32, lat_us: u32) {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(round)
            .or_default()
            .push(lat_us);
    }
    fn ack(&self, round: u32) {
        *self
            .acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(round)
            .or_default() += 1;
    }
    pub fn delivered(&self, round: u32) -> usize {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&round)
            .map_or(0, Vec::len)
    }
    pub fn acked(&self, round: u32) -> u64 {
        *self
            .acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&round)
            .unwrap_or(&0)
    }
    pub fn take(&self, round: u32) -> Vec<u32> {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&round)
            .unwrap_or_default()
    }
}

enum Cmd {
    /// Send one message scheduled at `sched_ns`.
    One { round: u32, seq: u64, sched_ns: u64 },
    /// Send back to back until `until`.
    Closed { round: u32, until: Instant },
}

fn message_text(round: u32, seq: u64, sched_ns: u64) -> Vec<u8> {
    serde_json::json!({
        "text": format!("b{round} {seq} {sched_ns} Hello, could you tell me when order {seq} will be delivered?")
    })
    .to_string()
    .into_bytes()
}

/// Parse `b<round> <seq> <ns> …` from a delivered message's text.
fn parse_tag(text: &str) -> Option<(u32, u64)> {
    let mut it = text.strip_prefix('b')?.split(' ');
    let round = it.next()?.parse().ok()?;
    let _seq: u64 = it.next()?.parse().ok()?;
    let ns = it.next()?.parse().ok()?;
    Some((round, ns))
}

struct Chatter {
    tx: mpsc::Sender<Cmd>,
}

async fn chatter_loop(
    target: Target,
    src: IpAddr,
    token: String,
    mut conn: Conn,
    mut rx: mpsc::Receiver<Cmd>,
    rec: Arc<Recorder>,
    seq_base: Arc<AtomicU64>,
) {
    let auth = format!("Bearer {token}");
    async fn send(conn: &mut Conn, auth: &str, body: Vec<u8>) -> Result<crate::net::Reply, String> {
        let req = conn.request(
            "POST",
            "/api/v1/visitor/messages",
            &[("authorization", auth)],
            Some(body),
        );
        conn.call(req).await
    }
    while let Some(cmd) = rx.recv().await {
        let jobs: Box<dyn Iterator<Item = (u32, u64, u64)> + Send> = match cmd {
            Cmd::One {
                round,
                seq,
                sched_ns,
            } => Box::new(std::iter::once((round, seq, sched_ns))),
            Cmd::Closed { round, until } => {
                let seq_base = seq_base.clone();
                Box::new(
                    std::iter::from_fn(move || (Instant::now() < until).then_some(()))
                        .map(move |_| (round, seq_base.fetch_add(1, Ordering::Relaxed), 0)),
                )
            }
        };
        for (round, seq, sched) in jobs {
            let sched = if sched == 0 { now_ns() } else { sched };
            if conn.is_closed() {
                match target.conn(Some(src)).await {
                    Ok(c) => conn = c,
                    Err(e) => {
                        rec.send_errors.fetch_add(1, Ordering::Relaxed);
                        *rec.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
                        continue;
                    }
                }
            }
            match send(&mut conn, &auth, message_text(round, seq, sched)).await {
                Ok(r) if r.status == 200 => rec.ack(round),
                Ok(r) => {
                    rec.send_errors.fetch_add(1, Ordering::Relaxed);
                    *rec.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
                }
                Err(e) => {
                    rec.send_errors.fetch_add(1, Ordering::Relaxed);
                    *rec.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
                }
            }
        }
    }
}

/// An operator's event stream: every visitor message that arrives is timed.
async fn operator_reader(mut sse: Sse, rec: Arc<Recorder>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(1), sse.next()).await else {
            continue;
        };
        if f.event != "message" {
            continue;
        }
        let now = now_ns();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&f.data) else {
            continue;
        };
        if v["from"] != "visitor" {
            continue;
        }
        if let Some((round, sched)) = v["text"].as_str().and_then(parse_tag) {
            let lat = (now.saturating_sub(sched) / 1000).min(u32::MAX as u64) as u32;
            rec.deliver(round, lat);
        }
    }
}

/// A visitor who has the page (and the hidden chat frame) open: loads the loader and the
/// chat page, then polls the status every 30 s like the chat page does.
async fn browser(
    target: Target,
    src: IpAddr,
    first_delay: Duration,
    arrive: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
    stats: Arc<[AtomicU64; 2]>,
) {
    let mut conn = {
        let Ok(_permit) = arrive.acquire().await else {
            return;
        };
        let Ok(mut c) = target.conn(Some(src)).await else {
            stats[1].fetch_add(1, Ordering::Relaxed);
            return;
        };
        for p in [
            "/widget.js",
            "/chat",
            "/assets/chat.js",
            "/assets/chat.css",
            "/api/v1/visitor/status",
        ] {
            match c.get(p, &[]).await {
                Ok(r) if r.status == 200 => {
                    stats[0].fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    stats[1].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        c
    };
    let mut next = Instant::now() + first_delay;
    while !stop.load(Ordering::Relaxed) {
        let wait = next.saturating_duration_since(Instant::now());
        tokio::time::sleep(wait.min(Duration::from_millis(500))).await;
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs(30);
        if conn.is_closed() {
            match target.conn(Some(src)).await {
                Ok(c) => conn = c,
                Err(_) => {
                    stats[1].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        match conn.get("/api/v1/visitor/status", &[]).await {
            Ok(r) if r.status == 200 => {
                stats[0].fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                stats[1].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub struct Population {
    pub rec: Arc<Recorder>,
    chatters: Vec<Chatter>,
    stop: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
    pub browse_stats: Arc<[AtomicU64; 2]>,
    pub setup_secs: f64,
    pub chats: usize,
    pub browsers: usize,
    pub operators: usize,
    // keep the visitor streams open
    _visitor_streams: Vec<tokio::task::JoinHandle<()>>,
}

pub struct Login {
    pub username: String,
    pub password: String,
    pub auth_string: String,
}

async fn login(op: &Target, l: &Login) -> Result<(Conn, String), String> {
    let mut conn = op.conn(None).await?;
    let origin = format!("https://{}", op.host());
    let body = serde_json::json!({
        "username": l.username, "password": l.password, "auth_string": l.auth_string,
    });
    let r = conn
        .post(
            "/api/v1/operator/login",
            &[("origin", &origin)],
            body.to_string().into_bytes(),
        )
        .await?;
    if r.status != 200 {
        return Err(format!(
            "login {}: {} {}",
            l.username,
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let cookie = r
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or("no session cookie")?
        .to_string();
    Ok((conn, cookie))
}

impl Population {
    /// Log the operators in, start and assign the chats, bring in the browsing visitors.
    pub async fn build(
        visitor: Target,
        operator: Target,
        logins: &[Login],
        chats_per_operator: usize,
        visitors: usize,
    ) -> Result<Population, String> {
        let t0 = Instant::now();
        let rec = Arc::new(Recorder::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Operators: log in (two at a time, as the hashing slots allow), open the stream.
        let mut ops = Vec::new();
        for pair in logins.chunks(2) {
            let mut pending = Vec::new();
            for l in pair {
                let operator = operator.clone();
                let l = Login {
                    username: l.username.clone(),
                    password: l.password.clone(),
                    auth_string: l.auth_string.clone(),
                };
                pending.push(tokio::spawn(async move { login(&operator, &l).await }));
            }
            for p in pending {
                let (conn, cookie) = p.await.map_err(|e| e.to_string())??;
                let stream = operator
                    .conn(None)
                    .await?
                    .events("/api/v1/operator/events", &[("cookie", &cookie)])
                    .await?;
                tokio::spawn(operator_reader(stream, rec.clone(), stop.clone()));
                ops.push((tokio::sync::Mutex::new(conn), cookie));
            }
        }
        let origin = format!("https://{}", operator.host());
        // Chats: start one, its visitor opens the stream, the next operator accepts it.
        // Four at a time, so the waiting queue stays short as it would in service.
        let n_chats = ops.len() * chats_per_operator;
        let ops = Arc::new(ops);
        let seq = Arc::new(AtomicU64::new(1 << 40));
        let chat_srcs = sources(6, n_chats);
        let gate = Arc::new(Semaphore::new(4));
        let mut pending = Vec::new();
        for (i, src) in chat_srcs.into_iter().enumerate() {
            let (visitor, ops, gate, origin) =
                (visitor.clone(), ops.clone(), gate.clone(), origin.clone());
            pending.push(tokio::spawn(async move {
                let _g = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                let mut conn = visitor.conn(Some(src)).await?;
                let body = serde_json::json!({
                    "name": format!("Chatting visitor {i}"),
                    "email": format!("visitor{i}@example.com"),
                    "question": "Where is my order?",
                });
                let r = conn
                    .post("/api/v1/visitor/chats", &[], body.to_string().into_bytes())
                    .await?;
                if r.status != 201 {
                    return Err(format!("start chat: {}", r.status));
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                let chat = v["chat_id"].as_i64().ok_or("no chat id")?;
                let token = v["token"].as_str().ok_or("no token")?.to_string();
                let auth = format!("Bearer {token}");
                let mut stream = visitor
                    .conn(Some(src))
                    .await?
                    .events("/api/v1/visitor/events", &[("authorization", &auth)])
                    .await?;
                tokio::time::timeout(Duration::from_secs(30), stream.next())
                    .await
                    .map_err(|_| "visitor stream: no first event")?;
                let (act, cookie) = &ops[i % ops.len()];
                let r = act
                    .lock()
                    .await
                    .post(
                        &format!("/api/v1/operator/chats/{chat}/accept"),
                        &[("origin", &origin), ("cookie", cookie)],
                        Vec::new(),
                    )
                    .await?;
                if r.status != 200 {
                    return Err(format!(
                        "accept {chat}: {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                }
                Ok::<_, String>((src, token, conn, stream))
            }));
        }
        let mut chatters = Vec::new();
        let mut streams = Vec::new();
        for p in pending {
            let (src, token, conn, stream) = p.await.map_err(|e| e.to_string())??;
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(chatter_loop(
                visitor.clone(),
                src,
                token,
                conn,
                rx,
                rec.clone(),
                seq.clone(),
            ));
            let stop2 = stop.clone();
            streams.push(tokio::spawn(async move {
                // The visitor's own stream (echo of its messages, the operator's joins).
                let mut stream = stream;
                while !stop2.load(Ordering::Relaxed) {
                    if let Ok(None) =
                        tokio::time::timeout(Duration::from_secs(1), stream.next()).await
                    {
                        return;
                    }
                }
            }));
            chatters.push(Chatter { tx });
        }
        // Browsing visitors: everyone else on the site, arriving 32 at a time.
        let n_browse = visitors.saturating_sub(n_chats);
        let browse_stats = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let arrive = Arc::new(Semaphore::new(32));
        let srcs = sources(7, n_browse);
        for (i, src) in srcs.into_iter().enumerate() {
            let first = Duration::from_millis((i as u64 * 30_000) / n_browse.max(1) as u64);
            tokio::spawn(browser(
                visitor.clone(),
                src,
                first,
                arrive.clone(),
                stop.clone(),
                browse_stats.clone(),
            ));
        }
        // Wait (bounded) until every browsing visitor has loaded the page.
        let deadline = Instant::now() + Duration::from_secs(120);
        while arrive.available_permits() < 32
            || (browse_stats[0].load(Ordering::Relaxed) + browse_stats[1].load(Ordering::Relaxed))
                < (n_browse as u64 * 5)
        {
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Population {
            rec,
            chatters,
            stop,
            seq,
            browse_stats,
            setup_secs: t0.elapsed().as_secs_f64(),
            chats: n_chats,
            browsers: n_browse,
            operators: ops.len(),
            _visitor_streams: streams,
        })
    }

    /// Open loop: `rate` messages per second spread over the chats for `dur`.
    pub async fn fixed_rate(&self, round: u32, rate: f64, dur: Duration) -> u64 {
        let start_ns = now_ns();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while start.elapsed() < dur {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                let sched_ns = start_ns + (sent as f64 * 1e9 / rate) as u64;
                let c = &self.chatters[(sent as usize) % self.chatters.len()];
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                if c.tx
                    .try_send(Cmd::One {
                        round,
                        seq,
                        sched_ns,
                    })
                    .is_err()
                {
                    self.rec.send_errors.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
            }
        }
        sent
    }

    /// Closed loop: every chat sends back to back for `dur`.
    pub async fn closed_loop(&self, round: u32, dur: Duration) {
        let until = Instant::now() + dur;
        for c in &self.chatters {
            let _ = c.tx.try_send(Cmd::Closed { round, until });
        }
        tokio::time::sleep(dur).await;
    }

    /// Wait (bounded) until every acknowledged message of `round` reached its operator;
    /// with `sent`, first until that many requests were answered (or failed).
    pub async fn drain(&self, round: u32, sent: Option<u64>, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let errors0 = self.rec.send_errors.load(Ordering::Relaxed);
        if let Some(sent) = sent {
            while self.rec.acked(round) + (self.rec.send_errors.load(Ordering::Relaxed) - errors0)
                < sent
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        loop {
            // Senders finish their in-flight requests first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (a, d) = (self.rec.acked(round), self.rec.delivered(round) as u64);
            if d >= a && a > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if self.rec.acked(round) == a {
                    return true;
                }
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Population {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a login flood saw.
#[derive(Debug, Default, Clone)]
pub struct FloodStats {
    pub attempts: u64,
    pub hashed: u64,
    pub busy: u64,
    pub throttled: u64,
    pub other: u64,
    pub refusal_us: Vec<u32>,
    pub hashed_us: Vec<u32>,
}

struct FloodConn {
    conn: Conn,
    used: u32,
}

/// Failed logins (unknown users, wrong secrets) from ever-new loopback sources: at most
/// 10 from one source, so the per-source backoff does not stop them (the hard case).
pub struct Flood {
    target: Target,
    srcs: Vec<IpAddr>,
    next_src: AtomicU64,
    pool: Mutex<Vec<FloodConn>>,
    counter: AtomicU64,
}

impl Flood {
    pub fn new(target: Target) -> Arc<Flood> {
        Arc::new(Flood {
            target,
            srcs: sources(8, 16_000),
            next_src: AtomicU64::new(0),
            pool: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        })
    }

    async fn attempt(self: &Arc<Flood>, stats: &Mutex<FloodStats>) {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut fc = match pooled {
            Some(fc) if !fc.conn.is_closed() => fc,
            _ => {
                let i = self.next_src.fetch_add(1, Ordering::Relaxed) as usize;
                let src = self.srcs[i % self.srcs.len()];
                match self.target.conn(Some(src)).await {
                    Ok(conn) => FloodConn { conn, used: 0 },
                    Err(_) => {
                        stats.lock().unwrap_or_else(|p| p.into_inner()).other += 1;
                        return;
                    }
                }
            }
        };
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let origin = format!("https://{}", self.target.host());
        let body = serde_json::json!({
            "username": format!("intruder{n}"),
            "password": "password123456",
            "auth_string": "guess",
        });
        let t = Instant::now();
        let r = fc
            .conn
            .post(
                "/api/v1/operator/login",
                &[("origin", &origin)],
                body.to_string().into_bytes(),
            )
            .await;
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.attempts += 1;
            match &r {
                Ok(r) if r.status == 401 => {
                    s.hashed += 1;
                    s.hashed_us.push(us);
                }
                Ok(r)
                    if r.status == 429 && String::from_utf8_lossy(&r.body).contains("at once") =>
                {
                    s.busy += 1;
                    s.refusal_us.push(us);
                }
                Ok(r) if r.status == 429 => s.throttled += 1,
                _ => s.other += 1,
            }
        }
        fc.used += 1;
        if r.is_ok() && fc.used < 10 {
            self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(fc);
        }
    }

    /// Forget pooled connections (they belong to the runtime that opened them).
    fn reset(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// [`Flood::open_loop`] on a thread of its own at a low CPU priority (nice 10), so the
    /// attacker's own TLS and JSON work, which shares this machine with the server and the
    /// relay's clients, does not delay the relay clients and inflate their latencies.
    pub fn open_loop_low_priority(
        self: &Arc<Flood>,
        rate: f64,
        dur: Duration,
        max_inflight: usize,
    ) -> std::thread::JoinHandle<FloodStats> {
        let me = self.clone();
        std::thread::spawn(move || {
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("flood runtime");
            let stats = rt.block_on(me.open_loop(rate, dur, max_inflight));
            me.reset();
            stats
        })
    }

    /// Closed loop with `workers` attackers for `dur`: hashed logins per second.
    pub async fn capacity(self: &Arc<Flood>, workers: usize, dur: Duration) -> (f64, FloodStats) {
        self.reset();
        let stats = Arc::new(Mutex::new(FloodStats::default()));
        let until = Instant::now() + dur;
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (me, stats) = (self.clone(), stats.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    me.attempt(&stats).await;
                }
            }));
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
        }
        let s = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (s.hashed as f64 / dur.as_secs_f64(), s)
    }

    /// Open loop: `rate` attempts per second for `dur` (at most `max_inflight` at once).
    pub async fn open_loop(
        self: &Arc<Flood>,
        rate: f64,
        dur: Duration,
        max_inflight: usize,
    ) -> FloodStats {
        self.reset();
        let stats = Arc::new(Mutex::new(FloodStats::default()));
        let gate = Arc::new(Semaphore::new(max_inflight));
        let start = Instant::now();
        let mut sent = 0u64;
        let mut skipped = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut tasks = Vec::new();
        while start.elapsed() < dur {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                sent += 1;
                let Ok(permit) = gate.clone().try_acquire_owned() else {
                    skipped += 1;
                    continue;
                };
                let (me, stats) = (self.clone(), stats.clone());
                tasks.push(tokio::spawn(async move {
                    let _p = permit;
                    me.attempt(&stats).await;
                }));
            }
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
        }
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        s.other += skipped;
        s
    }
}
