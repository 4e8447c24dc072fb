//! The operator listener's routes: the console and the operator API.
//!
//! Every API route except login takes an [`AuthenticatedOperator`] (from the session
//! cookie) and every chat action an [`OperatorChat`] or a check on assignment or role,
//! so a handler cannot act on a chat without both checks. Foreign and unknown chat ids
//! get the same 404.
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod auth;
mod stream;
pub mod totp;

use crate::app::App;
use crate::audit::ids;
use crate::chat;
use crate::core::{ChatId, ChatState, OperatorChat, Presence, TransferTarget};
use crate::http::{self, content, error, json, no_content, read_json, secure_headers, Resp};
use crate::hub::{OperatorEvent, PresenceEvent, VisitorEvent};
use crate::secret::{redacted_debug, Secret};
use crate::storage::{now_ms, Canned, EventKind, SearchQuery, Sender};
use crate::visitor::{action_error, message_text, ReadBody, TypingBody};
use allowlist::AllowedPeer;
use auth::{AccountView, AuthenticatedOperator, LoginOutcome, Role};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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

fn forbidden() -> Resp {
    error(StatusCode::FORBIDDEN, "this needs a supervisor or admin")
}

fn not_found() -> Resp {
    error(StatusCode::NOT_FOUND, "no such chat")
}

async fn route(app: Arc<App>, peer: AllowedPeer, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let asset = |name: &str, ctype: &'static str| {
        content(StatusCode::OK, ctype, crate::assets::get(name).into_owned())
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/") | (&Method::GET, "/index.html") => {
            return asset("console.html", "text/html; charset=utf-8")
        }
        (&Method::GET, "/assets/console.js") => {
            return asset("console.js", "text/javascript; charset=utf-8")
        }
        (&Method::GET, "/assets/console.css") => {
            return asset("console.css", "text/css; charset=utf-8")
        }
        _ => {}
    }
    if !path.starts_with("/api/v1/operator/") {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    if method != Method::GET && !origin_ok(&req) {
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
    if op.must_enroll && !matches!(seg.as_slice(), ["me"] | ["logout"] | ["totp", _]) {
        return json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "two-factor enrolment required", "enrol": true}),
        );
    }
    let query = req.uri().query().unwrap_or("").to_string();
    match (&method, seg.as_slice()) {
        (&Method::POST, ["logout"]) => logout(&app, op).await,
        (&Method::GET, ["me"]) => json(StatusCode::OK, &me_json(&app, &op).await),
        (&Method::POST, ["presence"]) => presence(&app, &op, req).await,
        (&Method::GET, ["state"]) => json(StatusCode::OK, &stream::snapshot(&app, &op).await),
        (&Method::GET, ["events"]) => stream::events(&app, op),
        (&Method::GET, ["live"]) => live(&app, &op).await,
        (&Method::GET, ["visitors"]) => json(
            StatusCode::OK,
            &serde_json::json!({"visitors": stream::visitors_json(&app)}),
        ),
        (&Method::POST, ["visitors", vid, "invite"]) => invite(&app, &op, vid, req).await,
        (&Method::GET, ["canned"]) => canned_list(&app).await,
        (&Method::POST, ["canned"]) => canned_save(&app, &op, 0, req).await,
        (&Method::PUT, ["canned", id]) => match id.parse::<i64>() {
            Ok(id) if id > 0 => canned_save(&app, &op, id, req).await,
            _ => error(StatusCode::NOT_FOUND, "no such canned response"),
        },
        (&Method::DELETE, ["canned", id]) => canned_delete(&app, &op, id).await,
        (&Method::GET, ["inbox"]) => inbox(&app, &op).await,
        (&Method::POST, ["inbox", id, "read"]) => inbox_read(&app, &op, id).await,
        (&Method::GET, ["stats"]) => match crate::app::live_stats(&app).await {
            Ok(s) => json(StatusCode::OK, &s),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "stats are unavailable"),
        },
        (&Method::GET, ["search"]) => search(&app, &op, &query).await,
        (&Method::GET, ["operators"]) => operators(&app).await,
        (&Method::POST, ["totp", "enroll"]) => totp_enroll(&app, &op).await,
        (&Method::POST, ["totp", "confirm"]) => totp_confirm(&app, &op, req).await,
        (_, ["chats", id, action]) => {
            let Some(chat) = id.parse::<i64>().ok().filter(|n| *n > 0).map(ChatId) else {
                return not_found();
            };
            chat_action(&app, &op, chat, &method, action, req).await
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

async fn chat_action(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    chat: ChatId,
    method: &Method,
    action: &str,
    req: Request<Incoming>,
) -> Resp {
    match (method, action) {
        (&Method::POST, "accept") => match chat::accept(app, op, chat).await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "chat_id": chat })),
            Err(e) => action_error(e),
        },
        (&Method::GET, "transcript") => transcript(app, op, chat).await,
        (&Method::POST, "wrapup") => wrapup(app, op, chat, req).await,
        (&Method::POST, "monitor") => monitor(app, op, chat, req).await,
        (&Method::POST, "whisper") => whisper(app, op, chat, req).await,
        (&Method::POST, "takeover") => takeover(app, op, chat).await,
        (m, a) => {
            let decided = app.core().operator_chat(op.id, chat);
            let oc = match decided {
                Ok(oc) => oc,
                Err(_) if (m, a) == (&Method::POST, "read") => {
                    // A read receipt racing the end of a chat this operator had.
                    return match app.storage.chat(chat).await {
                        Ok(Some(c)) if c.operator_id == Some(op.id) => no_content(),
                        _ => not_found(),
                    };
                }
                Err(_) => return not_found(),
            };
            match (m, a) {
                (&Method::POST, "messages") => send_message(app, op, oc, req).await,
                (&Method::POST, "typing") => typing(app, oc, req).await,
                (&Method::POST, "read") => read_up_to(app, oc, req).await,
                (&Method::POST, "transfer") => transfer(app, op, oc, req).await,
                (&Method::POST, "end") => match chat::end(app, oc.id(), Sender::Operator).await {
                    Ok(ev) => json(StatusCode::OK, &serde_json::json!({ "id": ev.id })),
                    Err(e) => action_error(e),
                },
                _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
            }
        }
    }
}

