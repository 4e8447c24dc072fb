//! The everyday chat features through the real API: routing, transfer, supervision,
//! invitations, receipts, TOTP, the inbox, rating, downloads, search, stats, and the
//! terminal client.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(15);

fn edit_policy(demo: &Demo, file: &str, f: impl FnOnce(String) -> String) {
    let p = PathBuf::from(demo.s("policy_dir")).join(file);
    let s = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, f(s)).unwrap();
}

/// Add an operator through the CLI; returns its password.
fn add_operator(demo: &Demo, name: &str, display: &str, role: &str, departments: &str) -> String {
    let pw = format!("pw-{name}-0123456789");
    let cfg = demo.s("config");
    let (code, out, err) = run(
        &[
            "operator",
            "add",
            name,
            "--config",
            &cfg,
            "--display-name",
            display,
            "--role",
            role,
            "--departments",
            departments,
        ],
        Some(&format!("{pw}\n")),
    );
    assert_eq!(code, 0, "{out}{err}");
    pw
}

struct Op {
    client: Client,
    cookie: (&'static str, String),
    stream: EventStream,
}

async fn login_as(demo: &Demo, user: &str, pw: &str, totp: Option<&str>) -> Reply {
    let mut body = json!({"username": user, "password": pw, "auth_string": demo.s("auth_string")});
    if let Some(t) = totp {
        body["totp"] = json!(t);
    }
    demo.operator()
        .post_json("/api/v1/operator/login", &body, &[])
        .await
        .unwrap()
}

async fn online(demo: &Demo, user: &str, pw: &str) -> Op {
    let r = login_as(demo, user, pw, None).await;
    assert_eq!(r.status, 200, "{user}: {}", r.text());
    let cookie = cookie(r.header("set-cookie").unwrap().split(';').next().unwrap());
    let client = demo.operator();
    let mut stream = client
        .events("/api/v1/operator/events", std::slice::from_ref(&cookie))
        .await
        .unwrap();
    stream.until("snapshot", T).await.unwrap();
    Op {
        client,
        cookie,
        stream,
    }
}

impl Op {
    async fn post(&self, path: &str, body: Value) -> Reply {
        self.client
            .post_json(path, &body, std::slice::from_ref(&self.cookie))
            .await
            .unwrap()
    }
    async fn get(&self, path: &str) -> Reply {
        self.client
            .get(path, std::slice::from_ref(&self.cookie))
            .await
            .unwrap()
    }
    /// Wait for an event of `kind` about `chat`.
    async fn wait_chat(&mut self, kind: &str, chat: i64) -> Value {
        let deadline = std::time::Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let e = self
                .stream
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no {kind} for chat {chat}"));
            if e.event == kind && e.data["chat_id"] == chat {
                return e.data;
            }
        }
    }
}

