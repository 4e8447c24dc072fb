//! The visitor listener's routes: the loader, the chat page, and the visitor API.
//!
//! A visitor is identified only by the bearer token returned when their chat started; the
//! token names exactly one chat, so no route takes a chat id from a visitor.
#![forbid(unsafe_code)]

use crate::app::App;
use crate::core::VisitorChat;
use crate::http::{self, content, error, json, no_content, read_json, secure_headers, Resp};
use crate::hub::VisitorEvent;
use crate::operator::auth::{new_token, token_hash};
use crate::storage::{EventKind, Sender, StoredEvent, VisitorInfo};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub const WIDGET_JS: &str = include_str!("../../assets/widget.js");
pub const CHAT_HTML: &str = include_str!("../../assets/chat.html");
pub const CHAT_JS: &str = include_str!("../../assets/chat.js");
pub const CHAT_CSS: &str = include_str!("../../assets/chat.css");

/// CSP of the chat page; `frame-ancestors` comes from `visitor.toml`.
pub fn chat_csp(frame_ancestors: &[String]) -> String {
    let fa = if frame_ancestors.is_empty() {
        "'none'".to_string()
    } else {
        frame_ancestors.join(" ")
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors {fa}"
    )
}

/// CSP of everything else on the visitor listener (scripts, styles, API answers).
pub const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub async fn handle(app: Arc<App>, source: IpAddr, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let mut csp = API_CSP.to_string();
    let mut resp = match (&method, path.as_str()) {
        (&Method::GET, "/widget.js") => {
            let mut r = content(StatusCode::OK, "text/javascript; charset=utf-8", WIDGET_JS);
            // The customer's pages (another origin) load this script.
            r.headers_mut().insert(
                "cross-origin-resource-policy",
                hyper::header::HeaderValue::from_static("cross-origin"),
            );
            r
        }
        (&Method::GET, "/chat") => {
            csp = chat_csp(&app.policy.visitor.frame_ancestors);
            content(StatusCode::OK, "text/html; charset=utf-8", CHAT_HTML)
        }
        (&Method::GET, "/assets/chat.js") => {
            content(StatusCode::OK, "text/javascript; charset=utf-8", CHAT_JS)
        }
        (&Method::GET, "/assets/chat.css") => {
            content(StatusCode::OK, "text/css; charset=utf-8", CHAT_CSS)
        }
        (&Method::GET, "/api/v1/visitor/status") => status(&app),
        (&Method::POST, "/api/v1/visitor/chats") => start_chat(&app, source, req).await,
        (_, p) if p.starts_with("/api/v1/visitor/") => match authorise(&app, &req) {
            Err(r) => r,
            Ok(chat) => match (&method, p) {
                (&Method::POST, "/api/v1/visitor/messages") => send_message(&app, chat, req).await,
                (&Method::POST, "/api/v1/visitor/typing") => typing(&app, chat, req).await,
                (&Method::POST, "/api/v1/visitor/end") => end_chat(&app, chat).await,
                (&Method::GET, "/api/v1/visitor/events") => events(&app, chat, &req).await,
                (&Method::GET, "/api/v1/visitor/transcript") => transcript(&app, chat).await,
                _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
            },
        },
        (&Method::GET, "/") => error(StatusCode::NOT_FOUND, "nothing here; see /widget.js"),
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    };
    secure_headers(&mut resp, &csp);
    resp
}

fn status(app: &App) -> Resp {
    let online = app
        .core
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .anyone_online();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "online": online,
            "fields": [
                {"name": "name", "label": "Your name", "required": true},
                {"name": "email", "label": "Email (optional)", "required": false},
                {"name": "question", "label": "How can we help?", "required": true},
            ],
        }),
    )
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 128)
}

fn authorise(app: &App, req: &Request<Incoming>) -> Result<VisitorChat, Resp> {
    let token =
        bearer(req).ok_or_else(|| error(StatusCode::UNAUTHORIZED, "missing visitor token"))?;
    let hash = token_hash(token);
    app.core
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .visitor_chat(&hash)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unknown or ended chat"))
}