/// `Me` in docs/api.md (plus what the console needs to render forms).
pub async fn me_json(app: &App, op: &AuthenticatedOperator) -> serde_json::Value {
    let policy = app.policy();
    let totp_enabled = app
        .storage
        .operator_by_id(op.id)
        .await
        .ok()
        .flatten()
        .map(|o| o.totp_enabled)
        .unwrap_or(false);
    serde_json::json!({
        "username": op.username,
        "display_name": op.display_name,
        "role": op.role,
        "presence": app.core().presence(op.id),
        "departments": op.departments,
        "totp_enabled": totp_enabled,
        "totp_required": policy.accounts.totp_required_roles.iter().any(|r| r == op.role.as_str()),
        "all_departments": policy.chat.departments,
        "wrapup_categories": policy.chat.wrapup_categories,
        "routing": policy.chat.routing,
    })
}

/// The login form, `POST /api/v1/operator/login` (public for the fuzz targets).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub username: String,
    pub password: Secret,
    pub auth_string: Secret,
    #[serde(default)]
    pub totp: Secret,
}

// Not even the username: it may be a password typed into the wrong field.
redacted_debug!(LoginBody, "redacted");

/// Check a TOTP code or a recovery code for an account that has TOTP enabled.
async fn second_factor_ok(app: &App, a: &AccountView, code: &Secret) -> bool {
    let code = code.expose().trim();
    if code.is_empty() {
        return false;
    }
    if totp::looks_like_recovery(code) {
        let used = app
            .storage
            .use_recovery_code(a.id, totp::recovery_hash(code))
            .await
            .unwrap_or(false);
        if used {
            app.audit
                .record(
                    ids::TOTP_CHANGED,
                    "totp_changed",
                    format!("user={} action=recovery_code_used", a.username),
                )
                .await;
        }
        return used;
    }
    let Ok(Some((secret, true, last))) = app.storage.totp(a.id).await else {
        return false;
    };
    match totp::verify(&secret, code, now_ms() / 1000, last) {
        Some(step) => app.storage.use_totp_step(a.id, step).await.unwrap_or(false),
        None => false,
    }
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
    if app.auth.line_full(&username, peer.ip()) {
        return busy();
    }
    let account = match app.storage.operator_by_name(username.clone()).await {
        Ok(a) => a.map(|r| AccountView {
            id: r.id,
            username: r.username,
            display_name: r.display_name,
            password_hash: r.password_hash,
            disabled: r.disabled,
            role: Role::parse(&r.role),
            departments: r.departments,
            totp_enabled: r.totp_enabled,
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
    // What the journal and the audit log name: an existing account, or nothing. A name that
    // is no account is often a password typed into the wrong field, so it is never logged.
    let logged_user = match &account {
        Some(a) => sanitize(&a.username),
        None => "(unknown)".to_string(),
    };
    let failed = |reason: &'static str| {
        let app = app.clone();
        let user = logged_user.clone();
        async move {
            app.audit
                .record(
                    ids::LOGIN_FAILED,
                    "login_failed",
                    format!("user={user} source={source} reason={reason}"),
                )
                .await;
        }
    };
    match app
        .auth
        .login(&username, body.password, body.auth_string, account, source)
        .await
    {
        LoginOutcome::Valid(a) => {
            if a.totp_enabled && !second_factor_ok(app, &a, &body.totp).await {
                app.auth.fail(&username, source);
                failed("bad_totp").await;
                return invalid();
            }
            let policy = app.policy();
            let must_enroll = !a.totp_enabled
                && policy
                    .accounts
                    .totp_required_roles
                    .iter()
                    .any(|r| r == a.role.as_str());
            let (operator, token) = app.auth.open_session(&a, source, must_enroll);
            app.core()
                .set_operator_profile(a.id, a.departments.clone(), None);
            app.names().insert(a.id, a.display_name.clone());
            app.audit
                .record(
                    ids::LOGIN_OK,
                    "login_ok",
                    format!(
                        "user={} role={} source={source}{}",
                        operator.username,
                        operator.role.as_str(),
                        if a.totp_enabled {
                            " second_factor=totp"
                        } else {
                            ""
                        }
                    ),
                )
                .await;
            let mut r = json(StatusCode::OK, &me_json(app, &operator).await);
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
            failed(reason).await;
            invalid()
        }
        LoginOutcome::Throttled { retry_after } => {
            // Whole seconds, rounded up: a client that waits exactly this long finds the
            // backoff over (rounding down told it to come back while still blocked).
            let retry_after = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            app.audit
                .record(
                    ids::LOGIN_THROTTLED,
                    "login_throttled",
                    format!("user={logged_user} source={source} retry_after_s={retry_after}"),
                )
                .await;
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many attempts; try again later",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        LoginOutcome::Busy => busy(),
    }
}

/// Too many logins waiting for a hashing slot.
fn busy() -> Resp {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many logins at once; try again shortly",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
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
    if app.auth.sessions_of(op.id) == 0 {
        chat::requeue_operator(app, op.id).await;
    }
    let mut r = no_content();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-palisade_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceBody {
    presence: String,
}

async fn presence(app: &Arc<App>, op: &AuthenticatedOperator, req: Request<Incoming>) -> Resp {
    let body: PresenceBody = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let p = match body.presence.as_str() {
        "online" => Presence::Online,
        "away" => Presence::Away,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "presence is \"online\" or \"away\"",
            )
        }
    };
    app.core().set_presence(op.id, p);
    if p == Presence::Online {
        chat::route(app).await;
    }
    no_content()
}

async fn send_message(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    oc: OperatorChat,
    req: Request<Incoming>,
) -> Resp {
    let body: crate::visitor::MessageBody =
        match read_json(req, app.policy().visitor.max_body_bytes).await {
            Ok(b) => b,
            Err(r) => return r,
        };
    let text = match message_text(app, &body.text) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let res = chat::post(
        app,
        oc.id(),
        EventKind::Message,
        Sender::Operator,
        Some(oc.operator()),
        op.display_name.clone(),
        text,
        None,
    )
    .await;
    crate::visitor::message_saved(res, "operator")
}

async fn typing(app: &Arc<App>, oc: OperatorChat, req: Request<Incoming>) -> Resp {
    let body: TypingBody = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    app.hub
        .to_chat(oc.id(), VisitorEvent::OperatorTyping(body.typing));
    no_content()
}

async fn read_up_to(app: &Arc<App>, oc: OperatorChat, req: Request<Incoming>) -> Resp {
    let body: ReadBody = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let changed = app.core().read(oc.id(), false, body.up_to);
    if let Some(r) = changed {
        chat::receipts_to_visitor(app, oc.id(), r);
    }
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    #[serde(default)]
    to_operator: String,
    #[serde(default)]
    to_department: String,
    #[serde(default)]
    note: String,
}

redacted_debug!(TransferBody, "note redacted");

async fn transfer(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    oc: OperatorChat,
    req: Request<Incoming>,
) -> Resp {
    let body: TransferBody = match read_json(req, 4096).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let note = crate::visitor::bounded(body.note.trim(), 1000);
    let (to_op, to_dept) = (body.to_operator.trim(), body.to_department.trim());
    let (target, name) = match (to_op.is_empty(), to_dept.is_empty()) {
        (false, true) => match app.storage.operator_by_name(to_op.to_string()).await {
            Ok(Some(o)) if !o.disabled => (TransferTarget::Operator(o.id), o.display_name),
            _ => return error(StatusCode::NOT_FOUND, "no such operator"),
        },
        (true, false) => (
            TransferTarget::Department(to_dept.to_string()),
            to_dept.to_string(),
        ),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give either to_operator or to_department",
            )
        }
    };
    match chat::transfer(app, op, oc.id(), target, name, note).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "chat_id": oc.id() })),
        Err(e) => action_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapupBody {
    category: String,
    #[serde(default)]
    note: String,
}

