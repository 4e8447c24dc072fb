//! The operator listener's routes: the console and the operator API.
//!
//! Every API route except login takes an [`AuthenticatedOperator`] (from the session
//! cookie) and every chat route an [`OperatorChat`] (the chat is assigned to that operator),
//! so a handler cannot act on a chat without both checks. Foreign and unknown chat ids get
//! the same 404.
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod auth;

use crate::app::App;
use crate::audit::ids;
use crate::core::{ChatId, OperatorChat, Refusal};
use crate::http::{self, content, error, json, no_content, read_json, secure_headers, Resp};
use crate::hub::{OperatorEvent, VisitorEvent};
use crate::secret::Secret;
use crate::storage::{EventKind, Sender};
use allowlist::AllowedPeer;
use auth::{AccountView, AuthenticatedOperator, LoginOutcome};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub const CONSOLE_HTML: &str = include_str!("../../assets/console.html");
pub const CONSOLE_JS: &str = include_str!("../../assets/console.js");
pub const CONSOLE_CSS: &str = include_str!("../../assets/console.css");

pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub const SESSION_COOKIE: &str = "__Host-palisade_session";

pub async fn handle(app: Arc<App>, peer: AllowedPeer, req: Request<Incoming>) -> Resp {
    let mut resp = route(app, peer, req).await;
    secure_headers(&mut resp, CONSOLE_CSP);
    resp
}

/// State-changing requests must come from the console's own origin.
fn origin_ok(req: &Request<Incoming>) -> bool {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(o), Some(h)) => o.strip_prefix("https://") == Some(h),
        _ => false,
    }
}

fn session_token(req: &Request<Incoming>) -> Option<String> {
    for v in req.headers().get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(';') {
            if let Some(t) = part
                .trim()
                .strip_prefix(SESSION_COOKIE)
                .and_then(|r| r.strip_prefix('='))
            {
                if !t.is_empty() && t.len() <= 128 {
                    return Some(t.to_string());
                }
            }
        }
    }
    None
}