/// The pre-chat form, `POST /api/v1/visitor/chats` (public for the fuzz targets).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartChat {
    pub name: String,
    #[serde(default)]
    pub email: String,
    pub question: String,
}

impl std::fmt::Debug for StartChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartChat([personal data redacted])")
    }
}

/// Trim and bound a visitor-supplied field; control characters are refused.
pub fn clean_field(
    v: &str,
    max_chars: usize,
    what: &str,
    required: bool,
) -> Result<String, String> {
    let t = v.trim();
    if required && t.is_empty() {
        return Err(format!("{what} is required"));
    }
    if t.chars().count() > max_chars {
        return Err(format!("{what} is longer than {max_chars} characters"));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(format!("{what} contains control characters"));
    }
    Ok(t.to_string())
}

async fn start_chat(app: &Arc<App>, source: IpAddr, req: Request<Incoming>) -> Resp {
    let v = &app.policy.visitor;
    let body: StartChat = match read_json(req, v.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let fields = (
        clean_field(&body.name, v.max_field_chars.min(200), "name", true),
        clean_field(&body.email, v.max_field_chars.min(254), "email", false),
        clean_field(&body.question, v.max_field_chars, "question", true),
    );
    let (name, email, question) = match fields {
        (Ok(n), Ok(e), Ok(q)) => (n, e, q),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error(StatusCode::BAD_REQUEST, &e)
        }
    };
    if !email.is_empty() && (!email.contains('@') || email.contains(char::is_whitespace)) {
        return error(StatusCode::BAD_REQUEST, "email is not an address");
    }
    if !app
        .limits
        .chat_start_allowed(source, v.chats_per_hour_per_source)
    {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many chats from this address; try again later",
        );
    }
    let token = new_token();
    let hash = token_hash(token.expose());
    let app2 = app.clone();
    let stored = app
        .storage
        .create_chat(
            hash.to_vec(),
            VisitorInfo {
                name,
                email,
                question,
            },
            move |ev: &StoredEvent| {
                // Runs right after commit: the chat joins the queue, operators hear of it.
                let mut core = app2.core.lock().unwrap_or_else(|p| p.into_inner());
                core.open_queued(ev.chat_id, hash, ev.ts);
                drop(core);
                crate::operator::queue_changed(&app2);
            },
        )
        .await;
    match stored {
        Ok(ev) => json(
            StatusCode::CREATED,
            &serde_json::json!({ "chat_id": ev.chat_id, "token": token.expose() }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "chat not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the chat could not be saved; please try again",
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    pub text: String,
}

impl std::fmt::Debug for MessageBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MessageBody([{} chars redacted])",
            self.text.chars().count()
        )
    }
}