redacted_debug!(WrapupBody, "note redacted");

async fn wrapup(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    chat: ChatId,
    req: Request<Incoming>,
) -> Resp {
    let handled = match app.storage.chat(chat).await {
        Ok(Some(c)) => c.operator_id == Some(op.id),
        _ => false,
    };
    if !handled {
        return not_found();
    }
    let body: WrapupBody = match read_json(req, 8192).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let policy = app.policy();
    let category = body.category.trim().to_string();
    if category.is_empty()
        || (!policy.chat.wrapup_categories.is_empty()
            && !policy.chat.wrapup_categories.contains(&category))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "choose one of the wrap-up categories",
        );
    }
    let note = crate::visitor::bounded(body.note.trim(), 2000);
    if let Err(e) = app
        .storage
        .set_wrapup(chat, category.clone(), note.clone())
        .await
    {
        tracing::error!(error = %e, "wrap-up not stored");
        return error(StatusCode::SERVICE_UNAVAILABLE, "the wrap-up was not saved");
    }
    let text = if note.is_empty() {
        category
    } else {
        format!("{category}: {note}")
    };
    let app2 = app.clone();
    let me = op.id;
    let res = app
        .storage
        .append_event(
            chat,
            EventKind::Wrapup,
            Sender::Operator,
            Some(op.id),
            op.display_name.clone(),
            text,
            None,
            move |ev| {
                let mut audience = app2.core().audience(chat);
                if !audience.contains(&me) {
                    audience.push(me);
                }
                app2.hub.publish(ev, audience.clone());
                app2.hub.to_operators(OperatorEvent::ChatChanged {
                    audience: audience.into(),
                    chat,
                });
            },
        )
        .await;
    match res {
        Ok(_) => no_content(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the wrap-up was not saved"),
    }
}

