//! The visitor listener's routes: the loader, the chat page, and the visitor API.
//!
//! A browsing visitor is identified by a visitor token, a chat by its chat token; both are
//! bearer tokens kept by the chat page, never cookies or URL parts, and no route takes a
//! chat id from a visitor.
#![forbid(unsafe_code)]

mod transcript;

use crate::app::App;
use crate::chat::{self, ActionError};
use crate::core::visitors::Page;
use crate::core::VisitorChat;
use crate::http::{self, content, error, json, no_content, read_json, secure_headers, Resp};
use crate::hub::{PresenceEvent, VisitorEvent};
use crate::operator::auth::{new_token, token_hash};
use crate::policy::FieldMode;
use crate::secret::redacted_debug;
use crate::storage::{
    ChatRecord, ChatStart, EventKind, OfflineMessage, PageView, Sender, StoredEvent, VisitorInfo,
};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

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

/// CSP of everything else on the visitor listener (scripts, styles, API answers,
/// transcript downloads).
pub const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the handlers know about the request beyond its body.
#[derive(Debug, Clone)]
struct Caller {
    source: IpAddr,
    user_agent: String,
}

pub async fn handle(app: Arc<App>, source: IpAddr, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let caller = Caller {
        source,
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| bounded(s, 300))
            .unwrap_or_default(),
    };
    let mut csp = API_CSP.to_string();
    let mut resp = match (&method, path.as_str()) {
        (&Method::GET, "/widget.js") => {
            let mut r = content(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                crate::assets::get("widget.js").into_owned(),
            );
            // The customer's pages (another origin) load this script.
            r.headers_mut().insert(
                "cross-origin-resource-policy",
                HeaderValue::from_static("cross-origin"),
            );
            r
        }
        (&Method::GET, "/chat") => {
            csp = chat_csp(&app.policy().visitor.frame_ancestors);
            content(
                StatusCode::OK,
                "text/html; charset=utf-8",
                crate::assets::get("chat.html").into_owned(),
            )
        }
        (&Method::GET, "/assets/chat.js") => content(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            crate::assets::get("chat.js").into_owned(),
        ),
        (&Method::GET, "/assets/chat.css") => content(
            StatusCode::OK,
            "text/css; charset=utf-8",
            crate::assets::get("chat.css").into_owned(),
        ),
        (&Method::GET, "/api/v1/visitor/status") => status(&app),
        (&Method::POST, "/api/v1/visitor/hello") => hello(&app, &caller, req).await,
        (&Method::POST, "/api/v1/visitor/pageview") => page_view(&app, &caller, req).await,
        (&Method::GET, "/api/v1/visitor/presence") => presence(&app, &req),
        (&Method::POST, "/api/v1/visitor/invite/accept") => {
            answer_invite(&app, &caller, req, true).await
        }
        (&Method::POST, "/api/v1/visitor/invite/decline") => {
            answer_invite(&app, &caller, req, false).await
        }
        (&Method::POST, "/api/v1/visitor/chats") => start_chat(&app, &caller, req).await,
        (&Method::POST, "/api/v1/visitor/offline-message") => {
            offline_message(&app, &caller, req).await
        }
        (&Method::POST, "/api/v1/visitor/rating") => rating(&app, req).await,
        (&Method::GET, "/api/v1/visitor/transcript") => transcript_json(&app, &req).await,
        (&Method::GET, "/api/v1/visitor/transcript.txt") => {
            transcript::download(&app, &req, false).await
        }
        (&Method::GET, "/api/v1/visitor/transcript.html") => {
            transcript::download(&app, &req, true).await
        }
        (_, p) if p.starts_with("/api/v1/visitor/") => match authorise(&app, &req) {
            // A read receipt racing the end of the chat: nothing left to tell anyone.
            Err(_) if (&method, p) == (&Method::POST, "/api/v1/visitor/read") => {
                match chat_of_token(&app, &req).await {
                    Ok(_) => no_content(),
                    Err(r) => r,
                }
            }
            Err(r) => r,
            Ok(chat) => match (&method, p) {
                (&Method::POST, "/api/v1/visitor/messages") => send_message(&app, chat, req).await,
                (&Method::POST, "/api/v1/visitor/typing") => typing(&app, chat, req).await,
                (&Method::POST, "/api/v1/visitor/read") => read_up_to(&app, chat, req).await,
                (&Method::POST, "/api/v1/visitor/end") => end_chat(&app, chat).await,
                (&Method::GET, "/api/v1/visitor/events") => events(&app, chat, &req).await,
                _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
            },
        },
        (&Method::GET, "/") => error(StatusCode::NOT_FOUND, "nothing here; see /widget.js"),
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    };
    secure_headers(&mut resp, &csp);
    resp
}

