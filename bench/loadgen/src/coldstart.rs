//! P7: `palisade serve` from exec to READY=1 (the systemd readiness notification, received
//! on a NOTIFY_SOCKET of our own), then its idle memory.

use crate::net::Target;
use crate::procfs;
use crate::servers::Palisade;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// exec → READY=1
    pub ready_ms: f64,
    /// exec → first `/widget.js` answered over TLS
    pub first_response_ms: f64,
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub threads: u64,
}

pub async fn once(p: &mut Palisade, target: &Target, round: usize) -> Result<Start, String> {
    p.stop();
    let sock_path = p.dir.join(format!("notify-{round}.sock"));
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).map_err(|e| format!("notify socket: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let mut cmd = p.serve_command()?;
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let t0 = Instant::now();
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    p.adopt(child);
    let mut buf = [0u8; 4096];
    let ready = loop {
        if t0.elapsed() > Duration::from_secs(30) || !p.running() {
            return Err(format!(
                "no READY=1 within 30 s\n{}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            ));
        }
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break t0.elapsed();
            }
        }
    };
    let first = loop {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("no answer within 30 s".into());
        }
        if let Ok(mut c) = target.conn(None).await {
            if let Ok(r) = c.get("/widget.js", &[]).await {
                if r.status == 200 {
                    break t0.elapsed();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // Idle: no connection open, a second after the first answer.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = p.pid();
    let s = Start {
        ready_ms: ready.as_secs_f64() * 1000.0,
        first_response_ms: first.as_secs_f64() * 1000.0,
        rss_kib: procfs::rss_kib(pid),
        pss_kib: procfs::pss_kib(pid),
        threads: procfs::threads(pid),
    };
    p.stop();
    let _ = std::fs::remove_file(&sock_path);
    Ok(s)
}
