//! P3: memory per idle visitor event-stream connection. Visitors start chats (waiting in
//! the queue, as when no operator is free), then each opens its event stream and stays.

use crate::net::{sources, Sse, Target};
use crate::procfs;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct IdleResult {
    pub connections: usize,
    pub pss_before_kib: u64,
    pub pss_after_kib: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub pss_empty_kib: u64,
    pub open_secs: f64,
    pub chats_secs: f64,
}

impl IdleResult {
    pub fn kib_per_conn(&self) -> f64 {
        (self.pss_after_kib as f64 - self.pss_before_kib as f64) / self.connections as f64
    }
    pub fn rss_kib_per_conn(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.connections as f64
    }
    /// Including what each waiting chat costs in memory (chat state, rate-limit entry).
    pub fn kib_per_chat_and_conn(&self) -> f64 {
        (self.pss_after_kib as f64 - self.pss_empty_kib as f64) / self.connections as f64
    }
}

async fn start_chats(target: &Target, n: usize, workers: usize) -> Result<Vec<String>, String> {
    let srcs = sources(4, workers);
    let mut tasks = Vec::new();
    for (w, src) in srcs.into_iter().enumerate() {
        let target = target.clone();
        let count = n / workers + usize::from(w < n % workers);
        tasks.push(tokio::spawn(async move {
            let mut conn = target.conn(Some(src)).await?;
            let mut tokens = Vec::with_capacity(count);
            for i in 0..count {
                if conn.is_closed() {
                    conn = target.conn(Some(src)).await?;
                }
                let body = serde_json::json!({
                    "name": format!("Visitor {w}-{i}"),
                    "question": "Do you ship to Norway, and how long does it take?",
                });
                let r = conn
                    .post("/api/v1/visitor/chats", &[], body.to_string().into_bytes())
                    .await?;
                if r.status != 201 {
                    return Err(format!(
                        "start chat: {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                tokens.push(v["token"].as_str().unwrap_or_default().to_string());
            }
            Ok::<_, String>(tokens)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

/// Open one event stream per token, each on its own connection; hold them all.
async fn open_streams(
    target: &Target,
    tokens: Vec<String>,
    workers: usize,
) -> Result<Vec<Sse>, String> {
    let tokens = Arc::new(tokens);
    let srcs = Arc::new(sources(5, 40));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (target, tokens, srcs) = (target.clone(), tokens.clone(), srcs.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            let mut i = w;
            while i < tokens.len() {
                let src = srcs[i % srcs.len()];
                let conn = target.conn(Some(src)).await?;
                let auth = format!("Bearer {}", tokens[i]);
                let mut sse = conn
                    .events("/api/v1/visitor/events", &[("authorization", &auth)])
                    .await?;
                // The first event (the stored `started` event) proves the stream is live.
                tokio::time::timeout(Duration::from_secs(30), sse.next())
                    .await
                    .map_err(|_| "no first event".to_string())?
                    .ok_or("stream ended")?;
                held.push(sse);
                i += workers;
            }
            Ok::<_, String>(held)
        }));
    }
    let mut all = Vec::with_capacity(tokens.len());
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

pub async fn run(target: &Target, pid: u32, n: usize) -> Result<IdleResult, String> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pss_empty = procfs::pss_kib(pid);
    let t = Instant::now();
    let tokens = start_chats(target, n, 32).await?;
    let chats_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (pss_before, rss_before) = (procfs::pss_kib(pid), procfs::rss_kib(pid));
    let t = Instant::now();
    let streams = open_streams(target, tokens, 64).await?;
    let open_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pss_after, rss_after) = (procfs::pss_kib(pid), procfs::rss_kib(pid));
    let connections = streams.len();
    drop(streams);
    Ok(IdleResult {
        connections,
        pss_before_kib: pss_before,
        pss_after_kib: pss_after,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        pss_empty_kib: pss_empty,
        open_secs,
        chats_secs,
    })
}
