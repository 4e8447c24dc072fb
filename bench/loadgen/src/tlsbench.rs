//! P1 (keep-alive requests) and P2 (full handshakes): closed-loop clients against one
//! server while its CPU time is read from /proc.

use crate::net::{sources, Target};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One measured window: operations completed and the server CPU they cost.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub ops: u64,
    pub cpu_ticks: u64,
    pub secs: f64,
    pub errors: u64,
}

impl Window {
    /// Server CPU per operation in microseconds.
    pub fn cpu_us_per_op(&self) -> f64 {
        if self.ops == 0 {
            return f64::NAN;
        }
        self.cpu_ticks as f64 * crate::procfs::tick().as_secs_f64() * 1e6 / self.ops as f64
    }
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// Run `workers` copies of `op` in a loop; measure `measure` after `warmup`.
async fn closed_loop<F, Fut>(
    workers: usize,
    warmup: Duration,
    measure: Duration,
    cpu: &(dyn Fn() -> u64 + Sync),
    op: F,
) -> Window
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let op = Arc::new(op);
    let deadline = Instant::now() + warmup + measure + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (done, errors, stop, op) = (done.clone(), errors.clone(), stop.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match op(w, i).await {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let (c0, e0, t0) = (cpu(), done.load(Ordering::Relaxed), Instant::now());
    let err0 = errors.load(Ordering::Relaxed);
    tokio::time::sleep(measure).await;
    let (c1, e1, secs) = (
        cpu(),
        done.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let err1 = errors.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(35), t).await;
    }
    Window {
        ops: e1 - e0,
        cpu_ticks: c1.saturating_sub(c0),
        secs,
        errors: err1 - err0,
    }
}

/// P1: `GET path` on `conns` keep-alive TLS connections; every answer is checked.
pub async fn keepalive(
    target: &Target,
    path: &'static str,
    expect_len: usize,
    conns: usize,
    warmup: Duration,
    measure: Duration,
    cpu: &(dyn Fn() -> u64 + Sync),
) -> Result<Window, String> {
    let mut pool = Vec::new();
    for _ in 0..conns {
        pool.push(Arc::new(tokio::sync::Mutex::new(target.conn(None).await?)));
    }
    let pool = Arc::new(pool);
    let w = closed_loop(conns, warmup, measure, cpu, move |w, _| {
        let conn = pool[w].clone();
        async move {
            let mut c = conn.lock().await;
            let r = c.get(path, &[]).await?;
            if r.status != 200 || r.body.len() != expect_len {
                return Err(format!("status {} length {}", r.status, r.body.len()));
            }
            Ok(())
        }
    })
    .await;
    Ok(w)
}

/// P2: full TLS 1.3 handshakes (no resumption), each closed in order.
pub async fn handshakes(
    target: &Target,
    workers: usize,
    warmup: Duration,
    measure: Duration,
    cpu: &(dyn Fn() -> u64 + Sync),
) -> Window {
    let target = Arc::new(target.without_resumption());
    let srcs = Arc::new(sources(3, 64));
    closed_loop(workers, warmup, measure, cpu, move |w, i| {
        let (target, srcs) = (target.clone(), srcs.clone());
        async move {
            let src = srcs[(w + i as usize * 7) % srcs.len()];
            target.handshake_only(Some(src)).await
        }
    })
    .await
}