/// A printable, bounded copy of a visitor-supplied string (control characters dropped).
pub fn bounded(s: &str, max_chars: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

fn field(name: &str, label: &str, mode: FieldMode, kind: &str) -> Option<serde_json::Value> {
    (mode != FieldMode::Hidden).then(|| {
        serde_json::json!({"name": name, "label": label, "required": mode == FieldMode::Required, "type": kind})
    })
}

fn status(app: &App) -> Resp {
    let policy = app.policy();
    let online = app.core().anyone_online(&None);
    let c = &policy.chat;
    let mut fields = vec![
        serde_json::json!({"name": "name", "label": "Your name", "required": true, "type": "text"}),
    ];
    fields.extend(field("email", "Email", c.prechat.email, "email"));
    if !c.departments.is_empty() {
        if let Some(mut d) = field("department", "Department", c.prechat.department, "select") {
            d["options"] = serde_json::json!(c.departments);
            fields.push(d);
        }
    }
    fields.extend(field(
        "question",
        "How can we help?",
        c.prechat.question,
        "textarea",
    ));
    json(
        StatusCode::OK,
        &serde_json::json!({ "online": online, "fields": fields, "departments": c.departments }),
    )
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)?
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
    app.core()
        .visitor_chat(&hash)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unknown or ended chat"))
}

/// The chat of a chat token, live or ended (rating, transcript).
async fn chat_of_token(app: &App, req: &Request<Incoming>) -> Result<ChatRecord, Resp> {
    let token = bearer(req).ok_or_else(|| error(StatusCode::UNAUTHORIZED, "missing chat token"))?;
    match app.storage.chat_by_token(token_hash(token).to_vec()).await {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(error(StatusCode::UNAUTHORIZED, "unknown chat")),
        Err(e) => {
            tracing::error!(error = %e, "chat lookup failed");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the chat could not be read",
            ))
        }
    }
}

/// The visitor id of a visitor token, when the visitor is on the live list.
fn visitor_of(app: &App, req: &Request<Incoming>) -> Option<(String, [u8; 32])> {
    let hash = token_hash(bearer(req)?);
    app.core().visitors.id_of(&hash).map(|id| (id, hash))
}

/// The address as `visitor.toml` says to keep it.
fn minimised_ip(app: &App, ip: IpAddr) -> String {
    match app.policy().visitor.visitor_ip.as_str() {
        "full" => ip.to_string(),
        "none" => String::new(),
        _ => match ip {
            IpAddr::V4(v4) => ipnet::Ipv4Net::new(v4, 24)
                .map(|n| n.trunc().to_string())
                .unwrap_or_default(),
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 48)
                .map(|n| n.trunc().to_string())
                .unwrap_or_default(),
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageBody {
    #[serde(default)]
    url: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    referrer: String,
}

redacted_debug!(PageBody, "visitor data redacted");

impl PageBody {
    fn page(&self) -> Page {
        Page {
            url: bounded(&self.url, 1000),
            title: bounded(&self.title, 300),
            referrer: bounded(&self.referrer, 1000),
        }
    }
}

async fn record_page_view(app: &App, caller: &Caller, visitor_id: &str, page: &Page) {
    let view = PageView {
        url: page.url.clone(),
        title: page.title.clone(),
        referrer: page.referrer.clone(),
        user_agent: caller.user_agent.clone(),
        ip: minimised_ip(app, caller.source),
    };
    if let Err(e) = app
        .storage
        .add_page_view(visitor_id.to_string(), view)
        .await
    {
        tracing::warn!(error = %e, "page view not stored");
    }
}

fn too_many_page_views() -> Resp {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many page views from this address; slow down",
    )
}

async fn hello(app: &Arc<App>, caller: &Caller, req: Request<Incoming>) -> Resp {
    if !app.limits.page_view_allowed(caller.source) {
        return too_many_page_views();
    }
    let known = visitor_of(app, &req);
    let presented = bearer(&req).map(str::to_string);
    let body: PageBody = match read_json(req, app.policy().visitor.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let page = body.page();
    // Keep a token we still know; otherwise issue a new one (unknown tokens are not adopted).
    let (token, visitor_id, hash) = match (known, presented) {
        (Some((id, hash)), Some(t)) => (t, id, hash),
        _ => {
            let t = new_token();
            let hash = token_hash(t.expose());
            let id = crate::policy::hex(&hash[..8]);
            (t.expose().to_string(), id, hash)
        }
    };
    let ip = minimised_ip(app, caller.source);
    let tracked = app.core().visitors.hello(
        hash,
        &visitor_id,
        page.clone(),
        ip,
        caller.user_agent.clone(),
        crate::storage::now_ms(),
    );
    if tracked {
        record_page_view(app, caller, &visitor_id, &page).await;
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "visitor_token": token }),
    )
}

