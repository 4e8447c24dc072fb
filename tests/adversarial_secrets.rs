//! Adversarial suite, category 7: secrets stay secret.
//!
//! Unique markers used as a password, as the authentication string, and the session token
//! the daemon hands out must never show up in any log line (at trace level), error text,
//! API response or the database's bytes; and the daemon cannot dump core.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use serde_json::json;
use std::time::Duration;
use support::*;

const CASE: Duration = Duration::from_secs(120);

fn marker(tag: &str) -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("Mk{tag}{}", palisade::policy::hex(&b))
}

/// The forms a secret could leak in.
fn variants(s: &str) -> Vec<(String, String)> {
    let e = &base64::engine::general_purpose::STANDARD;
    let u = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    vec![
        ("raw".into(), s.to_string()),
        ("lowercase".into(), s.to_lowercase()),
        (
            "base64".into(),
            e.encode(s).trim_end_matches('=').to_string(),
        ),
        ("base64url".into(), u.encode(s)),
        ("hex".into(), palisade::policy::hex(s.as_bytes())),
    ]
}

fn reply_text(r: &Reply, skip_set_cookie: bool) -> String {
    let mut out = String::new();
    for (k, v) in &r.headers {
        if skip_set_cookie && k == "set-cookie" {
            continue;
        }
        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("")));
    }
    out.push_str(&r.text());
    out
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn markers_nowhere() {
    case("secrets/marker-nowhere", CASE, async {
        let l = Layout::new();
        let pw = marker("Pw");
        let auth = marker("As");
        let short = marker("S")[..11].to_string();
        let mut places: Vec<(String, String)> = vec![];
        // Admin commands, also failing ones: their output and errors are places too.
        for (args, input) in [
            (vec!["auth-string"], format!("{auth}\n")),
            (vec!["operator", "add", "mara"], format!("{pw}\n")),
            (vec!["operator", "add", "mara2"], format!("{short}\n")),
            (vec!["operator", "passwd", "mara3"], format!("{pw}-other\n")),
            (vec!["auth-string"], format!("{short}\n")),
            (vec!["check"], String::new()),
        ] {
            let (code, out, err) = l.cli(&args, Some(&input));
            places.push((format!("cli {} (exit {code})", args.join(" ")), format!("{out}{err}")));
        }
        let mut d = l.serve(&[("PALISADE_LOG", "trace")])?;
        let o = l.operator_client(d.o());
        let v = l.visitor_client(d.v());
        let login = |p: String, a: String| {
            let o = o.clone();
            async move {
                o.post_json("/api/v1/operator/login", &json!({"username": "mara", "password": p, "auth_string": a}), &[]).await
            }
        };
        // Failures first: every mistake a person makes with these secrets.
        for (p, a) in [
            (format!("{pw}x"), auth.clone()),
            (pw.clone(), format!("{auth}x")),
            (auth.clone(), pw.clone()),
            (pw.clone(), String::new()),
        ] {
            let r = login(p, a).await?;
            ensure(r.status == 401, || format!("a wrong login answered {}", r.status))?;
            places.push(("response to a failed login".into(), reply_text(&r, false)));
        }
        for body in [
            format!("{{\"username\":\"mara\",\"password\":\"{pw}\",\"auth_string\":\"{auth}\",\"extra\":1}}"),
            format!("{{\"username\":\"mara\",\"password\":\"{pw}\",\"auth_string\":5}}"),
            format!("{{\"username\":\"mara\",\"password\":\"{pw}\",\"auth_string\":\"{auth}"),
            format!("{{\"username\":\"{pw}\",\"password\":\"{auth}\",\"auth_string\":\"{auth}\"}}"),
        ] {
            let r = o
                .request("POST", "/api/v1/operator/login", Some(body.into_bytes()), &[("origin", format!("https://{}", o.addr))])
                .await?;
            places.push((format!("response to a malformed login ({})", r.status), reply_text(&r, false)));
        }
        // Then a real session, used everywhere.
        let r = login(pw.clone(), auth.clone()).await?;
        ensure(r.status == 200, || format!("login with the markers answered {}", r.status))?;
        places.push(("login response (without Set-Cookie)".into(), reply_text(&r, true)));
        let session = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
        let token = session.split_once('=').unwrap().1.to_string();
        let c = cookie(&session);
        for path in ["/api/v1/operator/me", "/api/v1/operator/state", "/", "/api/v1/operator/chats/1/transcript", "/api/v1/operator/nope"] {
            let r = o.get(path, std::slice::from_ref(&c)).await?;
            places.push((format!("GET {path}"), reply_text(&r, false)));
        }
        let (chat, vt) = try_start_chat(&v, "Visitor", "question").await?;
        let r = o.post_json(&format!("/api/v1/operator/chats/{chat}/accept"), &json!({}), std::slice::from_ref(&c)).await?;
        places.push(("accept".into(), reply_text(&r, false)));
        let r = o.post_json(&format!("/api/v1/operator/chats/{chat}/messages"), &json!({"text": "hello"}), std::slice::from_ref(&c)).await?;
        places.push(("operator message".into(), reply_text(&r, false)));
        let mut s = o.events("/api/v1/operator/events", std::slice::from_ref(&c)).await?;
        let snap = s.until("snapshot", Duration::from_secs(10)).await.ok_or("no snapshot")?;
        places.push(("event stream snapshot".into(), snap.data.to_string()));
        let r = v.get("/api/v1/visitor/transcript", &[bearer(&vt)]).await?;
        places.push(("visitor transcript".into(), reply_text(&r, false)));
        // The token in places it does not belong: as a bearer, as a visitor token.
        let r = v.get("/api/v1/visitor/events", &[bearer(&token)]).await?;
        places.push(("operator token as visitor bearer".into(), reply_text(&r, false)));
        let r = o.post_json("/api/v1/operator/logout", &json!({}), std::slice::from_ref(&c)).await?;
        places.push(("logout".into(), reply_text(&r, false)));
        let r = o.get("/api/v1/operator/me", std::slice::from_ref(&c)).await?;
        ensure(r.status == 401, || "the session outlived logout".into())?;
        places.push(("after logout".into(), reply_text(&r, false)));
        d.stop();
        let log = d.log_text();
        ensure(log.lines().count() > 50, || format!("only {} log lines at trace level", log.lines().count()))?;
        places.push(("daemon log (trace)".into(), log.clone()));
        let mut db = vec![];
        for e in std::fs::read_dir(l.state_dir()).unwrap() {
            db.extend(std::fs::read(e.unwrap().path()).unwrap_or_default());
        }
        ensure(db.len() > 4096, || "no database bytes".into())?;
        let mut checked = 0;
        for (name, secret) in [("password", &pw), ("auth string", &auth), ("session token", &token), ("short password", &short)] {
            for (form, needle) in variants(secret) {
                for (place, text) in &places {
                    checked += 1;
                    ensure(!text.contains(&needle), || {
                        let line = text.lines().find(|l| l.contains(&needle)).unwrap_or("");
                        format!("the {name} ({form}) appears in: {place}: {}", &line[..line.len().min(300)])
                    })?;
                }
                checked += 1;
                ensure(!contains(&db, &needle), || format!("the {name} ({form}) appears in the database files"))?;
            }
        }
        Ok(format!(
            "secrets=4 forms=5 places={} log_lines={} db_bytes={} checks={checked} hits=0",
            places.len() + 1,
            log.lines().count(),
            db.len()
        ))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn core_dumps_off() {
    use std::os::unix::process::ExitStatusExt;
    case("secrets/core-dumps-off", CASE, async {
        let l = Layout::new();
        let cwd = l.scratch("cwd");
        // Start it with core dumps allowed, as a careless shell would.
        let mut cmd = std::process::Command::new("bash");
        cmd.args([
            "-c",
            "ulimit -c unlimited && exec \"$0\" serve --config \"$1\"",
            BIN,
        ])
        .arg(l.config())
        .current_dir(&cwd);
        let mut d = Daemon::spawn(cmd, &l.next_log())?;
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid))
            .map_err(|e| e.to_string())?;
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .ok_or("no core limit line")?;
        let fields: Vec<&str> = core.split_whitespace().collect();
        let (soft, hard) = (fields[4], fields[5]);
        ensure(soft == "0" && hard == "0", || {
            format!("core limit of the daemon: {core}")
        })?;
        // SIGABRT: its default action dumps core (and, unlike SIGSEGV, Rust's runtime does
        // not catch it).
        let status = d
            .signal_and_wait(nix::sys::signal::Signal::SIGABRT)
            .ok_or("SIGABRT did not end it")?;
        ensure(status.signal() == Some(6), || {
            format!("SIGABRT ended it with {status:?}")
        })?;
        let files: Vec<_> = std::fs::read_dir(&cwd)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        ensure(!status.core_dumped() && files.is_empty(), || {
            format!("the daemon dumped core: {status:?}, files {files:?}")
        })?;
        // Control: the same shell setup does dump core for an ordinary process here (so the
        // check above could have seen one).
        let ctl = std::process::Command::new("bash")
            .args(["-c", "ulimit -c unlimited && kill -ABRT $$"])
            .current_dir(&cwd)
            .status()
            .map_err(|e| e.to_string())?;
        for e in std::fs::read_dir(&cwd).unwrap().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(format!(
            "rlimit_core={soft}/{hard} sigabrt_core_dumped=no control_core_dumped={}",
            if ctl.core_dumped() { "yes" } else { "no" }
        ))
    })
    .await;
}
