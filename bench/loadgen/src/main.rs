//! `palisade-loadgen`: the benchmark behind `scripts/bench`.
//!
//! Starts palisade (and nginx where there is a baseline) on loopback, drives them over real
//! TLS with the real visitor and operator protocols, reads each server's CPU time and memory
//! from /proc, and writes the P-lines, a Markdown table, the raw rounds and a latency plot.
//! Every loop is bounded in count and time; all traffic goes to 127.0.0.0/8.

mod coldstart;
mod idle;
mod net;
mod procfs;
mod relay;
mod report;
mod servers;
mod stats;
mod tlsbench;

use net::Target;
use report::{fmt_num, Figure, Report};
use serde_json::json;
use servers::{Nginx, Palisade};
use stats::median;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Args {
    palisade: PathBuf,
    nginx: PathBuf,
    out: PathBuf,
    work: PathBuf,
    readme: Option<PathBuf>,
    label: String,
    quick: bool,
    only: Option<Vec<String>>,
    /// Experiment: accounts.toml `max_concurrent_hashes` for the relay appliance.
    hashes: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: palisade-loadgen --palisade BIN --nginx BIN --out DIR --work DIR \
         [--readme README.md] [--label TEXT] [--quick] [--only p7,p1,p2,p3,relay] \
         [--hashes N (experiment: max_concurrent_hashes of the relay appliance)]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        palisade: PathBuf::new(),
        nginx: PathBuf::from("/usr/sbin/nginx"),
        out: PathBuf::from("bench/results"),
        work: std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id())),
        readme: None,
        label: String::new(),
        quick: false,
        only: None,
        hashes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--palisade" => a.palisade = v().into(),
            "--nginx" => a.nginx = v().into(),
            "--out" => a.out = v().into(),
            "--work" => a.work = v().into(),
            "--readme" => a.readme = Some(v().into()),
            "--label" => a.label = v(),
            "--quick" => a.quick = true,
            "--hashes" => a.hashes = Some(v()),
            "--only" => a.only = Some(v().split(',').map(str::to_string).collect()),
            _ => usage(),
        }
    }
    if a.palisade.as_os_str().is_empty() {
        usage();
    }
    a
}

/// Civil date and time (UTC) from the system clock.
fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}-{m:02}-{d:02}");
    let stamp = format!("{date} {:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60);
    (date, stamp)
}

fn want(a: &Args, phase: &str) -> bool {
    a.only.as_ref().is_none_or(|o| o.iter().any(|p| p == phase))
}

fn say(msg: impl AsRef<str>) {
    eprintln!(
        "[bench {:>6.1}s] {}",
        stats::now_ns() as f64 / 1e9,
        msg.as_ref()
    );
}