async fn send_message(app: &Arc<App>, chat: VisitorChat, req: Request<Incoming>) -> Resp {
    let v = &app.policy.visitor;
    let body: MessageBody = match read_json(req, v.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = body.text.trim_end().to_string();
    if text.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "the message is empty");
    }
    if text.chars().count() > v.max_message_chars {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the message is too long");
    }
    if !app
        .limits
        .message_allowed(chat.id().0, v.messages_per_minute)
    {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many messages; slow down",
        );
    }
    let operator = app
        .core
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .assigned(chat.id());
    let hub_app = app.clone();
    let res = app
        .storage
        .append_event(
            chat.id(),
            EventKind::Message,
            Sender::Visitor,
            None,
            String::new(),
            text,
            None,
            move |ev| hub_app.hub.publish(ev, operator),
        )
        .await;
    match res {
        Ok(ev) => json(
            StatusCode::OK,
            &serde_json::json!({ "id": ev.id, "ts": ev.ts }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "visitor message not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the message was not saved; please send it again",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypingBody {
    pub typing: bool,
}

async fn typing(app: &Arc<App>, chat: VisitorChat, req: Request<Incoming>) -> Resp {
    let body: TypingBody = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let operator = app
        .core
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .assigned(chat.id());
    if let Some(operator) = operator {
        app.hub.to_operators(crate::hub::OperatorEvent::Typing {
            operator,
            chat: chat.id(),
            typing: body.typing,
        });
    }
    no_content()
}

async fn end_chat(app: &Arc<App>, chat: VisitorChat) -> Resp {
    crate::operator::end_chat_common(app, chat.id(), Sender::Visitor).await
}

/// Name visitor events: the visitor's own messages carry their name as author.
pub fn event_json(ev: &StoredEvent, visitor_name: &str) -> serde_json::Value {
    let author = if ev.from == Sender::Visitor && ev.author.is_empty() {
        visitor_name
    } else {
        &ev.author
    };
    serde_json::json!({
        "id": ev.id,
        "chat_id": ev.chat_id,
        "kind": ev.kind,
        "from": ev.from,
        "author": author,
        "text": ev.text,
        "ts": ev.ts,
    })
}

async fn events(app: &Arc<App>, chat: VisitorChat, req: &Request<Incoming>) -> Resp {
    let last = match http::last_event_id(req) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let (tx, rx) = mpsc::channel(64);
    // Subscribe before reading the backlog, so nothing committed in between is missed.
    let sub = app.hub.subscribe_chat(chat.id());
    tokio::spawn(visitor_stream(app.clone(), chat, last, sub, tx));
    http::sse_response(rx)
}

async fn visitor_stream(
    app: Arc<App>,
    chat: VisitorChat,
    mut last: i64,
    mut sub: broadcast::Receiver<VisitorEvent>,
    tx: mpsc::Sender<bytes::Bytes>,
) {
    let name = match app.storage.chat(chat.id()).await {
        Ok(Some(c)) => c.visitor.name,
        _ => String::new(),
    };
    let mut ended = false;
    // Replay what the client missed, then follow live events, skipping anything already sent.
    macro_rules! catch_up {
        () => {
            match app.storage.events_after(chat.id(), last).await {
                Ok(evs) => {
                    for ev in evs {
                        last = ev.id;
                        ended |= ev.kind == EventKind::Ended;
                        let frame = http::sse_frame(ev.kind.as_str(), Some(ev.id), &event_json(&ev, &name).to_string());
                        if tx.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "event replay failed");
                    return;
                }
            }
        };
    }
    catch_up!();
    let pos = app
        .core
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .queue_position(chat.id());
    if let Some(p) = pos {
        let _ = tx
            .send(http::sse_frame(
                "queue",
                None,
                &serde_json::json!({"position": p}).to_string(),
            ))
            .await;
    }
    let mut keepalive = tokio::time::interval(Duration::from_secs(15));
    keepalive.tick().await;
    while !ended {
        let ev = tokio::select! {
            ev = sub.recv() => ev,
            _ = keepalive.tick() => {
                if tx.send(bytes::Bytes::from_static(b": keep-alive\n\n")).await.is_err() { return; }
                continue;
            }
            _ = tx.closed() => return,
        };
        match ev {
            Ok(VisitorEvent::Stored(ev)) => {
                if ev.id <= last {
                    continue;
                }
                last = ev.id;
                ended |= ev.kind == EventKind::Ended;
                let frame = http::sse_frame(
                    ev.kind.as_str(),
                    Some(ev.id),
                    &event_json(&ev, &name).to_string(),
                );
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            Ok(VisitorEvent::QueuePosition(p)) => {
                let _ = tx
                    .send(http::sse_frame(
                        "queue",
                        None,
                        &serde_json::json!({"position": p}).to_string(),
                    ))
                    .await;
            }
            Ok(VisitorEvent::OperatorTyping(t)) => {
                let _ = tx
                    .send(http::sse_frame(
                        "typing",
                        None,
                        &serde_json::json!({"from": "operator", "typing": t}).to_string(),
                    ))
                    .await;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => catch_up!(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn transcript(app: &Arc<App>, chat: VisitorChat) -> Resp {
    let name = match app.storage.chat(chat.id()).await {
        Ok(Some(c)) => c.visitor.name,
        _ => String::new(),
    };
    match app.storage.events_after(chat.id(), 0).await {
        Ok(evs) => json(
            StatusCode::OK,
            &serde_json::json!({
                "chat_id": chat.id(),
                "events": evs.iter().map(|e| event_json(e, &name)).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "transcript read failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the transcript could not be read",
            )
        }
    }
}