async fn page_view(app: &Arc<App>, caller: &Caller, req: Request<Incoming>) -> Resp {
    if !app.limits.page_view_allowed(caller.source) {
        return too_many_page_views();
    }
    let Some((visitor_id, _)) = visitor_of(app, &req) else {
        return error(StatusCode::UNAUTHORIZED, "unknown visitor; say hello first");
    };
    let body: PageBody = match read_json(req, app.policy().visitor.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let page = body.page();
    if app
        .core()
        .visitors
        .page_view(&visitor_id, page.clone(), crate::storage::now_ms())
    {
        record_page_view(app, caller, &visitor_id, &page).await;
    }
    no_content()
}

/// The browsing visitor's stream: invitations, and a heartbeat that keeps them listed.
fn presence(app: &Arc<App>, req: &Request<Incoming>) -> Resp {
    let Some((visitor_id, _)) = visitor_of(app, req) else {
        return error(StatusCode::UNAUTHORIZED, "unknown visitor; say hello first");
    };
    let (tx, rx) = mpsc::channel(16);
    let mut sub = app.hub.subscribe_presence(&visitor_id);
    let app = app.clone();
    tokio::spawn(async move {
        let pending = app.core().visitors.pending_for(&visitor_id);
        for inv in pending {
            let name = chat::display_name(&app, inv.operator).await;
            if tx.send(invite_frame(&inv, &name)).await.is_err() {
                return;
            }
        }
        let mut beat = tokio::time::interval(Duration::from_secs(15));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    app.core().visitors.touch(&visitor_id, crate::storage::now_ms());
                    if tx.send(bytes::Bytes::from_static(b": keep-alive\n\n")).await.is_err() { return; }
                }
                ev = sub.recv() => {
                    let frame = match ev {
                        Ok(PresenceEvent::Invite(inv, name)) => invite_frame(&inv, &name),
                        Ok(PresenceEvent::InviteWithdrawn(id)) => http::sse_frame("invite_withdrawn", None, &serde_json::json!({"invite_id": id}).to_string()),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if tx.send(frame).await.is_err() { return; }
                }
                _ = tx.closed() => return,
            }
        }
    });
    http::event_stream(req, rx)
}

fn invite_frame(inv: &crate::core::visitors::Invite, operator_name: &str) -> bytes::Bytes {
    http::sse_frame(
        "invite",
        None,
        &serde_json::json!({"invite_id": inv.id, "operator": operator_name, "message": inv.message}).to_string(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteAnswer {
    invite_id: u64,
}

async fn answer_invite(
    app: &Arc<App>,
    caller: &Caller,
    req: Request<Incoming>,
    accept: bool,
) -> Resp {
    let Some((visitor_id, _)) = visitor_of(app, &req) else {
        return error(StatusCode::UNAUTHORIZED, "unknown visitor");
    };
    let body: InviteAnswer = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let answered = app
        .core()
        .visitors
        .answer(&visitor_id, body.invite_id, accept);
    let inv = match answered {
        Ok(inv) => inv,
        Err(r) => return error(StatusCode::NOT_FOUND, r.message()),
    };
    app.audit
        .record(
            crate::audit::ids::INVITATION,
            "invitation",
            format!(
                "visitor={visitor_id} operator={} answer={}",
                inv.operator.0,
                if accept { "accepted" } else { "declined" }
            ),
        )
        .await;
    if !accept {
        app.hub
            .to_operators(crate::hub::OperatorEvent::InviteUpdate {
                operator: inv.operator,
                invite: inv,
                chat: None,
            });
        return no_content();
    }
    if !app.limits.chat_start_allowed(
        caller.source,
        app.policy().visitor.chats_per_hour_per_source,
    ) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many chats from this address; try again later",
        );
    }
    let name = chat::display_name(app, inv.operator).await;
    let token = new_token();
    let hash = token_hash(token.expose());
    let info = VisitorInfo {
        name: "Visitor".into(),
        email: String::new(),
        question: if inv.message.is_empty() {
            "(accepted an invitation)".into()
        } else {
            inv.message.clone()
        },
    };
    let start = ChatStart {
        department: None,
        visitor_id: Some(visitor_id),
        operator: None,
    };
    match chat::start(app, hash, info, start, Some((inv.operator, name))).await {
        Ok(ev) => {
            app.hub
                .to_operators(crate::hub::OperatorEvent::InviteUpdate {
                    operator: inv.operator,
                    invite: inv,
                    chat: Some(ev.chat_id),
                });
            json(
                StatusCode::CREATED,
                &serde_json::json!({ "chat_id": ev.chat_id, "token": token.expose() }),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "chat not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the chat could not be saved; please try again",
            )
        }
    }
}

/// The pre-chat form, `POST /api/v1/visitor/chats` (public for the fuzz targets).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartChat {
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub department: String,
    #[serde(default)]
    pub question: String,
}