async fn transcript(app: &Arc<App>, op: &AuthenticatedOperator, chat: ChatId) -> Resp {
    let allowed = op.role.supervises()
        || app.core().can_read(op.id, chat)
        || matches!(app.storage.chat(chat).await, Ok(Some(c)) if c.operator_id == Some(op.id));
    if !allowed {
        return not_found();
    }
    match stream::chat_json(app, chat, op.id).await {
        Some(j) => {
            app.audit
                .record(
                    ids::TRANSCRIPT_ACCESS,
                    "transcript_access",
                    format!("user={} chat={} action=view", op.username, chat.0),
                )
                .await;
            json(StatusCode::OK, &j)
        }
        None => not_found(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorBody {
    on: bool,
}

async fn monitor(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    chat: ChatId,
    req: Request<Incoming>,
) -> Resp {
    if !op.role.supervises() {
        return forbidden();
    }
    let body: MonitorBody = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if app.core().monitor(op.id, chat, body.on).is_err() {
        return not_found();
    }
    app.audit
        .record(
            ids::SUPERVISOR_ACTION,
            "supervisor_action",
            format!(
                "user={} chat={} action={}",
                op.username,
                chat.0,
                if body.on {
                    "monitor_start"
                } else {
                    "monitor_stop"
                }
            ),
        )
        .await;
    if body.on {
        app.hub.to_operators(OperatorEvent::ChatChanged {
            audience: vec![op.id].into(),
            chat,
        });
    } else {
        app.hub.to_operators(OperatorEvent::ChatRemoved {
            operator: op.id,
            chat,
        });
    }
    no_content()
}

async fn whisper(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    chat: ChatId,
    req: Request<Incoming>,
) -> Resp {
    if !op.role.supervises() {
        return forbidden();
    }
    let body: crate::visitor::MessageBody =
        match read_json(req, app.policy().visitor.max_body_bytes).await {
            Ok(b) => b,
            Err(r) => return r,
        };
    let text = match message_text(app, &body.text) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let started = {
        let mut core = app.core();
        match core.assigned(chat) {
            None => None,
            Some(_) => {
                let was = core.can_read(op.id, chat);
                let _ = core.monitor(op.id, chat, true);
                Some(was)
            }
        }
    };
    let Some(was_monitoring) = started else {
        return error(
            StatusCode::CONFLICT,
            "only a chat with an operator can take a whisper",
        );
    };
    if !was_monitoring {
        app.hub.to_operators(OperatorEvent::ChatChanged {
            audience: vec![op.id].into(),
            chat,
        });
    }
    app.audit
        .record(
            ids::SUPERVISOR_ACTION,
            "supervisor_action",
            format!("user={} chat={} action=whisper", op.username, chat.0),
        )
        .await;
    match chat::post(
        app,
        chat,
        EventKind::Whisper,
        Sender::Operator,
        Some(op.id),
        op.display_name.clone(),
        text,
        None,
    )
    .await
    {
        Ok(ev) => json(StatusCode::OK, &serde_json::json!({ "id": ev.id })),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the whisper was not saved"),
    }
}

async fn takeover(app: &Arc<App>, op: &AuthenticatedOperator, chat: ChatId) -> Resp {
    if !op.role.supervises() {
        return forbidden();
    }
    match chat::take_over(app, op, chat).await {
        Ok(()) => {
            app.audit
                .record(
                    ids::SUPERVISOR_ACTION,
                    "supervisor_action",
                    format!("user={} chat={} action=takeover", op.username, chat.0),
                )
                .await;
            json(StatusCode::OK, &serde_json::json!({ "chat_id": chat }))
        }
        Err(e) => action_error(e),
    }
}

async fn live(app: &Arc<App>, op: &AuthenticatedOperator) -> Resp {
    if !op.role.supervises() {
        return forbidden();
    }
    let live = app.core().live();
    let mut out = Vec::new();
    for (chat, state, department, started) in live {
        let label = app.core().label(chat).unwrap_or_default();
        let (state_name, operator, since) = match state {
            ChatState::Queued { since_ms } => ("queued", None, since_ms),
            ChatState::Active { operator } => ("active", Some(operator), started),
            ChatState::Ending { .. } => continue,
        };
        let operator = match operator {
            Some(o) => Some(chat::display_name(app, o).await),
            None => None,
        };
        out.push(serde_json::json!({"chat_id": chat, "name": label.0, "operator": operator, "department": department, "state": state_name, "since": since}));
    }
    json(StatusCode::OK, &serde_json::json!({ "chats": out }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    #[serde(default)]
    message: String,
}

redacted_debug!(InviteBody, "message redacted");

async fn invite(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    visitor_id: &str,
    req: Request<Incoming>,
) -> Resp {
    let body: InviteBody = match read_json(req, 4096).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let message = crate::visitor::bounded(body.message.trim(), 500);
    let made = app
        .core()
        .visitors
        .invite(op.id, visitor_id, message, now_ms());
    match made {
        Ok(inv) => {
            app.hub.to_presence(
                visitor_id,
                PresenceEvent::Invite(inv.clone(), op.display_name.clone()),
            );
            app.hub.to_operators(OperatorEvent::VisitorsChanged);
            app.hub.to_operators(OperatorEvent::InviteUpdate {
                operator: op.id,
                invite: inv.clone(),
                chat: None,
            });
            app.audit
                .record(
                    ids::INVITATION,
                    "invitation",
                    format!("user={} visitor={visitor_id} answer=sent", op.username),
                )
                .await;
            json(
                StatusCode::CREATED,
                &serde_json::json!({ "invite_id": inv.id }),
            )
        }
        Err(r) => error(
            if r == crate::core::visitors::InviteRefusal::NoSuchVisitor {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            },
            r.message(),
        ),
    }
}

async fn canned_list(app: &Arc<App>) -> Resp {
    match app.storage.canned().await {
        Ok(c) => json(StatusCode::OK, &serde_json::json!({ "canned": c })),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "canned responses are unavailable",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedBody {
    shortcut: String,
    title: String,
    text: String,
}

redacted_debug!(CannedBody, "text redacted");

async fn canned_save(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    id: i64,
    req: Request<Incoming>,
) -> Resp {
    if !op.role.supervises() {
        return forbidden();
    }
    let body: CannedBody = match read_json(req, app.policy().visitor.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let shortcut = body.shortcut.trim().trim_start_matches('/').to_lowercase();
    if shortcut.is_empty()
        || shortcut.len() > 32
        || !shortcut
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return error(
            StatusCode::BAD_REQUEST,
            "the shortcut is 1-32 of a-z, 0-9, '-', '_'",
        );
    }
    let title = body.title.trim().to_string();
    if title.is_empty() || title.chars().count() > 100 {
        return error(StatusCode::BAD_REQUEST, "the title is 1-100 characters");
    }
    let text = match message_text(app, &body.text) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match app
        .storage
        .save_canned(Canned {
            id,
            shortcut,
            title,
            text,
        })
        .await
    {
        Ok(id) => json(
            if id == 0 {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            &serde_json::json!({ "id": id }),
        ),
        Err(e) if e.0.contains("taken") => error(StatusCode::CONFLICT, &e.0),
        Err(e) if e.0.contains("no such") => error(StatusCode::NOT_FOUND, &e.0),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the canned response was not saved",
        ),
    }
}

async fn canned_delete(app: &Arc<App>, op: &AuthenticatedOperator, id: &str) -> Resp {
    if !op.role.supervises() {
        return forbidden();
    }
    match id.parse::<i64>() {
        Ok(id) => match app.storage.delete_canned(id).await {
            Ok(true) => no_content(),
            Ok(false) => error(StatusCode::NOT_FOUND, "no such canned response"),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "not deleted"),
        },
        Err(_) => error(StatusCode::NOT_FOUND, "no such canned response"),
    }
}

async fn inbox(app: &Arc<App>, op: &AuthenticatedOperator) -> Resp {
    let departments = if op.role.supervises() {
        Vec::new()
    } else {
        op.departments.clone()
    };
    match app.storage.offline_messages(departments).await {
        Ok(m) => json(
            StatusCode::OK,
            &serde_json::json!({"messages": m.iter().map(|m| serde_json::json!({
                "id": m.id, "name": m.name, "email": m.email, "department": m.department,
                "message": m.message, "ts": m.ts, "read": m.read,
            })).collect::<Vec<_>>()}),
        ),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the inbox is unavailable"),
    }
}

async fn inbox_read(app: &Arc<App>, op: &AuthenticatedOperator, id: &str) -> Resp {
    match id.parse::<i64>() {
        Ok(id) => match app.storage.mark_offline_read(id, op.id).await {
            Ok(true) => {
                app.hub.to_operators(OperatorEvent::InboxChanged);
                no_content()
            }
            _ => error(StatusCode::NOT_FOUND, "no such message"),
        },
        Err(_) => error(StatusCode::NOT_FOUND, "no such message"),
    }
}

/// Days since 1970-01-01 of a civil date (the inverse of `explain::civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A search bound: Unix ms, or a `YYYY-MM-DD` date (start of that UTC day).
fn parse_date(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let mut it = s.splitn(3, '-');
    let (y, m, d) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400_000)
}

fn query_params(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

async fn search(app: &Arc<App>, op: &AuthenticatedOperator, query: &str) -> Resp {
    if query.len() > 2000 {
        return error(StatusCode::BAD_REQUEST, "the query is too long");
    }
    let p = query_params(query);
    let get = |k: &str| p.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
    let from_ms = match get("from").as_str() {
        "" => now_ms() - 90 * 86_400_000,
        s => match parse_date(s) {
            Some(v) => v,
            None => return error(StatusCode::BAD_REQUEST, "from is a date (YYYY-MM-DD)"),
        },
    };
    let to_ms = match get("to").as_str() {
        "" => now_ms(),
        s => match parse_date(s) {
            Some(v) => v + if s.contains('-') { 86_400_000 - 1 } else { 0 },
            None => return error(StatusCode::BAD_REQUEST, "to is a date (YYYY-MM-DD)"),
        },
    };
    let operator = match get("operator").as_str() {
        "" => None,
        u => match app.storage.operator_by_name(u.to_string()).await {
            Ok(Some(o)) => Some(o.id),
            _ => return json(StatusCode::OK, &serde_json::json!({ "results": [] })),
        },
    };
    let q = SearchQuery {
        text: crate::visitor::bounded(&get("q"), 200),
        name: crate::visitor::bounded(&get("name"), 200),
        operator,
        department: crate::visitor::bounded(&get("department"), 64),
        from_ms,
        to_ms,
        only_operator: (!op.role.supervises()).then_some(op.id),
    };
    let fields: Vec<&str> = [
        ("text", !q.text.is_empty()),
        ("name", !q.name.is_empty()),
        ("operator", q.operator.is_some()),
        ("department", !q.department.is_empty()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(f, _)| *f)
    .collect();
    let hits = match app.storage.search(q).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "search failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "search is unavailable");
        }
    };
    app.audit
        .record(
            ids::TRANSCRIPT_ACCESS,
            "transcript_access",
            format!(
                "user={} action=search fields={} results={}",
                op.username,
                fields.join(","),
                hits.len()
            ),
        )
        .await;
    let mut results = Vec::new();
    for h in hits {
        let operator = match h.operator_id {
            Some(o) => Some(chat::display_name(app, o).await),
            None => None,
        };
        results.push(serde_json::json!({
            "chat_id": h.chat_id, "name": h.name, "operator": operator, "department": h.department,
            "started_ms": h.started_ms, "ended_ms": h.ended_ms, "snippet": h.snippet,
        }));
    }
    json(StatusCode::OK, &serde_json::json!({ "results": results }))
}

async fn operators(app: &Arc<App>) -> Resp {
    let list = match app.storage.operators().await {
        Ok(l) => l,
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let max = app.policy().chat.max_chats_per_operator;
    let core = app.core();
    let out: Vec<serde_json::Value> = list
        .iter()
        .filter(|o| !o.disabled)
        .map(|o| {
            serde_json::json!({
                "username": o.username, "display_name": o.display_name, "role": o.role,
                "presence": core.presence(o.id), "chats": core.load_of(o.id), "max_chats": max,
                "departments": o.departments,
            })
        })
        .collect();
    drop(core);
    json(StatusCode::OK, &serde_json::json!({ "operators": out }))
}

/// A TOTP secret offered at a time, not yet confirmed.
type PendingTotp = Mutex<HashMap<crate::core::OperatorId, (Vec<u8>, i64)>>;

/// TOTP secrets offered but not yet confirmed, by operator (memory only).
fn pending_totp() -> &'static PendingTotp {
    static P: OnceLock<PendingTotp> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

async fn totp_enroll(app: &Arc<App>, op: &AuthenticatedOperator) -> Resp {
    let _ = app;
    let secret = totp::new_secret();
    let uri = totp::otpauth_uri(&op.username, &secret);
    let svg = match totp::qr_svg(&uri) {
        Ok(s) => s,
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not draw the QR code",
            )
        }
    };
    let text = totp::base32(&secret);
    pending_totp()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(op.id, (secret, now_ms()));
    json(
        StatusCode::OK,
        &serde_json::json!({"secret": text, "otpauth_uri": uri, "qr_svg": svg}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    code: Secret,
}

redacted_debug!(ConfirmBody, "code redacted");

async fn totp_confirm(app: &Arc<App>, op: &AuthenticatedOperator, req: Request<Incoming>) -> Resp {
    let body: ConfirmBody = match read_json(req, 256).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let pending = pending_totp()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&op.id)
        .cloned();
    let Some((secret, created)) = pending.filter(|(_, t)| now_ms() - t < 15 * 60_000) else {
        return error(StatusCode::BAD_REQUEST, "start enrolment first");
    };
    let _ = created;
    let Some(step) = totp::verify(&secret, body.code.expose(), now_ms() / 1000, 0) else {
        return error(
            StatusCode::BAD_REQUEST,
            "that code is not right; check the time on your device",
        );
    };
    let (codes, hashes) = totp::recovery_codes();
    if let Err(e) = app.storage.enable_totp(op.id, secret, step, hashes).await {
        tracing::error!(error = %e, "TOTP not stored");
        return error(StatusCode::SERVICE_UNAVAILABLE, "two-factor was not saved");
    }
    pending_totp()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&op.id);
    app.auth.enrolled(op.id);
    app.audit
        .record(
            ids::TOTP_CHANGED,
            "totp_changed",
            format!("user={} action=enrolled", op.username),
        )
        .await;
    json(
        StatusCode::OK,
        &serde_json::json!({ "recovery_codes": codes }),
    )
}