async fn route(app: Arc<App>, peer: AllowedPeer, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (&method, path.as_str()) {
        (&Method::GET, "/") | (&Method::GET, "/index.html") => {
            return content(StatusCode::OK, "text/html; charset=utf-8", CONSOLE_HTML)
        }
        (&Method::GET, "/assets/console.js") => {
            return content(StatusCode::OK, "text/javascript; charset=utf-8", CONSOLE_JS)
        }
        (&Method::GET, "/assets/console.css") => {
            return content(StatusCode::OK, "text/css; charset=utf-8", CONSOLE_CSS)
        }
        _ => {}
    }
    if !path.starts_with("/api/v1/operator/") {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    if method == Method::POST && !origin_ok(&req) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    if (&method, path.as_str()) == (&Method::POST, "/api/v1/operator/login") {
        return login(&app, peer, req).await;
    }
    let is_stream = path == "/api/v1/operator/events";
    let Some(op) = session_token(&req).and_then(|t| app.auth.session(&t, !is_stream)) else {
        return error(StatusCode::UNAUTHORIZED, "not logged in");
    };
    let Some(seg) = http::segments(&path, "/api/v1/operator/") else {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    match (&method, seg.as_slice()) {
        (&Method::POST, ["logout"]) => logout(&app, op).await,
        (&Method::GET, ["me"]) => json(StatusCode::OK, &me_json(&op)),
        (&Method::GET, ["state"]) => json(StatusCode::OK, &snapshot(&app, &op).await),
        (&Method::GET, ["events"]) => events(&app, op),
        (_, ["chats", id, action]) => {
            let Some(chat) = id.parse::<i64>().ok().filter(|n| *n > 0).map(ChatId) else {
                return error(StatusCode::NOT_FOUND, "no such chat");
            };
            match (&method, *action) {
                (&Method::POST, "accept") => accept(&app, &op, chat).await,
                (&Method::GET, "transcript") => transcript(&app, &op, chat).await,
                (m, a) => {
                    let oc = match app
                        .core
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .operator_chat(op.id, chat)
                    {
                        Ok(oc) => oc,
                        Err(r) => return refusal(r),
                    };
                    match (m, a) {
                        (&Method::POST, "messages") => send_message(&app, &op, oc, req).await,
                        (&Method::POST, "typing") => typing(&app, oc, req).await,
                        (&Method::POST, "end") => {
                            end_chat_common(&app, oc.id(), Sender::Operator).await
                        }
                        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
                    }
                }
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

fn refusal(r: Refusal) -> Resp {
    let status = match r {
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::AlreadyTaken | Refusal::Ended | Refusal::AtCapacity | Refusal::NotYetAccepted => {
            StatusCode::CONFLICT
        }
    };
    error(status, r.message())
}

fn me_json(op: &AuthenticatedOperator) -> serde_json::Value {
    serde_json::json!({ "username": op.username, "display_name": op.display_name })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: Secret,
    auth_string: Secret,
}

async fn login(app: &Arc<App>, peer: AllowedPeer, req: Request<Incoming>) -> Resp {
    let body: LoginBody = match read_json(req, 4096).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let username = body.username.trim().to_string();
    let invalid = || error(StatusCode::UNAUTHORIZED, "invalid credentials");
    if username.is_empty() || username.len() > 64 || username.chars().any(char::is_control) {
        return invalid();
    }
    let account = match app.storage.operator_by_name(username.clone()).await {
        Ok(a) => a.map(|r| AccountView {
            id: r.id,
            username: r.username,
            display_name: r.display_name,
            password_hash: r.password_hash,
            disabled: r.disabled,
        }),
        Err(e) => {
            tracing::error!(error = %e, "operator lookup failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "login is unavailable; try again",
            );
        }
    };
    let source = peer.ip();
    match app
        .auth
        .login(&username, body.password, body.auth_string, account, source)
        .await
    {
        LoginOutcome::Ok { operator, token } => {
            app.audit
                .record(
                    ids::LOGIN_OK,
                    "login_ok",
                    format!("user={} source={source}", operator.username),
                )
                .await;
            let mut r = json(StatusCode::OK, &me_json(&operator));
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                token.expose(),
                app.auth.cookie_max_age()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        LoginOutcome::Invalid { reason } => {
            app.audit
                .record(
                    ids::LOGIN_FAILED,
                    "login_failed",
                    format!(
                        "user={} source={source} reason={reason}",
                        sanitize(&username)
                    ),
                )
                .await;
            invalid()
        }
        LoginOutcome::Throttled { retry_after } => {
            app.audit
                .record(
                    ids::LOGIN_THROTTLED,
                    "login_throttled",
                    format!(
                        "user={} source={source} retry_after_s={}",
                        sanitize(&username),
                        retry_after.as_secs()
                    ),
                )
                .await;
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many attempts; try again later",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        LoginOutcome::Busy => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many logins at once; try again shortly",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// A username as logged: printable, bounded.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
        .replace(' ', "_")
}

async fn logout(app: &Arc<App>, op: AuthenticatedOperator) -> Resp {
    app.auth.end_session(&op.session_hash());
    app.hub.to_operators(OperatorEvent::SessionsEnded {
        operator: op.id,
        session: Some(op.session_hash()),
    });
    app.audit
        .record(ids::LOGOUT, "logout", format!("user={}", op.username))
        .await;
    let mut r = no_content();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-palisade_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// Tell every queued visitor their position and every operator the new queue.
pub fn queue_changed(app: &App) {
    let queue = app.core.lock().unwrap_or_else(|p| p.into_inner()).queue();
    for (i, (chat, _)) in queue.iter().enumerate() {
        app.hub.to_chat(*chat, VisitorEvent::QueuePosition(i + 1));
    }
    app.hub.to_operators(OperatorEvent::QueueChanged);
}

async fn queue_json(app: &App) -> serde_json::Value {
    let queue = app.core.lock().unwrap_or_else(|p| p.into_inner()).queue();
    let mut out = Vec::with_capacity(queue.len());
    for (chat, since) in queue {
        if let Ok(Some(c)) = app.storage.chat(chat).await {
            out.push(serde_json::json!({
                "chat_id": chat,
                "name": c.visitor.name,
                "question": c.visitor.question,
                "waiting_since": since,
            }));
        }
    }
    serde_json::Value::Array(out)
}

async fn chat_json(app: &App, chat: ChatId) -> Option<serde_json::Value> {
    let c = app.storage.chat(chat).await.ok()??;
    let events = app.storage.events_after(chat, 0).await.ok()?;
    let name = c.visitor.name.clone();
    Some(serde_json::json!({
        "chat_id": chat,
        "name": c.visitor.name,
        "email": c.visitor.email,
        "question": c.visitor.question,
        "state": if c.state == "ended" { "ended" } else { "active" },
        "events": events.iter().map(|e| crate::visitor::event_json(e, &name)).collect::<Vec<_>>(),
    }))
}

async fn snapshot(app: &App, op: &AuthenticatedOperator) -> serde_json::Value {
    let mine = app
        .core
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .chats_of(op.id);
    let mut chats = Vec::new();
    for c in mine {
        if let Some(j) = chat_json(app, c).await {
            chats.push(j);
        }
    }
    serde_json::json!({ "me": me_json(op), "queue": queue_json(app).await, "chats": chats })
}

/// Marks the operator online while at least one of their event streams is open.
struct Presence {
    app: Arc<App>,
    op: crate::core::OperatorId,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.app
            .core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .session_closed(self.op);
    }
}

fn events(app: &Arc<App>, op: AuthenticatedOperator) -> Resp {
    let (tx, rx) = mpsc::channel(64);
    let sub = app.hub.subscribe_operator(op.id);
    tokio::spawn(operator_stream(app.clone(), op, sub, tx));
    http::sse_response(rx)
}

async fn operator_stream(
    app: Arc<App>,
    op: AuthenticatedOperator,
    sub: crate::hub::OperatorSubscription,
    tx: mpsc::Sender<bytes::Bytes>,
) {
    let crate::hub::OperatorSubscription { mut all, mut mine } = sub;
    app.core
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .session_opened(op.id);
    let _presence = Presence {
        app: app.clone(),
        op: op.id,
    };
    let send = |event: &str, v: serde_json::Value| http::sse_frame(event, None, &v.to_string());
    if tx
        .send(send("snapshot", snapshot(&app, &op).await))
        .await
        .is_err()
    {
        return;
    }
    let mut keepalive = tokio::time::interval(Duration::from_secs(15));
    keepalive.tick().await;
    // Visitor names of this stream's chats: read from the database once per chat, not
    // once per message (a chat's visitor data does not change while it is live).
    let mut names: std::collections::HashMap<ChatId, String> = std::collections::HashMap::new();
    loop {
        let ev = tokio::select! {
            ev = mine.recv() => ev,
            ev = all.recv() => ev,
            _ = keepalive.tick() => {
                if !app.auth.session_alive(&op.session_hash()) { return; }
                if tx.send(bytes::Bytes::from_static(b": keep-alive\n\n")).await.is_err() { return; }
                continue;
            }
            _ = tx.closed() => return,
        };
        let frame = match ev {
            Ok(OperatorEvent::QueueChanged) => send(
                "queue",
                serde_json::json!({ "queue": queue_json(&app).await }),
            ),
            Ok(OperatorEvent::Stored { operator, event }) if operator == op.id => {
                let name = if event.from != Sender::Visitor {
                    String::new()
                } else if let Some(n) = names.get(&event.chat_id) {
                    n.clone()
                } else {
                    let n = app
                        .storage
                        .chat(event.chat_id)
                        .await
                        .ok()
                        .flatten()
                        .map(|c| c.visitor.name);
                    if let Some(n) = &n {
                        if names.len() >= 1024 {
                            names.clear();
                        }
                        names.insert(event.chat_id, n.clone());
                    }
                    n.unwrap_or_default()
                };
                http::sse_frame(
                    event.kind.as_str(),
                    Some(event.id),
                    &crate::visitor::event_json(&event, &name).to_string(),
                )
            }
            Ok(OperatorEvent::Typing {
                operator,
                chat,
                typing,
            }) if operator == op.id => send(
                "typing",
                serde_json::json!({ "chat_id": chat, "from": "visitor", "typing": typing }),
            ),
            Ok(OperatorEvent::ChatChanged { operator, chat }) if operator == op.id => {
                match chat_json(&app, chat).await {
                    Some(j) => send("chat", j),
                    None => continue,
                }
            }
            Ok(OperatorEvent::SessionsEnded { operator, session }) if operator == op.id => {
                if session.is_none() || session == Some(op.session_hash()) {
                    return;
                }
                continue;
            }
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                send("snapshot", snapshot(&app, &op).await)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

async fn accept(app: &Arc<App>, op: &AuthenticatedOperator, chat: ChatId) -> Resp {
    let decided = app
        .core
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .accept(op.id, chat);
    let oc = match decided {
        Ok(oc) => oc,
        Err(r) => return refusal(r),
    };
    let app2 = app.clone();
    let operator = op.id;
    let res = app
        .storage
        .append_event(
            chat,
            EventKind::Joined,
            Sender::Operator,
            Some(op.id),
            op.display_name.clone(),
            String::new(),
            Some("active"),
            move |ev| {
                app2.core
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .confirm(chat);
                app2.hub.publish(ev, None);
                app2.hub
                    .to_operators(OperatorEvent::ChatChanged { operator, chat });
                queue_changed(&app2);
            },
        )
        .await;
    match res {
        Ok(_) => json(StatusCode::OK, &serde_json::json!({ "chat_id": oc.id() })),
        Err(e) => {
            app.core
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .revert(chat);
            tracing::error!(error = %e, "accept not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the chat could not be accepted; try again",
            )
        }
    }
}

async fn send_message(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    oc: OperatorChat,
    req: Request<Incoming>,
) -> Resp {
    let policy = app.policy();
    let v = &policy.visitor;
    let body: crate::visitor::MessageBody = match read_json(req, v.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut text = body.text.trim_end().to_string();
    if text.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "the message is empty");
    }
    if v.mask_card_numbers {
        text = crate::core::redact::mask_card_numbers(&text);
    }
    if text.chars().count() > v.max_message_chars {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the message is too long");
    }
    let app2 = app.clone();
    let operator = oc.operator();
    let res = app
        .storage
        .append_event(
            oc.id(),
            EventKind::Message,
            Sender::Operator,
            Some(operator),
            op.display_name.clone(),
            text,
            None,
            move |ev| app2.hub.publish(ev, Some(operator)),
        )
        .await;
    match res {
        Ok(ev) => json(
            StatusCode::OK,
            &serde_json::json!({ "id": ev.id, "ts": ev.ts }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "operator message not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the message was not saved; please send it again",
            )
        }
    }
}

async fn typing(app: &Arc<App>, oc: OperatorChat, req: Request<Incoming>) -> Resp {
    let body: crate::visitor::TypingBody = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    app.hub
        .to_chat(oc.id(), VisitorEvent::OperatorTyping(body.typing));
    no_content()
}

/// End a chat from either side: decided by the core, stored, then announced.
pub async fn end_chat_common(app: &Arc<App>, chat: ChatId, from: Sender) -> Resp {
    let decided = app.core.lock().unwrap_or_else(|p| p.into_inner()).end(chat);
    let operator = match decided {
        Ok(op) => op,
        Err(r) => return refusal(r),
    };
    let app2 = app.clone();
    let res = app
        .storage
        .append_event(
            chat,
            EventKind::Ended,
            from,
            operator,
            String::new(),
            String::new(),
            Some("ended"),
            move |ev| {
                app2.core
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .confirm(chat);
                app2.hub.publish(ev, operator);
                if let Some(operator) = operator {
                    app2.hub
                        .to_operators(OperatorEvent::ChatChanged { operator, chat });
                }
                queue_changed(&app2);
                app2.hub.forget_chat(chat);
            },
        )
        .await;
    match res {
        Ok(ev) => json(StatusCode::OK, &serde_json::json!({ "id": ev.id })),
        Err(e) => {
            app.core
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .revert(chat);
            tracing::error!(error = %e, "end of chat not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the chat could not be ended; try again",
            )
        }
    }
}

async fn transcript(app: &Arc<App>, op: &AuthenticatedOperator, chat: ChatId) -> Resp {
    // Live chats assigned to this operator, or ended chats this operator handled.
    let allowed = match app.storage.chat(chat).await {
        Ok(Some(c)) => c.operator_id == Some(op.id),
        _ => false,
    };
    if !allowed {
        return error(StatusCode::NOT_FOUND, "no such chat");
    }
    app.audit
        .record(
            ids::TRANSCRIPT_ACCESS,
            "transcript_access",
            format!("user={} chat={} action=view", op.username, chat.0),
        )
        .await;
    match chat_json(app, chat).await {
        Some(j) => json(StatusCode::OK, &j),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the transcript could not be read",
        ),
    }
}