redacted_debug!(StartChat, "personal data redacted");

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

fn check_email(email: &str) -> Result<(), String> {
    if !email.is_empty() && (!email.contains('@') || email.contains(char::is_whitespace)) {
        return Err("email is not an address".into());
    }
    Ok(())
}

fn check_department(app: &App, d: &str, mode: FieldMode) -> Result<Option<String>, String> {
    let policy = app.policy();
    if d.is_empty() {
        if mode == FieldMode::Required && !policy.chat.departments.is_empty() {
            return Err("department is required".into());
        }
        return Ok(None);
    }
    if !policy.chat.departments.iter().any(|x| x == d) {
        return Err("no such department".into());
    }
    Ok(Some(d.to_string()))
}

async fn start_chat(app: &Arc<App>, caller: &Caller, req: Request<Incoming>) -> Resp {
    let visitor = visitor_of(app, &req);
    let policy = app.policy();
    let v = &policy.visitor;
    let pre = &policy.chat.prechat;
    let body: StartChat = match read_json(req, v.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let checked = (|| -> Result<_, String> {
        let name = clean_field(&body.name, v.max_field_chars.min(200), "name", true)?;
        let email = clean_field(
            &body.email,
            v.max_field_chars.min(254),
            "email",
            pre.email == FieldMode::Required,
        )?;
        check_email(&email)?;
        let question = clean_field(
            &body.question,
            v.max_field_chars,
            "question",
            pre.question == FieldMode::Required,
        )?;
        let department = check_department(app, body.department.trim(), pre.department)?;
        Ok((name, email, question, department))
    })();
    let (name, email, question, department) = match checked {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if !policy.chat.queue_when_offline && !app.core().anyone_online(&department) {
        return json(
            StatusCode::CONFLICT,
            &serde_json::json!({"error": "no operator is online; please leave a message", "offline": true}),
        );
    }
    if !app
        .limits
        .chat_start_allowed(caller.source, v.chats_per_hour_per_source)
    {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many chats from this address; try again later",
        );
    }
    let token = new_token();
    let hash = token_hash(token.expose());
    let start = ChatStart {
        department,
        visitor_id: visitor.map(|(id, _)| id),
        operator: None,
    };
    match chat::start(
        app,
        hash,
        VisitorInfo {
            name,
            email,
            question,
        },
        start,
        None,
    )
    .await
    {
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
pub struct OfflineBody {
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    department: String,
    message: String,
}

redacted_debug!(OfflineBody, "personal data redacted");

async fn offline_message(app: &Arc<App>, caller: &Caller, req: Request<Incoming>) -> Resp {
    let policy = app.policy();
    let v = &policy.visitor;
    let body: OfflineBody = match read_json(req, v.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let checked = (|| -> Result<_, String> {
        let name = clean_field(&body.name, v.max_field_chars.min(200), "name", true)?;
        let email = clean_field(&body.email, v.max_field_chars.min(254), "email", true)?;
        check_email(&email)?;
        let message = clean_field(&body.message, v.max_message_chars, "message", true)?;
        let department = check_department(app, body.department.trim(), FieldMode::Optional)?;
        Ok((name, email, message, department))
    })();
    let (name, email, mut message, department) = match checked {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if v.mask_card_numbers {
        message = crate::core::redact::mask_card_numbers(&message);
    }
    if !app
        .limits
        .chat_start_allowed(caller.source, v.chats_per_hour_per_source)
    {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many messages from this address; try again later",
        );
    }
    let m = OfflineMessage {
        id: 0,
        name,
        email,
        message,
        department,
        ts: 0,
        read: false,
    };
    match app.storage.add_offline_message(m).await {
        Ok(id) => {
            app.hub
                .to_operators(crate::hub::OperatorEvent::InboxChanged);
            json(StatusCode::CREATED, &serde_json::json!({ "id": id }))
        }
        Err(e) => {
            tracing::error!(error = %e, "offline message not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the message was not saved; please try again",
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

/// A message text as stored: trimmed, bounded, masked when the policy says so.
pub fn message_text(app: &App, raw: &str) -> Result<String, Resp> {
    let policy = app.policy();
    let v = &policy.visitor;
    let mut text = raw.trim_end().to_string();
    if text.trim().is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "the message is empty"));
    }
    if text.chars().count() > v.max_message_chars {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the message is too long",
        ));
    }
    if v.mask_card_numbers {
        text = crate::core::redact::mask_card_numbers(&text);
    }
    Ok(text)
}

async fn send_message(app: &Arc<App>, chat: VisitorChat, req: Request<Incoming>) -> Resp {
    let policy = app.policy();
    let body: MessageBody = match read_json(req, policy.visitor.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = match message_text(app, &body.text) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if !app
        .limits
        .message_allowed(chat.id().0, policy.visitor.messages_per_minute)
    {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many messages; slow down",
        );
    }
    let res = chat::post(
        app,
        chat.id(),
        EventKind::Message,
        Sender::Visitor,
        None,
        String::new(),
        text,
        None,
    )
    .await;
    message_saved(res, "visitor")
}

/// The answer to a chat message: its id once it is on disk, or "not saved".
pub fn message_saved(res: Result<StoredEvent, crate::storage::StorageError>, side: &str) -> Resp {
    match res {
        Ok(ev) => json(
            StatusCode::OK,
            &serde_json::json!({ "id": ev.id, "ts": ev.ts }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "{side} message not stored");
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
    let audience = app.core().audience(chat.id());
    if !audience.is_empty() {
        app.hub.to_operators(crate::hub::OperatorEvent::Typing {
            audience: audience.into(),
            chat: chat.id(),
            typing: body.typing,
        });
    }
    no_content()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    pub up_to: i64,
}

async fn read_up_to(app: &Arc<App>, chat: VisitorChat, req: Request<Incoming>) -> Resp {
    let body: ReadBody = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let changed = app.core().read(chat.id(), true, body.up_to);
    if let Some(r) = changed {
        chat::receipts_to_operators(app, chat.id(), r);
    }
    no_content()
}

async fn end_chat(app: &Arc<App>, chat: VisitorChat) -> Resp {
    match chat::end(app, chat.id(), Sender::Visitor).await {
        Ok(ev) => json(StatusCode::OK, &serde_json::json!({ "id": ev.id })),
        Err(e) => action_error(e),
    }
}

/// The HTTP answer for a refused or unsaved chat action.
pub fn action_error(e: ActionError) -> Resp {
    match e {
        ActionError::Refused(r) => {
            let status = match r {
                crate::core::Refusal::NotFound | crate::core::Refusal::UnknownDepartment => {
                    StatusCode::NOT_FOUND
                }
                _ => StatusCode::CONFLICT,
            };
            error(status, r.message())
        }
        ActionError::NotSaved(e) => {
            tracing::error!(error = %e, "chat change not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the change was not saved; please try again",
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingBody {
    rating: i64,
    #[serde(default)]
    comment: String,
}

redacted_debug!(RatingBody, "comment redacted");

async fn rating(app: &Arc<App>, req: Request<Incoming>) -> Resp {
    let chat = match chat_of_token(app, &req).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let policy = app.policy();
    let body: RatingBody = match read_json(req, policy.visitor.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !(1..=5).contains(&body.rating) {
        return error(StatusCode::BAD_REQUEST, "the rating must be 1 to 5");
    }
    let comment = match clean_field(
        &body.comment,
        policy.visitor.max_message_chars.min(2000),
        "comment",
        false,
    ) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if chat.state != "ended" {
        return error(
            StatusCode::CONFLICT,
            "a chat can be rated once it has ended",
        );
    }
    match app.storage.set_rating(chat.id, body.rating, comment).await {
        Ok(true) => {
            if let Some(op) = chat.operator_id {
                app.hub
                    .to_operators(crate::hub::OperatorEvent::ChatChanged {
                        audience: vec![op].into(),
                        chat: chat.id,
                    });
            }
            no_content()
        }
        Ok(false) => error(StatusCode::CONFLICT, "this chat was rated already"),
        Err(e) => {
            tracing::error!(error = %e, "rating not stored");
            error(StatusCode::SERVICE_UNAVAILABLE, "the rating was not saved")
        }
    }
}

/// An event as sent to either side; the visitor's own messages carry their name.
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

/// Open event streams one chat may hold at once (a visitor's tabs).
pub const MAX_STREAMS_PER_CHAT: usize = 8;

async fn events(app: &Arc<App>, chat: VisitorChat, req: &Request<Incoming>) -> Resp {
    let last = match http::last_event_id(req) {
        Ok(n) => n,
        Err(r) => return r,
    };
    // A visitor has a few tabs, not hundreds: one chat token cannot hold more streams
    // than this (each is a task and buffers the whole connection limit would allow).
    if app.hub.chat_listeners(chat.id()) >= MAX_STREAMS_PER_CHAT {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many event streams open for this chat; close one",
        );
    }
    let (tx, rx) = mpsc::channel(64);
    // Subscribe before reading the backlog, so nothing committed in between is missed.
    let sub = app.hub.subscribe_chat(chat.id());
    tokio::spawn(visitor_stream(app.clone(), chat, last, sub, tx));
    http::event_stream(req, rx)
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
    let frame = |ev: &StoredEvent| {
        http::sse_frame(
            ev.kind.as_str(),
            Some(ev.id),
            &event_json(ev, &name).to_string(),
        )
    };
    // Replay what the client missed, then follow live events, skipping anything already sent.
    macro_rules! catch_up {
        () => {
            match app.storage.events_after(chat.id(), last).await {
                Ok(evs) => {
                    for ev in evs {
                        last = ev.id;
                        if !ev.kind.visitor_visible() {
                            continue;
                        }
                        ended |= ev.kind == EventKind::Ended;
                        if tx.send(frame(&ev)).await.is_err() {
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
    let (pos, receipts) = {
        let core = app.core();
        (core.queue_position(chat.id()), core.receipts(chat.id()))
    };
    if let Some(p) = pos {
        let _ = tx
            .send(http::sse_frame(
                "queue",
                None,
                &serde_json::json!({"position": p}).to_string(),
            ))
            .await;
    }
    if let Some(r) = receipts {
        let _ = tx.send(receipt_frame(&r)).await;
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
        let out = match ev {
            Ok(VisitorEvent::Stored(ev)) => {
                if ev.id <= last {
                    continue;
                }
                last = ev.id;
                ended |= ev.kind == EventKind::Ended;
                if ev.from == Sender::Operator && ev.kind == EventKind::Message {
                    let delivered = app.core().delivered_to_visitor(chat.id(), ev.id);
                    if let Some(r) = delivered {
                        chat::receipts_to_operators(&app, chat.id(), r);
                    }
                }
                frame(&ev)
            }
            Ok(VisitorEvent::QueuePosition(p)) => http::sse_frame(
                "queue",
                None,
                &serde_json::json!({"position": p}).to_string(),
            ),
            Ok(VisitorEvent::OperatorTyping(t)) => http::sse_frame(
                "typing",
                None,
                &serde_json::json!({"from": "operator", "typing": t}).to_string(),
            ),
            Ok(VisitorEvent::Receipt(r)) => receipt_frame(&r),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                catch_up!();
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}

fn receipt_frame(r: &crate::core::Receipts) -> bytes::Bytes {
    http::sse_frame(
        "receipt",
        None,
        &serde_json::json!({"delivered_up_to": r.delivered_to_operator, "read_up_to": r.read_by_operator}).to_string(),
    )
}

async fn transcript_json(app: &Arc<App>, req: &Request<Incoming>) -> Resp {
    let chat = match chat_of_token(app, req).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match app.storage.events_after(chat.id, 0).await {
        Ok(evs) => json(
            StatusCode::OK,
            &serde_json::json!({
                "chat_id": chat.id,
                "events": evs.iter().filter(|e| e.kind.visitor_visible()).map(|e| event_json(e, &chat.visitor.name)).collect::<Vec<_>>(),
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
