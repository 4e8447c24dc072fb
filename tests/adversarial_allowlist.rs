//! Adversarial suite, category 1: the operator allowlist cannot be bypassed.
//!
//! Run by `scripts/adversarial` (`cargo test --test adversarial_allowlist -- --ignored`).
//! Every case starts the real daemon with its own policy and attacks it from chosen
//! source addresses on loopback (all of 127.0.0.0/8 is local) or from separate hosts in
//! network namespaces it creates (documentation ranges only, removed on drop).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(5);
const CASE: Duration = Duration::from_secs(120);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A hello a real client would send (TLS 1.3 suites, TLS 1.0 record version).
fn hello() -> Vec<u8> {
    client_hello(0x0301, 0x0303, &[0x1302, 0x1301, 0xc02b], true)
}

/// The source may not get a single byte back, whatever it sends, and no TLS session.
async fn refused(c: &Client, first_bytes: &[u8]) -> Result<(), String> {
    let ans = probe(c, first_bytes, T).await?;
    ensure(ans == ProbeAnswer::Silent, || {
        format!(
            "source {:?} -> {}: expected a silent close, got {ans:?}",
            c.source, c.addr
        )
    })?;
    match c.get("/api/v1/operator/me", &[]).await {
        Ok(r) => Err(format!(
            "source {:?} -> {} got an HTTP answer {}",
            c.source, c.addr, r.status
        )),
        Err(_) => Ok(()),
    }
}

/// The source completes TLS and reaches the API (401 without a session).
async fn admitted(c: &Client) -> Result<(), String> {
    let r = c
        .get("/api/v1/operator/me", &[])
        .await
        .map_err(|e| format!("source {:?} -> {} not admitted: {e}", c.source, c.addr))?;
    ensure(r.status == 401, || {
        format!("source {:?}: /me answered {}", c.source, r.status)
    })
}

