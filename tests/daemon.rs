//! End-to-end tests of the core: the real binary, real TLS, a real SQLite file.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn visitor_and_operator_chat_end_to_end() {
    let demo = Demo::start();
    let (v, o) = (demo.visitor(), demo.operator());
    let cookie_v = demo.login(&o).await;
    let c = cookie(&cookie_v);
    let mut ops = o
        .events("/api/v1/operator/events", std::slice::from_ref(&c))
        .await
        .unwrap();
    let snap = ops.until("snapshot", T).await.expect("snapshot");
    assert_eq!(snap.data["me"]["username"], "demo");

    let status = v.get("/api/v1/visitor/status", &[]).await.unwrap();
    assert_eq!(
        status.json()["online"],
        true,
        "an operator with an open console is online"
    );

    let (chat, token) = start_chat(&v, "Vera Visitor", "Do you ship to Mars?").await;
    let mut vis = v
        .events("/api/v1/visitor/events", &[bearer(&token)])
        .await
        .unwrap();
    let started = vis.until("started", T).await.expect("started event");
    assert_eq!(started.data["author"], "Vera Visitor");
    let q = vis.until("queue", T).await.expect("queue position");
    assert_eq!(q.data["position"], 1);

    let queued = ops.until("queue", T).await.expect("queue event");
    assert!(queued.data["queue"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["chat_id"] == chat && e["name"] == "Vera Visitor"));

    let acc = o
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/accept"),
            &json!({}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(acc.status, 200, "{}", acc.text());
    let again = o
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/accept"),
            &json!({}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 409, "a taken chat cannot be accepted twice");
    let joined = vis.until("joined", T).await.expect("joined");
    assert_eq!(joined.data["author"], "Demo Operator");

    let sent = v
        .post_json(
            "/api/v1/visitor/messages",
            &json!({"text": "hello from the visitor"}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    assert_eq!(sent.status, 200, "{}", sent.text());
    let m = ops
        .until("message", T)
        .await
        .expect("operator receives the message");
    assert_eq!(m.data["text"], "hello from the visitor");
    assert_eq!(m.data["author"], "Vera Visitor");
    assert_eq!(m.data["chat_id"], chat);

    let reply = o
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/messages"),
            &json!({"text": "hello from the operator"}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let mut seen = vec![];
    while let Some(e) = vis.next(T).await {
        if e.event == "message" {
            seen.push(e.data["text"].as_str().unwrap().to_string());
            if seen.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(seen, ["hello from the visitor", "hello from the operator"]);

    let end = o
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/end"),
            &json!({}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(end.status, 200);
    let ended = vis.until("ended", T).await.expect("visitor sees the end");
    assert_eq!(ended.data["from"], "operator");
    let after = v
        .post_json(
            "/api/v1/visitor/messages",
            &json!({"text": "late"}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    assert_eq!(after.status, 401, "an ended chat takes no more messages");

    let tr = o
        .get(
            &format!("/api/v1/operator/chats/{chat}/transcript"),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(tr.status, 200);
    let kinds: Vec<String> = tr.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["started", "joined", "message", "message", "ended"]);
    assert!(
        demo.log().contains("transcript_access"),
        "transcript access is a security event"
    );
}

/// Read an event-stream body until `needle` has arrived.
async fn read_until(body: &mut hyper::body::Incoming, needle: &str, text: &mut String) {
    use http_body_util::BodyExt;
    while !text.contains(needle) {
        let f = tokio::time::timeout(T, body.frame())
            .await
            .expect("an event in time")
            .expect("the stream is open")
            .unwrap();
        if let Ok(d) = f.into_data() {
            text.push_str(&String::from_utf8_lossy(&d));
        }
    }
}

#[tokio::test]
async fn visitor_event_stream_after_other_requests_on_one_connection_ends_with_the_chat() {
    use http_body_util::BodyExt;
    let demo = Demo::start();
    let v = demo.visitor();
    let _online = demo.operator_online().await;
    let (_chat, token) = start_chat(&v, "Iris", "one connection?").await;
    let tcp = v.tcp().await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(v.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(v.tls.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        hyper::Request::get(path)
            .header("host", v.addr.to_string())
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // An ordinary request first, on the same kept-alive connection.
    let r = sender.send_request(get("/widget.js")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    // Then the event stream: its head, then the events written on the bare connection.
    let r = sender
        .send_request(get("/api/v1/visitor/events"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), hyper::Version::HTTP_10);
    let h = r.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["connection"], "close");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.get("content-length").is_none() && h.get("transfer-encoding").is_none());
    let mut body = r.into_body();
    let mut text = String::new();
    read_until(&mut body, "event: started\n", &mut text).await;
    let r = v
        .post_json(
            "/api/v1/visitor/messages",
            &json!({"text": "hi"}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    read_until(&mut body, "\"text\":\"hi\"", &mut text).await;
    let r = v
        .post_json("/api/v1/visitor/end", &json!({}), &[bearer(&token)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    read_until(&mut body, "event: ended\n", &mut text).await;
    // The chat ended: the server ends the stream by closing the connection.
    loop {
        match tokio::time::timeout(T, body.frame())
            .await
            .expect("the end in time")
        {
            None => break,
            Some(Ok(f)) => assert!(
                f.into_data().is_ok_and(|d| d.is_empty()),
                "more after ended"
            ),
            Some(Err(e)) => panic!("stream broke instead of ending: {e}"),
        }
    }
}

#[tokio::test]
async fn event_stream_resume_replays_exactly_what_was_missed() {
    let demo = Demo::start();
    let v = demo.visitor();
    let _online = demo.operator_online().await;
    let (_chat, token) = start_chat(&v, "Rhea", "resume?").await;
    let mut ids = vec![];
    for i in 0..6 {
        let r = v
            .post_json(
                "/api/v1/visitor/messages",
                &json!({"text": format!("m{i}")}),
                &[bearer(&token)],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        ids.push(r.json()["id"].as_i64().unwrap());
    }
    // The client saw up to m2, then reconnected.
    let mut s = v
        .events(
            "/api/v1/visitor/events",
            &[bearer(&token), ("last-event-id", ids[2].to_string())],
        )
        .await
        .unwrap();
    let mut got = vec![];
    while got.len() < 3 {
        let e = s.next(T).await.expect("replayed event");
        if e.event == "message" {
            got.push((e.id.unwrap(), e.data["text"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(
        got,
        vec![
            (ids[3], "m3".into()),
            (ids[4], "m4".into()),
            (ids[5], "m5".into())
        ]
    );
    // Live messages follow, once each.
    let r = v
        .post_json(
            "/api/v1/visitor/messages",
            &json!({"text": "live"}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    let live_id = r.json()["id"].as_i64().unwrap();
    let e = s.until("message", T).await.unwrap();
    assert_eq!(
        (e.id, e.data["text"].as_str()),
        (Some(live_id), Some("live"))
    );
    // Nothing else (no duplicate) arrives.
    let extra = s.next(Duration::from_millis(500)).await;
    assert!(
        extra.as_ref().is_none_or(|e| e.event != "message"),
        "duplicate: {extra:?}"
    );
    // A malformed resume id is refused, not guessed at.
    let bad = v
        .get(
            "/api/v1/visitor/events",
            &[bearer(&token), ("last-event-id", "-1".into())],
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn operator_port_admits_loopback_and_drops_other_sources_before_tls() {
    let demo = Demo::start();
    let o = demo.operator();
    let ok = o
        .get("/api/v1/operator/me", &[])
        .await
        .expect("127.0.0.1 completes TLS");
    assert_eq!(ok.status, 401);

    // A client bound to 127.0.0.2 sends a ClientHello and gets nothing back but a close.
    let refused = o.with_source(ip("127.0.0.2"));
    let mut tcp = refused
        .tcp()
        .await
        .expect("TCP connect succeeds (kernel accepts)");
    let _ = tcp
        .write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(T, tcp.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)), "no byte may come back: {n:?}");
    let err = refused
        .get("/", &[])
        .await
        .expect_err("no TLS session from 127.0.0.2");
    assert!(err.starts_with("tls") || err.starts_with("http"), "{err}");
    // The refusal is logged with the canonical address.
    let deadline = std::time::Instant::now() + T;
    while !demo.log().contains("source_refused: source=127.0.0.2") {
        assert!(
            std::time::Instant::now() < deadline,
            "refusal not logged:\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The visitor listener is open to everyone.
    let v = demo.visitor().with_source(ip("127.0.0.2"));
    assert_eq!(v.get("/widget.js", &[]).await.unwrap().status, 200);
}

fn client_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: Vec<rustls::SupportedCipherSuite>,
    pin: String,
) -> Arc<rustls::ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::ring::default_provider()
    };
    palisade::tls::pinned_client_config_with(vec![pin], provider, versions).unwrap()
}

#[tokio::test]
async fn operator_tls_is_13_with_aes256_only() {
    use rustls::crypto::ring::cipher_suite as cs;
    let demo = Demo::start();
    let pin = demo.s("operator_pin");
    let mut o = demo.operator();
    o.tls = client_with(
        &[&rustls::version::TLS12],
        vec![
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ],
        pin.clone(),
    );
    assert!(
        o.get("/", &[]).await.unwrap_err().starts_with("tls"),
        "TLS 1.2 must fail"
    );
    o.tls = client_with(
        &[&rustls::version::TLS13],
        vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        pin.clone(),
    );
    assert!(
        o.get("/", &[]).await.unwrap_err().starts_with("tls"),
        "TLS 1.3 without AES-256 must fail"
    );
    o.tls = client_with(
        &[&rustls::version::TLS13],
        vec![cs::TLS13_AES_256_GCM_SHA384],
        pin.clone(),
    );
    assert_eq!(
        o.get("/", &[]).await.unwrap().status,
        200,
        "TLS 1.3 AES-256-GCM works"
    );
    // The visitor side keeps TLS 1.2 (policy minimum) with AEAD suites.
    let mut v = demo.visitor();
    v.tls = client_with(
        &[&rustls::version::TLS12],
        vec![cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
        demo.s("visitor_pin"),
    );
    assert_eq!(v.get("/widget.js", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn wrong_authentication_string_fails_exactly_like_wrong_password() {
    let demo = Demo::start();
    let o = demo.operator();
    let attempt = |user: String, pw: String, s: String| {
        let o = o.clone();
        async move {
            o.post_json(
                "/api/v1/operator/login",
                &json!({"username": user, "password": pw, "auth_string": s}),
                &[],
            )
            .await
            .unwrap()
        }
    };
    let (u, p, s) = (
        demo.s("operator_user"),
        demo.s("operator_password"),
        demo.s("auth_string"),
    );
    let bad_string = attempt(u.clone(), p.clone(), "not-the-string".into()).await;
    let bad_pw = attempt(u.clone(), "not-the-password".into(), s.clone()).await;
    let unknown = attempt("nobody".into(), p.clone(), s.clone()).await;
    for r in [&bad_string, &bad_pw, &unknown] {
        assert_eq!(r.status, 401);
        assert_eq!(r.body, bad_string.body);
        assert!(r.header("set-cookie").is_none());
        let mut names: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        let mut first: Vec<_> = bad_string
            .headers
            .keys()
            .map(|k| k.as_str().to_string())
            .collect();
        first.sort();
        assert_eq!(names, first);
    }
    assert_eq!(bad_string.json()["error"], "invalid credentials");
    // The right three secrets work.
    assert_eq!(attempt(u, p, s).await.status, 200);
    // Secrets never reach the log.
    let log = demo.log();
    assert!(!log.contains(&demo.s("operator_password")) && !log.contains(&demo.s("auth_string")));
    assert!(log.contains("reason=bad_auth_string") && log.contains("reason=bad_password"));
}

#[tokio::test]
async fn operator_requests_need_origin_session_and_ownership() {
    let demo = Demo::start();
    let (v, o) = (demo.visitor(), demo.operator());
    // No Origin: refused before the body is read.
    let r = o
        .request("POST", "/api/v1/operator/login", Some(b"{}".to_vec()), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let r = o
        .request(
            "POST",
            "/api/v1/operator/login",
            Some(b"{}".to_vec()),
            &[("origin", "https://evil.example".into())],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let cookie_v = demo.login(&o).await;
    assert!(cookie_v.starts_with("__Host-palisade_session="));
    let _online = demo.operator_online().await;
    let (chat, _token) = start_chat(&v, "Ida", "idor?").await;
    // Not yet accepted by this operator: looks like no chat at all.
    let r = o
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/messages"),
            &json!({"text": "x"}),
            &[cookie(&cookie_v)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = o
        .post_json(
            "/api/v1/operator/chats/999999/accept",
            &json!({}),
            &[cookie(&cookie_v)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    // Logout ends the session.
    let r = o
        .post_json("/api/v1/operator/logout", &json!({}), &[cookie(&cookie_v)])
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    let r = o
        .get("/api/v1/operator/me", &[cookie(&cookie_v)])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    // Visitor API without a token, or with a made-up one.
    assert_eq!(
        v.get("/api/v1/visitor/events", &[]).await.unwrap().status,
        401
    );
    assert_eq!(
        v.get("/api/v1/visitor/events", &[bearer("made-up")])
            .await
            .unwrap()
            .status,
        401
    );
}

#[tokio::test]
async fn responses_carry_strict_headers_and_limits_hold() {
    let demo = Demo::start();
    let (v, o) = (demo.visitor(), demo.operator());
    let chat = v.get("/chat", &[]).await.unwrap();
    let csp = chat.header("content-security-policy").unwrap();
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let demo_origin = demo.s("demo_page_url").trim_end_matches('/').to_string();
    assert!(
        csp.contains(&format!("frame-ancestors {demo_origin}")),
        "{csp}"
    );
    assert!(chat
        .header("strict-transport-security")
        .unwrap()
        .contains("max-age=63072000"));
    assert_eq!(chat.header("x-content-type-options").unwrap(), "nosniff");
    let console = o.get("/", &[]).await.unwrap();
    assert!(console
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let api = v.get("/api/v1/visitor/status", &[]).await.unwrap();
    assert_eq!(api.header("cache-control").unwrap(), "no-store");
    // Body too large → 413.
    let big = "x".repeat(20_000);
    let r = v
        .post_json(
            "/api/v1/visitor/chats",
            &json!({"name": "A", "question": big}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    // Header block too large → 431 (or the connection is closed).
    let r = v
        .get("/widget.js", &[("x-padding", "y".repeat(40_000))])
        .await;
    match r {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => assert!(e.starts_with("request"), "{e}"),
    }
    // Unknown JSON fields and bad input get a clear 400.
    let r = v
        .post_json(
            "/api/v1/visitor/chats",
            &json!({"name": "A", "question": "q", "admin": true}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("unknown field"));
    // A positional array would fill the same struct through serde: only objects pass.
    let r = v
        .post_json("/api/v1/visitor/chats", &json!(["A", null, null, "q"]), &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str().unwrap()),
        (400, "invalid JSON body: expected an object")
    );
    let r = v
        .post_json(
            "/api/v1/visitor/chats",
            &json!({"name": " ", "question": "q"}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"].as_str().unwrap()),
        (400, "name is required")
    );
    // The daemon still serves after all that.
    assert_eq!(v.get("/widget.js", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn database_holds_no_message_text_or_visitor_name_in_clear() {
    let demo = Demo::start();
    let v = demo.visitor();
    let _online = demo.operator_online().await;
    let name = "Zelda Plaintextcheck";
    let (_c, token) = start_chat(&v, name, "question-marker-7f3a").await;
    let msg = "message-marker-91bd2c";
    let r = v
        .post_json(
            "/api/v1/visitor/messages",
            &json!({"text": msg}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let bytes = database_bytes(std::path::Path::new(&demo.s("state_dir")));
    assert!(bytes.len() > 4096, "database files exist");
    for marker in [
        name,
        "Zelda",
        "question-marker-7f3a",
        msg,
        &token,
        &demo.s("operator_password"),
        &demo.s("auth_string"),
    ] {
        assert!(
            !contains(&bytes, marker),
            "{marker:?} found in clear in the database"
        );
    }
    // Permissions: state dir 0700, database 0600.
    use std::os::unix::fs::PermissionsExt;
    let state = std::path::PathBuf::from(demo.s("state_dir"));
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(state.join("palisade.db"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

/// Run a demo once to lay out a real appliance directory, then stop it, so tests can run
/// `check` and `serve` on its config.
fn laid_out_demo() -> Demo {
    let mut demo = Demo::start();
    demo.stop();
    demo
}

fn edit(path: &std::path::Path, f: impl FnOnce(String) -> String) {
    let s = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(s)).unwrap();
}

fn port_closed(addr: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err()
}

#[test]
fn pin_mismatch_refuses_to_start_and_opens_no_port() {
    let demo = laid_out_demo();
    let cfg = demo.config();
    let cfg_s = cfg.to_str().unwrap();
    let (code, out, err) = run(&["check", "--config", cfg_s], None);
    assert_eq!(code, 0, "a fresh demo layout checks clean: {out}{err}");
    let served = demo.s("visitor_pin");
    let tls = std::path::PathBuf::from(demo.s("policy_dir")).join("tls.toml");
    // Keep only the backup pin for the visitor side.
    edit(&tls, |s| s.replacen(&format!("\"{served}\", "), "", 1));
    let (code, _, err) = run(&["check", "--config", cfg_s], None);
    assert_ne!(code, 0);
    let line = err
        .lines()
        .find(|l| l.contains("not pinned"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&served), "names the actual pin: {line}");
    assert!(
        line.contains("allowed pins: sha256/"),
        "names the allowed pins: {line}"
    );
    assert_eq!(err.lines().count(), 1, "one line per problem: {err}");
    let r = Serve::start(&cfg, demo.addr("visitor_url"));
    let e = r.err().expect("serve must refuse");
    assert!(e.contains("not pinned"), "{e}");
    assert!(port_closed(demo.addr("visitor_url")) && port_closed(demo.addr("operator_url")));
}

#[test]
fn key_mismatch_and_readable_keys_refuse_to_start() {
    let demo = laid_out_demo();
    let cfg = demo.config();
    let certs = std::path::PathBuf::from(demo.s("config"))
        .parent()
        .unwrap()
        .join("certs");
    std::fs::copy(certs.join("operator.key"), certs.join("visitor.key")).unwrap();
    let (code, _, err) = run(&["check", "--config", cfg.to_str().unwrap()], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("visitor certificate") && err.contains("private key does not match"),
        "{err}"
    );
    let e = Serve::start(&cfg, demo.addr("visitor_url"))
        .err()
        .expect("serve must refuse");
    assert!(e.contains("does not match"), "{e}");
    assert!(port_closed(demo.addr("visitor_url")));

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        certs.join("operator.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--config", cfg.to_str().unwrap()], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("operator.key") && err.contains("accessible by group or others"),
        "{err}"
    );
    let policy = std::path::PathBuf::from(demo.s("policy_dir")).join("network.toml");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (_, _, err) = run(&["check", "--config", cfg.to_str().unwrap()], None);
    assert!(
        err.contains("network.toml") && err.contains("writable by group or others"),
        "{err}"
    );
}

#[test]
fn cli_pins_certificates_and_takes_passwords_only_from_stdin() {
    let demo = laid_out_demo();
    let pem = std::path::PathBuf::from(demo.s("config"))
        .parent()
        .unwrap()
        .join("certs/visitor.pem");
    let (code, out, _) = run(&["cert", "pin", pem.to_str().unwrap()], None);
    assert_eq!((code, out.trim()), (0, demo.s("visitor_pin").as_str()));
    let cfg = demo.config();
    let cfg_s = cfg.to_str().unwrap();
    let (code, out, err) = run(
        &[
            "operator",
            "add",
            "ann",
            "--config",
            cfg_s,
            "--display-name",
            "Ann",
        ],
        Some("a-long-enough-password\n"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(
        &["operator", "add", "bob", "--config", cfg_s],
        Some("short\n"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("at least 12 characters"), "{err}");
    let (_, out, _) = run(&["operator", "list", "--config", cfg_s], None);
    assert!(
        out.contains("ann\toperator\tenabled\tAnn") && out.contains("demo\tadmin"),
        "{out}"
    );
    // No argv flag takes a password.
    let (code, _, err) = run(
        &[
            "operator",
            "add",
            "eve",
            "--config",
            cfg_s,
            "--password",
            "x",
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("unexpected argument"), "{err}");
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let demo = laid_out_demo();
    let cfg = demo.config();
    let vaddr = demo.addr("visitor_url");
    let serve = Serve::start(&cfg, vaddr).expect("serve starts");
    let v = demo.visitor();
    let online = demo.operator_online().await;
    let mut chats = vec![];
    for i in 0..4 {
        chats.push(start_chat(&v, &format!("Durable {i}"), "kill -9?").await);
    }
    // Four senders, each sending in order and recording what was acknowledged.
    let acked = Arc::new(std::sync::Mutex::new(vec![Vec::<(i64, String)>::new(); 4]));
    let mut tasks = vec![];
    for (i, (_, token)) in chats.iter().enumerate() {
        let (v, token, acked) = (v.clone(), token.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..100_000 {
                let text = format!("chat{i}-msg{n}");
                match v
                    .post_json(
                        "/api/v1/visitor/messages",
                        &json!({"text": text}),
                        &[bearer(&token)],
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        acked.lock().unwrap()[i].push((r.json()["id"].as_i64().unwrap(), text))
                    }
                    _ => return,
                }
            }
        }));
    }
    // Kill once enough has been acknowledged (bounded wait).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().iter().map(Vec::len).sum::<usize>() < 200
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    serve.kill9();
    drop(online);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(
        total >= 200,
        "only {total} messages acknowledged before the kill"
    );

    let _serve = Serve::start(&cfg, vaddr).expect("restart after kill -9");
    for (i, (_, token)) in chats.iter().enumerate() {
        let tr = v
            .get("/api/v1/visitor/transcript", &[bearer(token)])
            .await
            .unwrap();
        assert_eq!(tr.status, 200, "{}", tr.text());
        let stored: Vec<(i64, String)> = tr.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "message")
            .map(|e| {
                (
                    e["id"].as_i64().unwrap(),
                    e["text"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // Every acknowledged message is there, once, in order; at most one more (in flight).
        assert!(
            stored.len() >= acked[i].len() && stored.len() <= acked[i].len() + 1,
            "chat {i}: {} stored, {} acked",
            stored.len(),
            acked[i].len()
        );
        assert_eq!(&stored[..acked[i].len()], &acked[i][..], "chat {i}");
        let mut texts: Vec<_> = stored.iter().map(|s| &s.1).collect();
        texts.dedup();
        assert_eq!(texts.len(), stored.len(), "no duplicates");
    }
    drop(_serve);
    let db =
        rusqlite::Connection::open(std::path::Path::new(&demo.s("state_dir")).join("palisade.db"))
            .unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}