async fn visitor_chat(v: &Client, body: Value) -> (i64, String) {
    let r = v
        .post_json("/api/v1/visitor/chats", &body, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    (
        r.json()["chat_id"].as_i64().unwrap(),
        r.json()["token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn auto_routing_by_department_transfer_with_note_and_logout_requeue() {
    let mut demo = Demo::start();
    demo.stop();
    edit_policy(&demo, "chat.toml", |s| {
        s.replace("routing = \"manual\"", "routing = \"auto\"")
    });
    let ann_pw = add_operator(&demo, "ann", "Ann Sales", "operator", "Sales");
    let bob_pw = add_operator(&demo, "bob", "Bob Support", "operator", "Support");
    let _serve = Serve::start(&demo.config(), demo.addr("visitor_url")).unwrap();
    let mut ann = online(&demo, "ann", &ann_pw).await;
    let mut bob = online(&demo, "bob", &bob_pw).await;
    let v = demo.visitor();

    // Routed by department, without anyone clicking accept.
    let (support_chat, token) = visitor_chat(
        &v,
        json!({"name": "Sam", "department": "Support", "question": "broken"}),
    )
    .await;
    let c = bob.wait_chat("chat", support_chat).await;
    assert_eq!(
        (c["state"].as_str(), c["department"].as_str()),
        (Some("active"), Some("Support"))
    );
    let mut vs = v
        .events("/api/v1/visitor/events", &[bearer(&token)])
        .await
        .unwrap();
    assert_eq!(
        vs.until("joined", T).await.unwrap().data["author"],
        "Bob Support"
    );
    let (sales_chat, _) = visitor_chat(
        &v,
        json!({"name": "Sue", "department": "Sales", "question": "price"}),
    )
    .await;
    assert_eq!(
        ann.wait_chat("chat", sales_chat).await["operator"],
        "Ann Sales"
    );

    // Transfer to a department with a note: requeued, routed to its operator; the visitor
    // sees the new operator; the note stays among operators.
    let r = bob
        .post(
            &format!("/api/v1/operator/chats/{support_chat}/transfer"),
            json!({"to_department": "Sales", "note": "wants a quote, note-7731"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    bob.wait_chat("chat_removed", support_chat).await;
    let moved = ann.wait_chat("chat", support_chat).await;
    assert!(moved["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "transfer" && e["text"].as_str().unwrap().contains("note-7731")));
    assert_eq!(
        vs.until("joined", T).await.unwrap().data["author"],
        "Ann Sales"
    );
    let tr = v
        .get("/api/v1/visitor/transcript", &[bearer(&token)])
        .await
        .unwrap()
        .text();
    assert!(
        !tr.contains("note-7731"),
        "the visitor never sees the transfer note"
    );
    // A transfer to an operator at their limit is refused (limit 4 for the test: fill bob).
    let r = ann
        .post(
            &format!("/api/v1/operator/chats/{support_chat}/transfer"),
            json!({"to_operator": "nobody"}),
        )
        .await;
    assert_eq!(r.status, 404);

    // Ann logs out: her chats go back to the queue and to whoever can take them.
    let r = ann.post("/api/v1/operator/logout", json!({})).await;
    assert_eq!(r.status, 204);
    let back = vs.until("requeued", T).await.unwrap();
    assert!(back.data["text"]
        .as_str()
        .unwrap()
        .contains("operator left"));
    let q = bob.get("/api/v1/operator/state").await.json();
    assert!(
        q["queue"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["department"] != "Support"),
        "{q}"
    );
}

#[tokio::test]
async fn supervisors_monitor_whisper_and_take_over_operators_cannot() {
    let mut demo = Demo::start();
    demo.stop();
    let ann_pw = add_operator(&demo, "ann", "Ann", "operator", "");
    let sue_pw = add_operator(&demo, "sue", "Sue Supervisor", "supervisor", "");
    let _serve = Serve::start(&demo.config(), demo.addr("visitor_url")).unwrap();
    let mut ann = online(&demo, "ann", &ann_pw).await;
    let mut sue = online(&demo, "sue", &sue_pw).await;
    let v = demo.visitor();
    let (chat, token) = visitor_chat(&v, json!({"name": "Vic", "question": "help"})).await;
    assert_eq!(
        ann.post(&format!("/api/v1/operator/chats/{chat}/accept"), json!({}))
            .await
            .status,
        200
    );
    let mut vs = v
        .events("/api/v1/visitor/events", &[bearer(&token)])
        .await
        .unwrap();

    // Operators may not supervise or manage canned responses.
    assert_eq!(
        ann.post(
            &format!("/api/v1/operator/chats/{chat}/monitor"),
            json!({"on": true})
        )
        .await
        .status,
        403
    );
    assert_eq!(ann.get("/api/v1/operator/live").await.status, 403);
    assert_eq!(
        ann.post(
            "/api/v1/operator/canned",
            json!({"shortcut": "hi", "title": "Hi", "text": "Hello!"})
        )
        .await
        .status,
        403
    );
    assert_eq!(
        sue.post(
            "/api/v1/operator/canned",
            json!({"shortcut": "hi", "title": "Hi", "text": "Hello!"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        ann.get("/api/v1/operator/canned").await.json()["canned"][0]["shortcut"],
        "hi"
    );

    // Monitor: the supervisor sees the conversation, read-only.
    let live = sue.get("/api/v1/operator/live").await.json();
    assert!(live["chats"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["chat_id"] == chat && c["operator"] == "Ann"));
    assert_eq!(
        sue.post(
            &format!("/api/v1/operator/chats/{chat}/monitor"),
            json!({"on": true})
        )
        .await
        .status,
        204
    );
    assert_eq!(sue.wait_chat("chat", chat).await["monitoring"], true);
    v.post_json(
        "/api/v1/visitor/messages",
        &json!({"text": "is anyone there?"}),
        &[bearer(&token)],
    )
    .await
    .unwrap();
    assert_eq!(
        sue.wait_chat("message", chat).await["text"],
        "is anyone there?"
    );
    assert_eq!(
        sue.post(
            &format!("/api/v1/operator/chats/{chat}/messages"),
            json!({"text": "x"})
        )
        .await
        .status,
        404,
        "monitoring is read-only"
    );

    // Whisper: the operator sees it, the visitor never does.
    let w = sue
        .post(
            &format!("/api/v1/operator/chats/{chat}/whisper"),
            json!({"text": "offer free shipping whisper-5521"}),
        )
        .await;
    assert_eq!(w.status, 200);
    assert!(ann.wait_chat("whisper", chat).await["text"]
        .as_str()
        .unwrap()
        .contains("whisper-5521"));
    ann.post(
        &format!("/api/v1/operator/chats/{chat}/messages"),
        json!({"text": "free shipping for you"}),
    )
    .await;
    let m = vs.until("message", T).await.unwrap();
    assert_eq!(m.data["text"], "is anyone there?");
    let m = vs.until("message", T).await.unwrap();
    assert_eq!(
        m.data["text"], "free shipping for you",
        "the whisper never reached the visitor stream"
    );
    let tr = v
        .get("/api/v1/visitor/transcript", &[bearer(&token)])
        .await
        .unwrap()
        .text();
    assert!(!tr.contains("whisper-5521"));

    // Take-over: the chat moves to the supervisor; the visitor sees the new name.
    assert_eq!(
        sue.post(
            &format!("/api/v1/operator/chats/{chat}/takeover"),
            json!({})
        )
        .await
        .status,
        200
    );
    ann.wait_chat("chat_removed", chat).await;
    assert_eq!(
        vs.until("joined", T).await.unwrap().data["author"],
        "Sue Supervisor"
    );
    assert_eq!(
        ann.post(
            &format!("/api/v1/operator/chats/{chat}/messages"),
            json!({"text": "x"})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        sue.post(
            &format!("/api/v1/operator/chats/{chat}/messages"),
            json!({"text": "I'm here"})
        )
        .await
        .status,
        200
    );
    // The visitor ends the chat: its operator hears of it at once.
    let end = v
        .post_json("/api/v1/visitor/end", &json!({}), &[bearer(&token)])
        .await
        .unwrap();
    assert_eq!(end.status, 200);
    assert_eq!(sue.wait_chat("ended", chat).await["from"], "visitor");
    assert_eq!(sue.wait_chat("chat", chat).await["state"], "ended");
    // A read receipt racing the end is accepted quietly by both sides.
    let read = sue
        .post(
            &format!("/api/v1/operator/chats/{chat}/read"),
            json!({"up_to": 1}),
        )
        .await;
    assert_eq!(read.status, 204);
    let read = v
        .post_json(
            "/api/v1/visitor/read",
            &json!({"up_to": 1}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    assert_eq!(read.status, 204);
    let db =
        rusqlite::Connection::open(std::path::Path::new(&demo.s("state_dir")).join("palisade.db"))
            .unwrap();
    let actions: Vec<String> = {
        let mut st = db
            .prepare("SELECT detail FROM audit WHERE event='supervisor_action' ORDER BY seq")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for a in ["action=monitor_start", "action=whisper", "action=takeover"] {
        assert!(
            actions
                .iter()
                .any(|d| d.contains(a) && d.contains("user=sue")),
            "{a} not audited: {actions:?}"
        );
    }
}

#[tokio::test]
async fn live_visitors_invitations_and_read_receipts() {
    let demo = Demo::start();
    let mut op = demo.operator_online().await;
    let v = demo.visitor();
    let hello = v
        .post_json("/api/v1/visitor/hello", &json!({"url": "https://shop.example/", "title": "Home", "referrer": "https://search.example/?q=widgets"}), &[("user-agent", "TestBrowser/1.0".into())])
        .await
        .unwrap();
    let vt = hello.json()["visitor_token"].as_str().unwrap().to_string();
    let r = v.post_json("/api/v1/visitor/pageview", &json!({"url": "https://shop.example/pricing", "title": "Pricing", "referrer": "https://shop.example/"}), &[bearer(&vt)]).await.unwrap();
    assert_eq!(r.status, 204);
    let list = op.stream.until("visitors", T).await.unwrap().data;
    let me = &list["visitors"][0];
    assert_eq!(
        (me["page_title"].as_str(), me["pages_viewed"].as_i64()),
        (Some("Pricing"), Some(2))
    );
    assert_eq!(me["referrer"], "https://search.example/?q=widgets");
    assert_eq!(
        me["ip"], "127.0.0.0/24",
        "visitor.toml keeps truncated addresses"
    );
    assert_eq!(me["chatting"], false);
    let vid = me["visitor_id"].as_str().unwrap().to_string();

    // Invite; the visitor declines; invite again; the visitor accepts and is chatting.
    let mut presence = v
        .events("/api/v1/visitor/presence", &[bearer(&vt)])
        .await
        .unwrap();
    let c = &op.cookie;
    let inv = op
        .client
        .post_json(
            &format!("/api/v1/operator/visitors/{vid}/invite"),
            &json!({"message": "Can I help?"}),
            &[cookie(c)],
        )
        .await
        .unwrap();
    assert_eq!(inv.status, 201);
    let got = presence.until("invite", T).await.unwrap().data;
    assert_eq!(
        (got["message"].as_str(), got["operator"].as_str()),
        (Some("Can I help?"), Some("Demo Operator"))
    );
    let r = v
        .post_json(
            "/api/v1/visitor/invite/decline",
            &json!({"invite_id": got["invite_id"]}),
            &[bearer(&vt)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    loop {
        let e = op.stream.until("invite", T).await.expect("invite update");
        if e.data["status"] == "declined" {
            break;
        }
    }
    let again = op
        .client
        .post_json(
            &format!("/api/v1/operator/visitors/{vid}/invite"),
            &json!({}),
            &[cookie(c)],
        )
        .await
        .unwrap();
    assert_eq!(again.status, 201);
    let got = presence.until("invite", T).await.unwrap().data;
    let r = v
        .post_json(
            "/api/v1/visitor/invite/accept",
            &json!({"invite_id": got["invite_id"]}),
            &[bearer(&vt)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let chat = r.json()["chat_id"].as_i64().unwrap();
    let token = r.json()["token"].as_str().unwrap().to_string();
    let accepted = loop {
        let e = op
            .stream
            .until("invite", T)
            .await
            .expect("invite update")
            .data;
        if e["status"] != "pending" {
            break e;
        }
    };
    assert_eq!(
        (accepted["status"].as_str(), accepted["chat_id"].as_i64()),
        (Some("accepted"), Some(chat))
    );
    let mut vs = v
        .events("/api/v1/visitor/events", &[bearer(&token)])
        .await
        .unwrap();
    assert_eq!(
        vs.until("joined", T).await.unwrap().data["author"],
        "Demo Operator"
    );

    // Receipts: delivered when the operator's console got it, read when they say so.
    let sent = v
        .post_json(
            "/api/v1/visitor/messages",
            &json!({"text": "hello?"}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    let id = sent.json()["id"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + T;
    loop {
        let e = vs
            .until(
                "receipt",
                deadline.saturating_duration_since(std::time::Instant::now()),
            )
            .await
            .expect("delivered receipt");
        if e.data["delivered_up_to"].as_i64() >= Some(id) {
            assert!(e.data["read_up_to"].as_i64() < Some(id));
            break;
        }
    }
    let r = op
        .client
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/read"),
            &json!({"up_to": id}),
            &[cookie(c)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    loop {
        let e = vs
            .until(
                "receipt",
                deadline.saturating_duration_since(std::time::Instant::now()),
            )
            .await
            .expect("read receipt");
        if e.data["read_up_to"].as_i64() >= Some(id) {
            break;
        }
    }
    // Chatting shows on the visitor list.
    let list = op
        .client
        .get("/api/v1/operator/visitors", &[cookie(c)])
        .await
        .unwrap()
        .json();
    assert_eq!(list["visitors"][0]["chatting"], true);
}

#[tokio::test]
async fn totp_enrolment_is_required_by_policy_and_codes_work_once() {
    let mut demo = Demo::start();
    demo.stop();
    edit_policy(&demo, "accounts.toml", |s| {
        s.replace(
            "totp_required_roles = []",
            "totp_required_roles = [\"supervisor\"]",
        )
    });
    let pw = add_operator(&demo, "sue", "Sue", "supervisor", "");
    let _serve = Serve::start(&demo.config(), demo.addr("visitor_url")).unwrap();
    let r = login_as(&demo, "sue", &pw, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (
            r.json()["totp_required"].as_bool(),
            r.json()["totp_enabled"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let c = cookie(r.header("set-cookie").unwrap().split(';').next().unwrap());
    let o = demo.operator();
    let gated = o
        .get("/api/v1/operator/stats", std::slice::from_ref(&c))
        .await
        .unwrap();
    assert_eq!(
        (gated.status, gated.json()["enrol"].as_bool()),
        (403, Some(true))
    );
    let en = o
        .post_json(
            "/api/v1/operator/totp/enroll",
            &json!({}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap()
        .json();
    assert!(en["qr_svg"].as_str().unwrap().contains("<svg"));
    assert!(en["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/Palisade:sue?secret="));
    let secret = palisade::operator::totp::base32_decode(en["secret"].as_str().unwrap()).unwrap();
    let now = palisade::storage::now_ms() / 1000;
    let code = |step: i64| {
        format!(
            "{:06}",
            palisade::operator::totp::hotp(&secret, step as u64, 6)
        )
    };
    let step = palisade::operator::totp::step_of(now);
    let bad = o
        .post_json(
            "/api/v1/operator/totp/confirm",
            &json!({"code": "000000"}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let ok = o
        .post_json(
            "/api/v1/operator/totp/confirm",
            &json!({"code": code(step)}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let recovery: Vec<String> = ok.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(
        o.get("/api/v1/operator/stats", std::slice::from_ref(&c))
            .await
            .unwrap()
            .status,
        200,
        "the gate lifts"
    );

    // Now every login needs the second factor; a failure looks like any other.
    let without = login_as(&demo, "sue", &pw, None).await;
    assert_eq!(
        (without.status, without.json()["error"].as_str()),
        (401, Some("invalid credentials"))
    );
    assert_eq!(
        login_as(&demo, "sue", &pw, Some("123456")).await.status,
        401
    );
    let next = code(step + 1);
    assert_eq!(login_as(&demo, "sue", &pw, Some(&next)).await.status, 200);
    assert_eq!(
        login_as(&demo, "sue", &pw, Some(&next)).await.status,
        401,
        "a code is used once"
    );
    assert_eq!(
        login_as(&demo, "sue", &pw, Some(&recovery[0].to_uppercase()))
            .await
            .status,
        200
    );
    assert_eq!(
        login_as(&demo, "sue", &pw, Some(&recovery[0])).await.status,
        401,
        "a recovery code is used once"
    );
    let db =
        rusqlite::Connection::open(std::path::Path::new(&demo.s("state_dir")).join("palisade.db"))
            .unwrap();
    let secret_b32 = en["secret"].as_str().unwrap();
    let bytes = database_bytes(std::path::Path::new(&demo.s("state_dir")));
    assert!(
        !contains(&bytes, secret_b32) && !bytes.windows(secret.len()).any(|w| w == &secret[..]),
        "the TOTP secret is sealed"
    );
    let enrolled: i64 = db
        .query_row(
            "SELECT count(*) FROM audit WHERE event='totp_changed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(enrolled >= 2);
}

#[tokio::test]
async fn offline_inbox_rating_wrapup_downloads_search_and_stats() {
    let demo = Demo::start();
    let v = demo.visitor();
    // Nobody online: the chat is refused with "leave a message".
    let r = v
        .post_json(
            "/api/v1/visitor/chats",
            &json!({"name": "Olly", "question": "hi"}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.json()["offline"].as_bool()), (409, Some(true)));
    let r = v
        .post_json(
            "/api/v1/visitor/offline-message",
            &json!({"name": "Olly", "email": "olly@example.com", "message": "please call back"}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let mut op = demo.operator_online().await;
    let c = cookie(&op.cookie);
    let inbox = op
        .client
        .get("/api/v1/operator/inbox", std::slice::from_ref(&c))
        .await
        .unwrap()
        .json();
    let m = &inbox["messages"][0];
    assert_eq!(
        (m["message"].as_str(), m["read"].as_bool()),
        (Some("please call back"), Some(false))
    );
    let r = op
        .client
        .post_json(
            &format!("/api/v1/operator/inbox/{}/read", m["id"]),
            &json!({}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);

    // A chat with a hostile name, ended, wrapped up, rated, downloaded, found.
    let hostile = "<script>alert(1)</script>Mallory";
    let (chat, token) = visitor_chat(
        &v,
        json!({"name": hostile, "question": "refund for order searchable-8812?"}),
    )
    .await;
    op.client
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/accept"),
            &json!({}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    v.post_json(
        "/api/v1/visitor/messages",
        &json!({"text": "it arrived <b>broken</b>"}),
        &[bearer(&token)],
    )
    .await
    .unwrap();
    op.client
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/messages"),
            &json!({"text": "sorry, refunding now"}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(
        v.post_json(
            "/api/v1/visitor/rating",
            &json!({"rating": 5}),
            &[bearer(&token)]
        )
        .await
        .unwrap()
        .status,
        409,
        "rated only after the end"
    );
    op.client
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/end"),
            &json!({}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    let bad = op
        .client
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/wrapup"),
            &json!({"category": "Made up"}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let w = op
        .client
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/wrapup"),
            &json!({"category": "Complaint", "note": "refunded"}),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap();
    assert_eq!(w.status, 204);
    let r = v
        .post_json(
            "/api/v1/visitor/rating",
            &json!({"rating": 4, "comment": "quick <i>help</i>"}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        v.post_json(
            "/api/v1/visitor/rating",
            &json!({"rating": 1}),
            &[bearer(&token)]
        )
        .await
        .unwrap()
        .status,
        409,
        "rated once"
    );
    let tr = op
        .client
        .get(
            &format!("/api/v1/operator/chats/{chat}/transcript"),
            std::slice::from_ref(&c),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(
        (
            tr["wrapup"]["category"].as_str(),
            tr["rating"]["rating"].as_i64()
        ),
        (Some("Complaint"), Some(4))
    );
    assert_eq!(tr["rating"]["comment"], "quick <i>help</i>");

    let html = v
        .get("/api/v1/visitor/transcript.html", &[bearer(&token)])
        .await
        .unwrap();
    assert!(html
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    assert!(html
        .header("content-security-policy")
        .unwrap()
        .starts_with("default-src 'none'"));
    let body = html.text();
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;Mallory") && !body.contains("<script"),
        "{body}"
    );
    assert!(
        body.contains("it arrived &lt;b&gt;broken&lt;/b&gt;")
            && !body.contains("<style")
            && !body.contains(" on")
    );
    let txt = v
        .get("/api/v1/visitor/transcript.txt", &[bearer(&token)])
        .await
        .unwrap();
    assert_eq!(
        txt.header("content-type").unwrap(),
        "text/plain; charset=utf-8"
    );
    assert!(
        txt.text().contains("sorry, refunding now") && !txt.text().contains("refunded"),
        "the wrap-up note is not for the visitor"
    );

    let found = op
        .client
        .get(
            "/api/v1/operator/search?q=SEARCHABLE-8812",
            std::slice::from_ref(&c),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(found["results"][0]["chat_id"], chat);
    assert_eq!(found["results"][0]["name"], hostile);
    let none = op
        .client
        .get(
            "/api/v1/operator/search?q=searchable-8812&from=2000-01-01&to=2000-01-02",
            std::slice::from_ref(&c),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(none["results"], json!([]));
    let by_name = op
        .client
        .get(
            "/api/v1/operator/search?name=mallory&operator=demo",
            std::slice::from_ref(&c),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(by_name["results"].as_array().unwrap().len(), 1);
    assert!(demo.log().contains("action=search"), "searches are audited");

    let stats = op
        .client
        .get("/api/v1/operator/stats", std::slice::from_ref(&c))
        .await
        .unwrap()
        .json();
    assert_eq!(
        (
            stats["chats_today"].as_i64(),
            stats["average_rating"].as_f64(),
            stats["chats_waiting"].as_i64()
        ),
        (Some(1), Some(4.0), Some(0))
    );
    // Stats also arrive live on the stream.
    let live = op.stream.until("stats", T).await.unwrap().data;
    assert_eq!(live["chats_today"], 1);
}

#[tokio::test]
async fn queue_positions_update_live_and_two_accepts_race_to_one_winner() {
    let mut demo = Demo::start();
    demo.stop();
    let ann_pw = add_operator(&demo, "ann", "Ann", "operator", "");
    let _serve = Serve::start(&demo.config(), demo.addr("visitor_url")).unwrap();
    let demo_op = online(&demo, "demo", &demo.s("operator_password")).await;
    let ann = online(&demo, "ann", &ann_pw).await;
    let v = demo.visitor();
    let mut chats = vec![];
    for n in 0..3 {
        chats.push(visitor_chat(&v, json!({"name": format!("Q{n}"), "question": "?"})).await);
    }
    let mut third = v
        .events("/api/v1/visitor/events", &[bearer(&chats[2].1)])
        .await
        .unwrap();
    assert_eq!(third.until("queue", T).await.unwrap().data["position"], 3);
    let path = format!("/api/v1/operator/chats/{}/accept", chats[0].0);
    let (a, b) = tokio::join!(demo_op.post(&path, json!({})), ann.post(&path, json!({})));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "exactly one operator gets the chat");
    assert_eq!(third.until("queue", T).await.unwrap().data["position"], 2);
    assert_eq!(
        v.post_json("/api/v1/visitor/end", &json!({}), &[bearer(&chats[1].1)])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        third.until("queue", T).await.unwrap().data["position"],
        1,
        "a visitor leaving the queue moves the others up"
    );
}

#[tokio::test]
async fn terminal_client_chats_through_the_operator_api() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let demo = Demo::start();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "op",
            "--url",
            &demo.s("operator_url"),
            "--pin",
            &demo.s("operator_pin"),
            "--user",
            "demo",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(
            format!(
                "{}\n{}\n",
                demo.s("operator_password"),
                demo.s("auth_string")
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    macro_rules! wait_for {
        ($needle:expr) => {
            wait_line(&mut out, &mut seen, $needle).await
        };
    }
    wait_for!("logged in as Demo Operator (admin)");
    wait_for!("[queue] 0 waiting");
    let v = demo.visitor();
    let (chat, token) = visitor_chat(
        &v,
        json!({"name": "Tess", "question": "from the terminal?"}),
    )
    .await;
    wait_for!(&format!("[queue] #{chat} Tess: from the terminal?"));
    stdin
        .write_all(format!("/accept {chat}\n").as_bytes())
        .await
        .unwrap();
    wait_for!(&format!("[#{chat}] accepted"));
    v.post_json(
        "/api/v1/visitor/messages",
        &json!({"text": "hello terminal"}),
        &[bearer(&token)],
    )
    .await
    .unwrap();
    wait_for!(&format!("[#{chat}] Tess: hello terminal"));
    let mut vs = v
        .events("/api/v1/visitor/events", &[bearer(&token)])
        .await
        .unwrap();
    stdin
        .write_all(b"hello from the terminal client\n")
        .await
        .unwrap();
    let m = vs.until("message", T).await.unwrap();
    let m = if m.data["text"] == "hello terminal" {
        vs.until("message", T).await.unwrap()
    } else {
        m
    };
    assert_eq!(
        (m.data["text"].as_str(), m.data["author"].as_str()),
        (
            Some("hello from the terminal client"),
            Some("Demo Operator")
        )
    );
    stdin.write_all(b"/end\n").await.unwrap();
    assert_eq!(vs.until("ended", T).await.unwrap().data["from"], "operator");
    stdin.write_all(b"/quit\n").await.unwrap();
    wait_for!("logged out");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    // A wrong pin never reaches login.
    let (code, _, err) = run(
        &[
            "op",
            "--url",
            &demo.s("operator_url"),
            "--pin",
            &demo.s("visitor_pin"),
            "--user",
            "demo",
        ],
        Some("x\ny\n"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("TLS") && err.contains("pin"), "{err}");
}

async fn wait_line(
    out: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    needle: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, out.next_line()).await {
            Ok(Ok(Some(line))) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            _ => panic!("{needle:?} never printed; saw {seen:?}"),
        }
    }
}