fn v4(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(ip("127.0.0.1"), addr.port())
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn ipv4_sources() {
    case("allowlist/ipv4-sources", CASE, async {
        let l = Layout::new();
        l.set_network(
            &["127.0.0.1:0"],
            &["127.0.0.1:0"],
            &["127.0.0.2/32", "127.0.1.0/24"],
        );
        let d = l.serve(&[])?;
        let op = l.operator_client(d.o());
        let good = ["127.0.0.2", "127.0.1.1", "127.0.1.254"];
        let bad = [
            "127.0.0.1",
            "127.0.0.3",
            "127.0.2.1",
            "127.0.0.254",
            "127.1.1.1",
        ];
        for s in good {
            admitted(&op.with_source(ip(s))).await?;
        }
        for s in bad {
            refused(&op.with_source(ip(s)), &hello()).await?;
        }
        for s in bad {
            d.wait_log(&format!("source_refused: source={s} "), T)
                .await?;
        }
        // The visitor listener stays open to everyone (the refusals are the allowlist's).
        let v = l.visitor_client(d.v()).with_source(ip("127.0.0.3"));
        let w = v.get("/widget.js", &[]).await?;
        ensure(w.status == 200, || {
            format!("visitor /widget.js {}", w.status)
        })?;
        Ok(format!(
            "admitted={} refused={} bytes_back=0 logged={}",
            good.len(),
            bad.len(),
            bad.len()
        ))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn ipv6_sources() {
    case("allowlist/ipv6-sources", CASE, async {
        let l = Layout::new();
        // An IPv4-only allowlist on a listener with an IPv6 address: ::1 is refused.
        l.set_network(
            &["127.0.0.1:0"],
            &["127.0.0.1:0", "[::1]:0"],
            &["127.0.0.2/32"],
        );
        let mut d = l.serve(&[])?;
        let v6 = d
            .operator
            .iter()
            .copied()
            .find(|a| a.is_ipv6())
            .ok_or("no ::1 listener")?;
        let v4l = d
            .operator
            .iter()
            .copied()
            .find(|a| a.is_ipv4())
            .ok_or("no v4 listener")?;
        refused(&l.operator_client(v6), &hello()).await?;
        admitted(&l.operator_client(v4l).with_source(ip("127.0.0.2"))).await?;
        d.wait_log("source_refused: source=::1 ", T).await?;
        d.stop();
        // An IPv6-only allowlist: ::1 admitted, every IPv4 source refused.
        l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0", "[::1]:0"], &["::1/128"]);
        let d = l.serve(&[])?;
        let v6 = d
            .operator
            .iter()
            .copied()
            .find(|a| a.is_ipv6())
            .ok_or("no ::1 listener")?;
        let v4l = d
            .operator
            .iter()
            .copied()
            .find(|a| a.is_ipv4())
            .ok_or("no v4 listener")?;
        admitted(&l.operator_client(v6)).await?;
        for s in ["127.0.0.1", "127.0.0.2"] {
            refused(&l.operator_client(v4l).with_source(ip(s)), &hello()).await?;
        }
        Ok("v4_list_refuses_v6=yes v6_list_refuses_v4=yes admitted=2 refused=3".into())
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn mapped_ipv6() {
    case("allowlist/mapped-ipv6", CASE, async {
        let l = Layout::new();
        // 1. An IPv6 socket bound to an IPv4-mapped address: IPv4 peers arrive as
        //    ::ffff:127.0.0.x and must be matched as 127.0.0.x.
        l.set_network(
            &["127.0.0.1:0"],
            &["[::ffff:127.0.0.1]:0"],
            &["127.0.0.2/32"],
        );
        let mut d = l.serve(&[])?;
        ensure(d.o().is_ipv6(), || format!("listener is {}", d.o()))?;
        let op = l.operator_client(v4(d.o()));
        admitted(&op.with_source(ip("127.0.0.2"))).await?;
        refused(&op.with_source(ip("127.0.0.3")), &hello()).await?;
        d.wait_log("source_refused: source=127.0.0.3 ", T).await?;
        ensure(!d.log_text().contains("::ffff:127.0.0.3"), || {
            "the refusal names the mapped, not the canonical address".into()
        })?;
        d.stop();

        // 2. A real dual-stack wildcard socket handed over by socket activation
        //    (`[::]:PORT`, IPV6_V6ONLY off), as systemd would pass it.
        let port = {
            let s = std::net::TcpListener::bind("[::]:0").map_err(|e| e.to_string())?;
            s.local_addr().unwrap().port()
        };
        l.render();
        let mut cmd = std::process::Command::new("systemd-socket-activate");
        cmd.args([
            "-l",
            &format!("[::]:{port}"),
            "--fdname=operator",
            BIN,
            "serve",
            "--config",
        ])
        .arg(l.config());
        // systemd-socket-activate starts the service on the first connection, as a
        // socket unit would; that connection (from a refused source) is queued for it.
        let mut d = Daemon::spawn_unready(cmd, &l.next_log())?;
        d.wait_log(&format!("Listening on [::]:{port}"), T).await?;
        let first = std::net::TcpStream::connect(("127.0.0.4", port));
        d.wait_ready(Duration::from_secs(60))
            .map_err(|e| format!("socket-activated serve: {e}"))?;
        drop(first);
        ensure(d.o() == format!("[::]:{port}").parse().unwrap(), || {
            format!(
                "operator listener {} is not the activated [::]:{port}",
                d.o()
            )
        })?;
        let op = l.operator_client(SocketAddr::new(ip("127.0.0.1"), port));
        admitted(&op.with_source(ip("127.0.0.2"))).await?;
        for s in ["127.0.0.1", "127.0.0.3"] {
            refused(&op.with_source(ip(s)), &hello()).await?;
        }
        refused(
            &l.operator_client(SocketAddr::new(ip("::1"), port)),
            &hello(),
        )
        .await?;
        for s in ["127.0.0.3", "::1"] {
            d.wait_log(&format!("source_refused: source={s} "), T)
                .await?;
        }
        Ok("mapped_bind=canonicalised dual_stack=canonicalised admitted=2 refused=4".into())
    })
    .await;
}

const FORWARDING: &[&str] = &[
    "X-Forwarded-For",
    "Forwarded",
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
    "CF-Connecting-IP",
    "X-Cluster-Client-IP",
    "Fastly-Client-IP",
    "X-Originating-IP",
    "Client-IP",
    "X-Forwarded",
    "Forwarded-For",
];

fn spoof(addr: &str) -> Vec<(&'static str, String)> {
    FORWARDING
        .iter()
        .map(|h| {
            let v = if *h == "Forwarded" {
                format!("for={addr};proto=https")
            } else {
                addr.to_string()
            };
            (*h, v)
        })
        .collect()
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn forwarding_headers() {
    case("allowlist/forwarding-headers", CASE, async {
        let l = Layout::new();
        l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.2/32"]);
        l.set_policy("visitor.toml", "", "chats_per_hour_per_source", "3");
        let d = l.serve(&[])?;
        let op = l.operator_client(d.o());
        // 1. From a refused source, plain HTTP with every forwarding header naming an
        //    admitted address: closed, nothing read, nothing answered.
        let mut raw = "GET /api/v1/operator/me HTTP/1.1\r\nHost: x\r\n".to_string();
        for (h, v) in spoof("127.0.0.2") {
            raw.push_str(&format!("{h}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        refused(&op.with_source(ip("127.0.0.3")), raw.as_bytes()).await?;
        // 2. From an admitted source, the headers change nothing: the audit names the real
        //    source, never the claimed one.
        let claimed = "203.0.113.77";
        let mut h = spoof(claimed);
        h.push(("origin", format!("https://{}", op.addr)));
        let r = op
            .with_source(ip("127.0.0.2"))
            .request(
                "POST",
                "/api/v1/operator/login",
                Some(
                    serde_json::to_vec(&serde_json::json!({
                        "username": "demo", "password": "wrong-password-1", "auth_string": "x"
                    }))
                    .unwrap(),
                ),
                &h,
            )
            .await?;
        ensure(r.status == 401, || format!("login answered {}", r.status))?;
        d.wait_log("login_failed: user=demo source=127.0.0.2 ", T).await?;
        // 3. Visitor side: the per-source chat limit follows the real source, whatever
        //    the headers claim.
        let v = l.visitor_client(d.v()).with_source(ip("127.0.0.9"));
        let mut statuses = vec![];
        for i in 0..4 {
            let r = v
                .post_json(
                    "/api/v1/visitor/chats",
                    &serde_json::json!({"name": format!("Spoofer {i}"), "question": "q"}),
                    &spoof(&format!("198.51.100.{}", 10 + i)),
                )
                .await?;
            statuses.push(r.status);
        }
        ensure(statuses == [201, 201, 201, 429], || {
            format!("chat starts with rotating forwarding headers: {statuses:?}, want [201, 201, 201, 429]")
        })?;
        let other = l.visitor_client(d.v()).with_source(ip("127.0.0.10"));
        try_start_chat(&other, "Other", "q").await?;
        ensure(!d.log_text().contains(claimed) && !d.log_text().contains("198.51.100."), || {
            "a claimed forwarding address reached the log".into()
        })?;
        Ok(format!(
            "headers={} refused_bytes_back=0 audit_source=real visitor_limit_keyed_on=real",
            FORWARDING.len()
        ))
    })
    .await;
}

fn proxy_v2(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend([0x21, 0x11, 0x00, 0x0c]);
    b.extend(src);
    b.extend(dst);
    b.extend(40000u16.to_be_bytes());
    b.extend(443u16.to_be_bytes());
    b
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn proxy_protocol() {
    case("allowlist/proxy-protocol", CASE, async {
        let l = Layout::new();
        l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.2/32"]);
        let d = l.serve(&[])?;
        let op = l.operator_client(d.o());
        let v1 = |src: &str| {
            let mut b = format!("PROXY TCP4 {src} 127.0.0.1 40000 443\r\n").into_bytes();
            b.extend(hello());
            b
        };
        let mut v2 = proxy_v2([127, 0, 0, 2], [127, 0, 0, 1]);
        v2.extend(hello());
        // 1. A refused source claiming an admitted one: nothing back.
        let bad = op.with_source(ip("127.0.0.3"));
        refused(&bad, &v1("127.0.0.2")).await?;
        refused(&bad, &v2).await?;
        // 2. An admitted source sending a PROXY header: never auto-detected, the
        //    handshake does not go on (the header is just bad TLS).
        let good = op.with_source(ip("127.0.0.2"));
        let mut answers = vec![];
        for bytes in [
            v1("203.0.113.5"),
            proxy_v2([203, 0, 113, 5], [127, 0, 0, 1]),
        ] {
            let a = probe(&good, &bytes, T).await?;
            ensure(
                !matches!(a, ProbeAnswer::Handshake | ProbeAnswer::Open),
                || format!("operator listener went on after a PROXY header: {a:?}"),
            )?;
            answers.push(a);
        }
        admitted(&good).await?;
        // 3. The visitor listener does not auto-detect it either.
        let v = l.visitor_client(d.v());
        let a = probe(&v, &v1("203.0.113.5"), T).await?;
        ensure(
            !matches!(a, ProbeAnswer::Handshake | ProbeAnswer::Open),
            || format!("visitor listener went on after a PROXY header: {a:?}"),
        )?;
        ensure(!d.log_text().contains("203.0.113.5"), || {
            "the PROXY header's address reached the log".into()
        })?;
        Ok(format!(
            "refused_v1=silent refused_v2=silent admitted_with_header={answers:?} visitor={a:?}"
        ))
    })
    .await;
}

/// Network namespaces made for one test, deleted on drop (with their veth links).
struct Netns {
    names: Vec<String>,
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

impl Netns {
    fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        sh(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .output();
        }
    }
}

/// curl from inside a namespace; returns (exit code, HTTP status).
fn curl_in(ns: &str, pin: &str, url: &str) -> (i32, String) {
    let pin = pin.replacen("sha256/", "sha256//", 1);
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--insecure",
            "--pinnedpubkey",
            &pin,
            url,
        ])
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn netns_hosts() {
    case("allowlist/netns-hosts", CASE, async {
        ensure(is_root(), || "needs root for network namespaces".into())?;
        let tag = format!("{}", std::process::id() % 100_000);
        let ns = |s: &str| format!("palisade-adv-{tag}-{s}");
        let (srv, inside, outside) = (ns("srv"), ns("in"), ns("out"));
        let guard = Netns {
            names: vec![srv.clone(), inside.clone(), outside.clone()],
        };
        for n in &guard.names {
            sh(&["ip", "netns", "add", n])?;
            guard.exec(n, &["ip", "link", "set", "lo", "up"])?;
        }
        let (a, b, c, dd) = (
            format!("pa{tag}"),
            format!("pb{tag}"),
            format!("pc{tag}"),
            format!("pd{tag}"),
        );
        sh(&["ip", "link", "add", &a, "netns", &srv, "type", "veth", "peer", "name", &b, "netns", &inside])?;
        sh(&["ip", "link", "add", &c, "netns", &srv, "type", "veth", "peer", "name", &dd, "netns", &outside])?;
        let cmds: Vec<(&str, Vec<&str>)> = vec![
            (&srv, vec!["ip", "addr", "add", "192.0.2.1/24", "dev", &a]),
            (&srv, vec!["ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", &a, "nodad"]),
            (&srv, vec!["ip", "addr", "add", "198.51.100.1/24", "dev", &c]),
            (&srv, vec!["ip", "-6", "addr", "add", "2001:db8:2::1/64", "dev", &c, "nodad"]),
            (&srv, vec!["ip", "link", "set", &a, "up"]),
            (&srv, vec!["ip", "link", "set", &c, "up"]),
            (&inside, vec!["ip", "addr", "add", "192.0.2.2/24", "dev", &b]),
            (&inside, vec!["ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", &b, "nodad"]),
            (&inside, vec!["ip", "link", "set", &b, "up"]),
            (&outside, vec!["ip", "addr", "add", "198.51.100.2/24", "dev", &dd]),
            (&outside, vec!["ip", "-6", "addr", "add", "2001:db8:2::2/64", "dev", &dd, "nodad"]),
            (&outside, vec!["ip", "link", "set", &dd, "up"]),
            (&outside, vec!["ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.1"]),
            (&outside, vec!["ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:2::1"]),
        ];
        for (n, args) in &cmds {
            guard.exec(n, args)?;
        }
        let l = Layout::new();
        l.set_network(
            &["[::]:0"],
            &["192.0.2.1:0", "[2001:db8:1::1]:0"],
            &["192.0.2.0/24", "2001:db8:1::/64"],
        );
        l.render();
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &srv, BIN, "serve", "--config"])
            .arg(l.config());
        let d = Daemon::spawn(cmd, &l.next_log())?;
        let port = |v6: bool| {
            d.operator
                .iter()
                .find(|x| x.is_ipv6() == v6)
                .map(|x| x.port())
                .unwrap()
        };
        let vport = d.v().port();
        let (opin, vpin) = (l.s("operator_pin"), l.s("visitor_pin"));
        let targets = [
            format!("https://192.0.2.1:{}/api/v1/operator/me", port(false)),
            format!("https://[2001:db8:1::1]:{}/api/v1/operator/me", port(true)),
        ];
        let mut report = vec![];
        for t in &targets {
            let (code, status) = curl_in(&inside, &opin, t);
            ensure(code == 0 && status == "401", || {
                format!("inside host -> {t}: curl exit {code}, HTTP {status}; want 0/401")
            })?;
            let (code, status) = curl_in(&outside, &opin, t);
            ensure(code != 0 && status == "000", || {
                format!("outside host -> {t}: curl exit {code}, HTTP {status}; want a failed handshake")
            })?;
            report.push(code);
        }
        // Control: the outside host does reach the appliance (its visitor listener).
        for host in ["192.0.2.1", "[2001:db8:1::1]"] {
            let (code, status) = curl_in(&outside, &vpin, &format!("https://{host}:{vport}/widget.js"));
            ensure(code == 0 && status == "200", || {
                format!("outside host cannot reach the visitor listener at {host}: curl {code}/{status}")
            })?;
        }
        for s in ["198.51.100.2", "2001:db8:2::2"] {
            d.wait_log(&format!("source_refused: source={s} "), T).await?;
        }
        drop(d);
        drop(guard);
        Ok(format!(
            "hosts=3 inside_v4=401 inside_v6=401 outside_v4_curl_exit={} outside_v6_curl_exit={} outside_reaches_visitor=yes",
            report[0], report[1]
        ))
    })
    .await;
}