struct Ctx {
    figures: Vec<Figure>,
    notes: Vec<String>,
    raw: serde_json::Map<String, serde_json::Value>,
    flood_lat: Vec<u32>,
    alone_lat: Vec<u32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = args();
    let _ = stats::now_ns();
    let t0 = Instant::now();
    let fds = procfs::raise_nofile();
    say(format!(
        "open-file limit {fds}; work directory {}",
        a.work.display()
    ));
    let mut cx = Ctx {
        figures: Vec::new(),
        notes: Vec::new(),
        raw: serde_json::Map::new(),
        flood_lat: Vec::new(),
        alone_lat: Vec::new(),
    };
    let result = tokio::time::timeout(Duration::from_secs(13 * 60), run(&a, &mut cx)).await;
    let failed = match result {
        Err(_) => Some("the benchmark did not finish within 13 minutes".to_string()),
        Ok(Err(e)) => Some(e),
        Ok(Ok(())) => None,
    };
    if let Some(e) = &failed {
        say(format!("FAILED: {e}"));
        cx.notes.push(format!("The run failed: {e}"));
    }
    let _ = std::fs::remove_dir_all(&a.work);
    let (date, stamp) = utc_now();
    let nginx_v = std::process::Command::new(&a.nginx)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace("nginx version: nginx/", "")
        })
        .unwrap_or_default();
    let mut versions = vec![("nginx".to_string(), nginx_v)];
    if !a.label.is_empty() {
        versions.insert(0, ("palisade".to_string(), a.label.clone()));
    }
    let rep = Report {
        date: date.clone(),
        stamp,
        machine: procfs::machine(),
        versions,
        figures: cx.figures.clone(),
        notes: cx.notes.clone(),
        raw: serde_json::Value::Object(cx.raw.clone()),
        run_secs: t0.elapsed().as_secs_f64(),
    };
    for f in &rep.figures {
        println!("{}", f.line());
    }
    if let Err(e) = write_results(&a, &rep, &date, &cx) {
        say(format!("cannot write results: {e}"));
        return ExitCode::FAILURE;
    }
    if failed.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn write_results(a: &Args, rep: &Report, date: &str, cx: &Ctx) -> Result<(), String> {
    let e = |e: std::io::Error| e.to_string();
    std::fs::create_dir_all(&a.out).map_err(e)?;
    let plot = format!("{date}-latency.svg");
    let rounds = format!("{date}-rounds.json");
    if !cx.alone_lat.is_empty() {
        let svg = report::latency_svg(
            &format!("Relay latency, visitor → committed → operator stream ({date})"),
            &[
                ("relay alone", "#1f5fbf", cx.alone_lat.clone()),
                ("during login flood", "#d9480f", cx.flood_lat.clone()),
            ],
        );
        std::fs::write(a.out.join(&plot), &svg).map_err(e)?;
        std::fs::write(a.out.join("latest-latency.svg"), &svg).map_err(e)?;
    }
    let raw = json!({ "date": rep.stamp, "machine": rep.machine, "versions": rep.versions,
        "run_secs": rep.run_secs, "lines": rep.figures.iter().map(Figure::line).collect::<Vec<_>>(),
        "rounds": rep.raw });
    let raw = serde_json::to_string_pretty(&raw).map_err(|e| e.to_string())? + "\n";
    std::fs::write(a.out.join(&rounds), &raw).map_err(e)?;
    std::fs::write(a.out.join("latest-rounds.json"), &raw).map_err(e)?;
    std::fs::write(
        a.out.join(format!("{date}.md")),
        rep.markdown(&plot, &rounds),
    )
    .map_err(e)?;
    std::fs::write(
        a.out.join("latest.md"),
        rep.markdown("latest-latency.svg", "latest-rounds.json"),
    )
    .map_err(e)?;
    if let Some(readme) = a
        .readme
        .as_ref()
        .filter(|_| !a.quick && a.only.is_none() && a.hashes.is_none())
    {
        let rel = a
            .out
            .strip_prefix(readme.parent().unwrap_or(std::path::Path::new("")))
            .unwrap_or(&a.out)
            .display()
            .to_string();
        let body = rep.table(&format!("{rel}/latest-latency.svg")).replace(
            "\n![",
            &format!("\nDetails: [`{rel}/latest.md`]({rel}/latest.md).\n\n!["),
        );
        report::update_readme(readme, &body)?;
    }
    say(format!("results in {}", a.out.display()));
    Ok(())
}

fn ratio_figure(
    id: &'static str,
    measure: &str,
    goal: &'static str,
    limit: f64,
    pairs: &[(f64, f64)],
    unit_each: &str,
) -> Figure {
    let ratios: Vec<f64> = pairs.iter().map(|(p, n)| p / n).collect();
    let value = median(&ratios);
    Figure {
        id,
        measure: measure.to_string(),
        value,
        unit: "ratio",
        goal,
        met: value <= limit,
        rounds: format!(
            "ratios {}; medians palisade {} {unit_each}, nginx {} {unit_each}",
            ratios
                .iter()
                .map(|r| fmt_num(*r))
                .collect::<Vec<_>>()
                .join(", "),
            fmt_num(median(&pairs.iter().map(|p| p.0).collect::<Vec<_>>())),
            fmt_num(median(&pairs.iter().map(|p| p.1).collect::<Vec<_>>())),
        ),
    }
}

async fn run(a: &Args, cx: &mut Ctx) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(&a.work);
    std::fs::create_dir_all(&a.work).map_err(|e| e.to_string())?;
    let rounds = if a.quick { 2 } else { 5 };
    if want(a, "p7") || want(a, "p1") || want(a, "p2") {
        tls_and_start(a, cx, rounds).await?;
    }
    if want(a, "p3") {
        idle_streams(a, cx).await?;
    }
    if want(a, "relay") {
        relay(a, cx).await?;
    }
    Ok(())
}

async fn tls_and_start(a: &Args, cx: &mut Ctx, rounds: usize) -> Result<(), String> {
    say("appliance A: palisade demo → palisade serve");
    let mut p = Palisade::create(&a.palisade, &a.work.join("a"))?;
    // P2 measures full handshakes with session tickets off on both servers.
    p.set_policy("tls.toml", "session_resumption", "false")?;
    let vt = Target::new(p.visitor_addr(), &p.s("visitor_pin"));
    if want(a, "p7") {
        let mut starts = Vec::new();
        for r in 0..rounds {
            let s = coldstart::once(&mut p, &vt, r).await?;
            say(format!(
                "P7 round {r}: ready {:.1} ms, first answer {:.1} ms, RSS {} KiB, PSS {} KiB",
                s.ready_ms, s.first_response_ms, s.rss_kib, s.pss_kib
            ));
            starts.push(s);
        }
        let ready = median(&starts.iter().map(|s| s.ready_ms).collect::<Vec<_>>());
        let first = median(
            &starts
                .iter()
                .map(|s| s.first_response_ms)
                .collect::<Vec<_>>(),
        );
        let rss_mb = median(
            &starts
                .iter()
                .map(|s| s.rss_kib as f64 * 1024.0 / 1e6)
                .collect::<Vec<_>>(),
        );
        cx.figures.push(Figure {
            id: "P7",
            measure: "cold start: `palisade serve` exec → READY=1 (sd_notify)".into(),
            value: ready,
            unit: "ms",
            goal: "<=100",
            met: ready <= 100.0,
            rounds: format!(
                "{} ms; first `/widget.js` answered after {} ms (median)",
                starts
                    .iter()
                    .map(|s| fmt_num(s.ready_ms))
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt_num(first)
            ),
        });
        cx.figures.push(Figure {
            id: "P7",
            measure: "idle RSS, 1 s after the first answer".into(),
            value: rss_mb,
            unit: "MB",
            goal: "<=20",
            met: rss_mb <= 20.0,
            rounds: format!(
                "RSS {} KiB; PSS {} KiB; {} threads",
                starts
                    .iter()
                    .map(|s| s.rss_kib.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                starts
                    .iter()
                    .map(|s| s.pss_kib.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                starts.first().map_or(0, |s| s.threads)
            ),
        });
        cx.raw.insert(
            "P7".into(),
            json!(starts
                .iter()
                .map(
                    |s| json!({"ready_ms": s.ready_ms, "first_response_ms": s.first_response_ms,
                    "rss_kib": s.rss_kib, "pss_kib": s.pss_kib, "threads": s.threads})
                )
                .collect::<Vec<_>>()),
        );
        cx.notes.push(
            "P7: `palisade serve` on the appliance `palisade demo` generated (fresh database), \
             started with NOTIFY_SOCKET pointing at the benchmark's own socket: the time is exec \
             → `READY=1`, which the daemon sends after every start-up check, the database \
             open and both listeners bound. The binary is in the page cache (warm), as after \
             any restart; idle RSS is read from /proc/PID/status one second after the first \
             `/widget.js` answer, with no connection open."
                .into(),
        );
    }
    if !(want(a, "p1") || want(a, "p2")) {
        return Ok(());
    }
    p.serve()?;
    let pal_pid = p.pid();
    let widget = vt.conn(None).await?.get("/widget.js", &[]).await?;
    if widget.status != 200 {
        return Err(format!("palisade /widget.js: {}", widget.status));
    }
    let headers: Vec<(String, String)> = widget
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let certs = p.dir.join("certs");
    let nginx = Nginx::start(
        &a.nginx,
        &a.work.join("nginx"),
        &certs.join("visitor.pem"),
        &certs.join("visitor.key"),
        &widget.body,
        &headers,
    )?;
    let nt = Target::new(nginx.addr, &p.s("visitor_pin"));
    let check = nt.conn(None).await?.get("/widget.js", &[]).await?;
    if check.status != 200 || check.body != widget.body {
        return Err("nginx does not serve the same /widget.js bytes".into());
    }
    let ngx_pid = nginx.pid();
    let pal_cpu = move || procfs::cpu_ticks(pal_pid);
    let ngx_cpu = move || procfs::tree_cpu_ticks(ngx_pid);
    let len = widget.body.len();
    let (warm, measure) = if a.quick {
        (Duration::from_millis(300), Duration::from_secs(2))
    } else {
        (Duration::from_millis(500), Duration::from_secs(3))
    };
    if want(a, "p1") {
        let mut pairs = Vec::new();
        let mut raw = Vec::new();
        for r in 0..rounds {
            let mut pal = None;
            let mut ngx = None;
            for first in [r % 2 == 0, r % 2 == 1] {
                if first {
                    pal = Some(
                        tlsbench::keepalive(&vt, "/widget.js", len, 16, warm, measure, &pal_cpu)
                            .await?,
                    );
                } else {
                    ngx = Some(
                        tlsbench::keepalive(&nt, "/widget.js", len, 16, warm, measure, &ngx_cpu)
                            .await?,
                    );
                }
            }
            let (pw, nw) = (
                pal.ok_or("no palisade round")?,
                ngx.ok_or("no nginx round")?,
            );
            say(format!(
                "P1 round {r}: palisade {:.1} µs/req ({:.0} req/s), nginx {:.1} µs/req ({:.0} req/s)",
                pw.cpu_us_per_op(),
                pw.rate(),
                nw.cpu_us_per_op(),
                nw.rate()
            ));
            pairs.push((pw.cpu_us_per_op(), nw.cpu_us_per_op()));
            raw.push(json!({"palisade": {"requests": pw.ops, "cpu_ticks": pw.cpu_ticks, "secs": pw.secs, "errors": pw.errors},
                "nginx": {"requests": nw.ops, "cpu_ticks": nw.cpu_ticks, "secs": nw.secs, "errors": nw.errors}}));
        }
        cx.figures.push(ratio_figure(
            "P1",
            "`/widget.js` over TLS 1.3 keep-alive: server CPU per request, palisade ÷ nginx",
            "<=1.0",
            1.0,
            &pairs,
            "µs/req",
        ));
        cx.raw.insert("P1".into(), json!(raw));
    }
    if want(a, "p2") {
        let mut pairs = Vec::new();
        let mut raw = Vec::new();
        for r in 0..rounds {
            let mut pal = None;
            let mut ngx = None;
            for first in [r % 2 == 0, r % 2 == 1] {
                if first {
                    pal = Some(tlsbench::handshakes(&vt, 8, warm, measure, &pal_cpu).await);
                } else {
                    ngx = Some(tlsbench::handshakes(&nt, 8, warm, measure, &ngx_cpu).await);
                }
            }
            let (pw, nw) = (
                pal.ok_or("no palisade round")?,
                ngx.ok_or("no nginx round")?,
            );
            say(format!(
                "P2 round {r}: palisade {:.1} µs/conn ({:.0}/s, {} errors), nginx {:.1} µs/conn ({:.0}/s, {} errors)",
                pw.cpu_us_per_op(),
                pw.rate(),
                pw.errors,
                nw.cpu_us_per_op(),
                nw.rate(),
                nw.errors
            ));
            pairs.push((pw.cpu_us_per_op(), nw.cpu_us_per_op()));
            raw.push(json!({"palisade": {"handshakes": pw.ops, "cpu_ticks": pw.cpu_ticks, "secs": pw.secs, "errors": pw.errors},
                "nginx": {"handshakes": nw.ops, "cpu_ticks": nw.cpu_ticks, "secs": nw.secs, "errors": nw.errors}}));
        }
        cx.figures.push(ratio_figure(
            "P2",
            "full TLS 1.3 handshake (no resumption): server CPU per connection, palisade ÷ nginx",
            "<=0.6",
            0.6,
            &pairs,
            "µs/conn",
        ));
        cx.raw.insert("P2".into(), json!(raw));
    }
    cx.notes.push(format!(
        "P1/P2: palisade (`serve`) and nginx ({} worker processes, `access_log off`, \
         `open_file_cache`, `keepalive_requests` unlimited) on loopback with the same ECDSA \
         P-256 certificate and key (from the demo CA), TLS 1.3 only on nginx (palisade's \
         visitor policy allows 1.2 and 1.3; the client offers only 1.3), X25519 and \
         AES-256-GCM on both. nginx serves a copy of the bytes palisade answers for \
         `/widget.js` ({len} bytes) with palisade's response headers added, so both send \
         the same response. Each round measures palisade and nginx back to back (the order \
         alternates); the figure is the median of the rounds' ratios. Server CPU is \
         utime+stime from /proc/PID/stat (nginx: master and workers), read over the \
         measured window after a warm-up. P1: 16 keep-alive connections, closed loop. P2: \
         8 clients each connecting, completing a full handshake (resumption off in the \
         client), sending close_notify and waiting for the server to close; nginx has \
         `ssl_session_tickets off` and `ssl_session_cache off`; palisade has \
         `session_resumption = false` in tls.toml (no tickets, no session cache).",
        procfs::children(ngx_pid).len()
    ));
    drop(nginx);
    p.stop();
    Ok(())
}

async fn idle_streams(a: &Args, cx: &mut Ctx) -> Result<(), String> {
    say("appliance B: idle visitor event streams");
    let n = if a.quick { 2_000 } else { 10_000 };
    let mut p = Palisade::create(&a.palisade, &a.work.join("b"))?;
    p.serve()?;
    let vt = Target::new(p.visitor_addr(), &p.s("visitor_pin"));
    let r = idle::run(&vt, p.pid(), n).await?;
    say(format!(
        "P3: {} streams, PSS {} → {} KiB ({:.1} KiB/conn; RSS {:.1} KiB/conn; {:.1} KiB per chat+conn); chats {:.1} s, streams {:.1} s",
        r.connections,
        r.pss_before_kib,
        r.pss_after_kib,
        r.kib_per_conn(),
        r.rss_kib_per_conn(),
        r.kib_per_chat_and_conn(),
        r.chats_secs,
        r.open_secs
    ));
    let v = r.kib_per_conn();
    cx.figures.push(Figure {
        id: "P3",
        measure: format!("memory per idle visitor event-stream connection, at {n} connections"),
        value: v,
        unit: "KiB/conn",
        goal: "<=16",
        met: v <= 16.0,
        rounds: format!(
            "PSS {} → {} KiB over {} streams (RSS {:.1} KiB/conn); with each waiting chat's own state {:.1} KiB/visitor",
            r.pss_before_kib,
            r.pss_after_kib,
            r.connections,
            r.rss_kib_per_conn(),
            r.kib_per_chat_and_conn()
        ),
    });
    cx.raw.insert(
        "P3".into(),
        json!({"connections": r.connections, "pss_empty_kib": r.pss_empty_kib,
            "pss_before_kib": r.pss_before_kib, "pss_after_kib": r.pss_after_kib,
            "rss_before_kib": r.rss_before_kib, "rss_after_kib": r.rss_after_kib,
            "chats_secs": r.chats_secs, "open_secs": r.open_secs}),
    );
    cx.notes.push(format!(
        "P3: {n} visitors start chats (from 32 loopback source addresses, under the demo's \
         `chats_per_hour_per_source = 1000`), which wait in the queue as when no operator is \
         free; then each opens its event stream on its own TLS connection and receives its \
         first event. The figure is the daemon's PSS (/proc/PID/smaps_rollup) after all \
         streams are open and idle minus before they were opened, divided by the number of \
         streams; kernel socket buffers are not in it."
    ));
    p.stop();
    Ok(())
}

async fn relay(a: &Args, cx: &mut Ctx) -> Result<(), String> {
    let (visitors, operators, per_op) = if a.quick {
        (1000, 10, 8)
    } else {
        (5000, 50, 8)
    };
    let rate = 1000.0;
    let (pairs, secs) = if a.quick { (2, 4) } else { (3, 8) };
    say(format!(
        "appliance C: relay with {visitors} visitors and {operators} operators"
    ));
    let mut p = Palisade::create(&a.palisade, &a.work.join("c"))?;
    p.set_policy("visitor.toml", "messages_per_minute", "10000")?;
    p.set_policy("network.toml", "allow", "[\"127.0.0.0/8\", \"::1/128\"]")?;
    // Each operator holds `per_op` chats (the shipped chat.toml allows 4).
    p.set_policy("chat.toml", "max_chats_per_operator", &per_op.to_string())?;
    if let Some(n) = &a.hashes {
        p.set_policy("accounts.toml", "max_concurrent_hashes", n)?;
        cx.notes.push(format!(
            "Experiment: accounts.toml `max_concurrent_hashes = {n}`."
        ));
    }
    p.render()?;
    let password = "bench-operator-password-1";
    let names: Vec<String> = (1..=operators).map(|i| format!("agent{i:02}")).collect();
    let t = Instant::now();
    p.add_operators(&names, password)?;
    say(format!(
        "{operators} operators added in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    p.serve()?;
    let pid = p.pid();
    let vt = Target::new(p.visitor_addr(), &p.s("visitor_pin"));
    let ot = Target::new(p.operator_addr(), &p.s("operator_pin"));
    let logins: Vec<relay::Login> = names
        .iter()
        .map(|n| relay::Login {
            username: n.clone(),
            password: password.into(),
            auth_string: p.s("auth_string"),
        })
        .collect();
    let pop = relay::Population::build(vt.clone(), ot.clone(), &logins, per_op, visitors).await?;
    say(format!(
        "population ready in {:.1} s: {} operators, {} chats, {} browsing visitors ({} page requests, {} failed)",
        pop.setup_secs,
        pop.operators,
        pop.chats,
        pop.browsers,
        pop.browse_stats[0].load(std::sync::atomic::Ordering::Relaxed),
        pop.browse_stats[1].load(std::sync::atomic::Ordering::Relaxed)
    ));
    let cpu_us = |ticks: u64| ticks as f64 * procfs::tick().as_secs_f64() * 1e6;
    // What the population costs with no message sent (browsing visitors' polls, keep-alives).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_secs = if a.quick { 3.0 } else { 5.0 };
    let c0 = procfs::cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let background_us_per_s = cpu_us(procfs::cpu_ticks(pid) - c0) / idle_secs;
    say(format!(
        "background (no messages): {:.1} % of a core",
        background_us_per_s / 1e4
    ));
    let mut round = 0u32;
    // Sustained rate: every chat sends back to back.
    let mut rates = Vec::new();
    let mut sustained_cpu = Vec::new();
    let mut raw_rate = Vec::new();
    for _ in 0..pairs {
        round += 1;
        let d = Duration::from_secs(if a.quick { 3 } else { 5 });
        let c0 = procfs::cpu_ticks(pid);
        pop.closed_loop(round, d).await;
        let drained = pop.drain(round, None, Duration::from_secs(10)).await;
        let c1 = procfs::cpu_ticks(pid);
        let lat = pop.rec.take(round);
        let delivered = lat.len();
        let acked = pop.rec.acked(round);
        let r = delivered as f64 / d.as_secs_f64();
        let mut l = lat;
        let (p50, p99, p999) = stats::tail_ms(&mut l);
        say(format!(
            "P4 sustained round {round}: {r:.0} msg/s delivered ({acked} acknowledged, drained {drained}), p50 {p50:.1} ms p99 {p99:.1} ms, {:.1} µs CPU/msg",
            cpu_us(c1 - c0) / delivered.max(1) as f64
        ));
        rates.push(r);
        sustained_cpu.push(cpu_us(c1 - c0) / delivered.max(1) as f64);
        raw_rate.push(
            json!({"round": round, "secs": d.as_secs_f64(), "delivered": delivered, "acked": acked,
            "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "cpu_ticks": c1 - c0}),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Login capacity (hashed logins per second when saturated).
    let flood = relay::Flood::new(ot.clone());
    let (capacity, cap_stats) = flood
        .capacity(8, Duration::from_secs(if a.quick { 3 } else { 4 }))
        .await;
    say(format!(
        "login capacity {capacity:.1}/s ({} hashed, {} busy, {} throttled, {} other)",
        cap_stats.hashed, cap_stats.busy, cap_stats.throttled, cap_stats.other
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Fixed rate, alone and during a login flood at twice the capacity.
    let mut alone = Vec::new();
    let mut flooded = Vec::new();
    let mut raw_pairs = Vec::new();
    let mut refusals = Vec::new();
    let mut loads = Vec::new();
    let d = Duration::from_secs(secs);
    for k in 0..pairs {
        let mut pair = Vec::new();
        for with_flood in [false, true] {
            round += 1;
            let c0 = procfs::cpu_ticks(pid);
            let (sent, fl) = if with_flood {
                let attacker = flood.open_loop_low_priority(2.0 * capacity, d, 512);
                let sent = pop.fixed_rate(round, rate, d).await;
                let fs = tokio::task::spawn_blocking(move || attacker.join())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|_| "the flood thread failed".to_string())?;
                (sent, Some(fs))
            } else {
                (pop.fixed_rate(round, rate, d).await, None)
            };
            let drained = pop.drain(round, Some(sent), Duration::from_secs(10)).await;
            let c1 = procfs::cpu_ticks(pid);
            let mut lat = pop.rec.take(round);
            let acked = pop.rec.acked(round);
            let delivered = lat.len();
            let (p50, p99, p999) = stats::tail_ms(&mut lat);
            let cpu_per_msg = cpu_us(c1 - c0) / delivered.max(1) as f64;
            loads.push(procfs::loadavg());
            let mut fjson = json!(null);
            if let Some(fs) = &fl {
                let mut rl = fs.refusal_us.clone();
                let (r50, r99, _) = stats::tail_ms(&mut rl);
                say(format!(
                    "  flood: {} attempts, {} hashed, {} refused busy (p50 {r50:.2} ms, p99 {r99:.2} ms), {} throttled, {} other",
                    fs.attempts, fs.hashed, fs.busy, fs.throttled, fs.other
                ));
                if fs.busy > 0 {
                    refusals.push(r99);
                }
                fjson = json!({"rate": 2.0 * capacity, "attempts": fs.attempts, "hashed": fs.hashed,
                    "busy": fs.busy, "throttled": fs.throttled, "other": fs.other,
                    "refusal_p50_ms": r50, "refusal_p99_ms": r99});
            }
            say(format!(
                "P4 round {round} ({}): {delivered} delivered / {acked} acknowledged (drained {drained}), p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, {cpu_per_msg:.1} µs CPU/msg",
                if with_flood { "login flood" } else { "alone" }
            ));
            raw_pairs.push(json!({"round": round, "pair": k, "flood": fjson, "secs": d.as_secs_f64(),
                "delivered": delivered, "acked": acked, "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
                "cpu_ticks": c1 - c0, "cpu_us_per_msg": cpu_per_msg, "loadavg_1min": procfs::loadavg()}));
            pair.push((p50, p99, p999, cpu_per_msg, delivered as u64, acked));
            if with_flood {
                cx.flood_lat.extend_from_slice(&lat);
                // Let the queued hashes finish before the next round.
                tokio::time::sleep(Duration::from_secs(3)).await;
            } else {
                cx.alone_lat.extend_from_slice(&lat);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        alone.push(pair[0]);
        flooded.push(pair[1]);
    }
    let send_errors = pop
        .rec
        .send_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    let last_error = pop
        .rec
        .last_error
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    pop.shutdown();
    let sustained = median(&rates);
    cx.figures.push(Figure {
        id: "P4",
        measure: format!(
            "durable relay, sustained rate ({} chats sending back to back)",
            pop.chats
        ),
        value: sustained,
        unit: "msg/s",
        goal: ">=2000",
        met: sustained >= 2000.0,
        rounds: rates
            .iter()
            .map(|r| fmt_num(*r))
            .collect::<Vec<_>>()
            .join(", ")
            + " msg/s",
    });
    let col = |v: &[(f64, f64, f64, f64, u64, u64)], i: usize| -> Vec<f64> {
        v.iter()
            .map(|t| match i {
                0 => t.0,
                1 => t.1,
                2 => t.2,
                _ => t.3,
            })
            .collect()
    };
    let p99 = median(&col(&alone, 1));
    cx.figures.push(Figure {
        id: "P4",
        measure: format!(
            "relay latency at {rate:.0} msg/s, {visitors} visitors, {operators} operators: p99 (p50 {} ms, p99.9 {} ms)",
            fmt_num(median(&col(&alone, 0))),
            fmt_num(median(&col(&alone, 2)))
        ),
        value: p99,
        unit: "ms_p99",
        goal: "<=25",
        met: p99 <= 25.0,
        rounds: alone
            .iter()
            .map(|t| format!("{}/{}/{} ms", fmt_num(t.0), fmt_num(t.1), fmt_num(t.2)))
            .collect::<Vec<_>>()
            .join(", ")
            + &format!(
                " (p50/p99/p99.9); machine load average (1 min) after each fixed-rate round: {}",
                loads.iter().map(|l| format!("{l:.1}")).collect::<Vec<_>>().join(", ")
            ),
    });
    let cpu = median(&col(&alone, 3));
    cx.figures.push(Figure {
        id: "P5",
        measure: format!("server CPU per relayed message at {rate:.0} msg/s (everything the daemon did in the window, browsing visitors included)"),
        value: cpu,
        unit: "us/msg",
        goal: "<=80",
        met: cpu <= 80.0,
        rounds: format!(
            "{} µs; of which the population's background (no messages: {} % of a core) is {} µs per message at {rate:.0} msg/s; when busy (sustained rounds) {} µs/msg",
            col(&alone, 3).iter().map(|v| fmt_num(*v)).collect::<Vec<_>>().join(", "),
            fmt_num(background_us_per_s / 1e4),
            fmt_num(background_us_per_s / rate),
            fmt_num(median(&sustained_cpu))
        ),
    });
    let ratios: Vec<f64> = alone.iter().zip(&flooded).map(|(a, f)| f.1 / a.1).collect();
    let ratio = median(&ratios);
    cx.figures.push(Figure {
        id: "P6",
        measure: format!(
            "relay p99 during a login flood at 2× the argon2 capacity ({} logins/s) ÷ relay p99 alone",
            fmt_num(2.0 * capacity)
        ),
        value: ratio,
        unit: "ratio",
        goal: "<=1.5",
        met: ratio <= 1.5,
        rounds: format!(
            "ratios {}; flood p99 {} ms",
            ratios.iter().map(|r| fmt_num(*r)).collect::<Vec<_>>().join(", "),
            flooded.iter().map(|t| fmt_num(t.1)).collect::<Vec<_>>().join(", ")
        ),
    });
    let refuse = median(&refusals);
    cx.figures.push(Figure {
        id: "P6",
        measure: "time to refuse an excess login (429, waiting line full): p99".into(),
        value: refuse,
        unit: "ms_p99",
        goal: "<10",
        met: refuse < 10.0,
        rounds: refusals
            .iter()
            .map(|r| fmt_num(*r))
            .collect::<Vec<_>>()
            .join(", ")
            + " ms",
    });
    let lost: i64 = alone
        .iter()
        .chain(&flooded)
        .map(|t| t.5 as i64 - t.4 as i64)
        .sum();
    cx.raw.insert(
        "P4_P6".into(),
        json!({"visitors": visitors, "operators": pop.operators, "chats": pop.chats,
            "background_cpu_us_per_s": background_us_per_s,
            "browsing_visitors": pop.browsers, "setup_secs": pop.setup_secs,
            "sustained": raw_rate, "login_capacity_per_s": capacity,
            "fixed_rate": raw_pairs, "send_errors": send_errors, "last_send_error": last_error,
            "acknowledged_not_delivered": lost}),
    );
    cx.notes.push(format!(
        "P4–P6 population: {operators} operator accounts (`palisade operator add`), each \
         logged in with its event stream open and holding {per_op} chats (the daemon's \
         per-operator limit), so {} chatting visitors, each with its event stream and a \
         keep-alive connection to send on; the other {} visitors browse: they load \
         `/widget.js`, `/chat`, its script and style and the status, then poll the status \
         every 30 s as the chat page does. Every visitor has its own loopback source address \
         (127.6.x.y, 127.7.x.y); the policy was changed before start for two things the \
         benchmark needs: `messages_per_minute = 10000` in visitor.toml (the demo's 120 would \
         refuse a chat sending 2.5 messages a second) and the operator allowlist widened to \
         127.0.0.0/8 in network.toml, so the login flood can come from many sources.",
        pop.chats, pop.browsers
    ));
    cx.notes.push(format!(
        "P4 latency: open loop at {rate:.0} messages/s spread evenly over the chats, {pairs} \
         rounds of {secs} s; each message's latency runs from its scheduled send time to its \
         arrival on the assigned operator's event stream (the daemon answers the visitor only \
         after the commit with `synchronous=FULL`, and publishes after the commit), so queueing \
         in the client counts too. The figure is the median of the rounds' percentiles. \
         Sustained rate: every chat sends back to back (one request in flight per visitor) for \
         {} s; messages delivered to operators per second, median of {pairs} rounds. \
         Acknowledged but not delivered over all fixed-rate rounds: {lost}; send errors: \
         {send_errors}{}.",
        if a.quick { 3 } else { 5 },
        if last_error.is_empty() {
            String::new()
        } else {
            format!(" (last: {last_error})")
        }
    ));
    cx.notes.push(
        "P5: the daemon's utime+stime over each 1,000 msg/s round (until every acknowledged \
         message was delivered) divided by the messages delivered; it includes everything \
         the daemon did meanwhile: the visitor requests, the commits, the fan-out to the \
         visitor's and the operator's streams, and the browsing visitors' polls."
            .into(),
    );
    cx.notes.push(format!(
        "P6: argon2 capacity measured first with 8 attackers in a closed loop ({} hashed \
         logins/s); then each pair of rounds runs the relay alone and with a flood at twice \
         that rate: failed logins for unknown users over fresh connections, at most 10 per \
         source address (so per-source backoff does not stop them). Logins beyond the \
         hashing slots and the waiting line are refused with 429; the refusal time is from \
         sending the login request on an open connection to the 429.",
        fmt_num(capacity)
    ));
    p.stop();
    Ok(())
}
