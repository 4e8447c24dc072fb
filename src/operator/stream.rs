//! The operator event stream: a snapshot on every (re)connect, then what concerns this
//! operator — their queue, their and their monitored chats, the visitor list, stats.

use super::auth::AuthenticatedOperator;
use crate::app::App;
use crate::chat;
use crate::core::{ChatId, OperatorId};
use crate::http;
use crate::hub::{OperatorEvent, OperatorSubscription};
use crate::storage::{EventKind, Sender};
use crate::visitor::event_json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// `Q` objects: the queue as this operator sees it (their departments).
pub fn queue_json(app: &App, op: OperatorId) -> serde_json::Value {
    let core = app.core();
    let out: Vec<serde_json::Value> = core
        .queue_for(op)
        .into_iter()
        .map(|(chat, since)| {
            let (name, question) = core.label(chat).unwrap_or_default();
            serde_json::json!({
                "chat_id": chat, "name": name, "question": question,
                "department": core.department(chat), "waiting_since": since,
            })
        })
        .collect();
    serde_json::Value::Array(out)
}

/// `V` objects: the live visitor list.
pub fn visitors_json(app: &App) -> serde_json::Value {
    let now = crate::storage::now_ms();
    let list = app.core().visitors.list();
    serde_json::Value::Array(
        list.into_iter()
            .map(|v| {
                serde_json::json!({
                    "visitor_id": v.visitor_id, "page_url": v.page_url, "page_title": v.page_title,
                    "referrer": v.referrer, "pages_viewed": v.pages_viewed, "first_seen": v.first_seen,
                    "last_seen": v.last_seen, "on_site_secs": (now - v.first_seen).max(0) / 1000,
                    "ip": v.ip, "user_agent": v.user_agent, "chatting": v.chat_id.is_some(),
                    "chat_id": v.chat_id, "invite": v.invite,
                })
            })
            .collect(),
    )
}

/// `C`: one chat with every event, as `viewer` sees it.
pub async fn chat_json(app: &App, chat: ChatId, viewer: OperatorId) -> Option<serde_json::Value> {
    let c = app.storage.chat(chat).await.ok()??;
    let events = app.storage.events_after(chat, 0).await.ok()?;
    let name = c.visitor.name.clone();
    let live_state = app.core().state(chat);
    let state = match (c.state.as_str(), live_state) {
        ("ended", _) => "ended",
        (_, Some(crate::core::ChatState::Queued { .. })) => "queued",
        _ => "active",
    };
    let assigned = app.core().assigned(chat).or(c.operator_id);
    let operator = match assigned {
        Some(o) => Some(chat::display_name(app, o).await),
        None => None,
    };
    let receipts = app.core().receipts(chat);
    let mut j = serde_json::json!({
        "chat_id": chat,
        "name": c.visitor.name,
        "email": c.visitor.email,
        "question": c.visitor.question,
        "department": c.department,
        "state": state,
        "operator": operator,
        "monitoring": assigned != Some(viewer),
        "events": events.iter().map(|e| event_json(e, &name)).collect::<Vec<_>>(),
    });
    if let Some(cat) = &c.wrapup_category {
        j["wrapup"] = serde_json::json!({"category": cat, "note": c.extra.wrapup_note});
    }
    if let Some(r) = c.rating {
        j["rating"] = serde_json::json!({"rating": r, "comment": c.extra.rating_comment});
    }
    if let Some(r) = receipts {
        j["receipts"] = serde_json::json!({"delivered_up_to": r.delivered_to_visitor, "read_up_to": r.read_by_visitor});
    }
    Some(j)
}

/// The `snapshot` object.
pub async fn snapshot(app: &App, op: &AuthenticatedOperator) -> serde_json::Value {
    let (mine, monitored) = {
        let core = app.core();
        (core.chats_of(op.id), core.monitored_by(op.id))
    };
    let mut chats = Vec::new();
    for c in mine {
        if let Some(j) = chat_json(app, c, op.id).await {
            chats.push(j);
        }
    }
    let mut monitoring = Vec::new();
    for c in monitored {
        if let Some(j) = chat_json(app, c, op.id).await {
            monitoring.push(j);
        }
    }
    let stats = crate::app::live_stats(app).await.unwrap_or_default();
    serde_json::json!({
        "me": super::me_json(app, op).await,
        "queue": queue_json(app, op.id),
        "chats": chats,
        "monitoring": monitoring,
        "visitors": visitors_json(app),
        "stats": stats,
        "inbox_unread": app.storage.offline_unread().await.unwrap_or(0),
    })
}

/// Marks the operator connected while at least one of their event streams is open.
struct Connected {
    app: Arc<App>,
    op: OperatorId,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.app.core().stream_closed(self.op);
    }
}

pub fn events(app: &Arc<App>, op: AuthenticatedOperator) -> http::Resp {
    let (tx, rx) = mpsc::channel(256);
    let sub = app.hub.subscribe_operator(op.id);
    tokio::spawn(run(app.clone(), op, sub, tx));
    http::sse_response(rx)
}

async fn run(
    app: Arc<App>,
    op: AuthenticatedOperator,
    sub: OperatorSubscription,
    tx: mpsc::Sender<bytes::Bytes>,
) {
    let OperatorSubscription { mut all, mut own } = sub;
    app.core().stream_opened(op.id);
    let _connected = Connected {
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
    // An operator came online: queued chats may now be routed to them.
    chat::route(&app).await;
    let mut keepalive = tokio::time::interval(Duration::from_secs(15));
    keepalive.tick().await;
    loop {
        let ev = tokio::select! {
            ev = own.recv() => ev,
            ev = all.recv() => ev,
            _ = keepalive.tick() => {
                if !app.auth.session_alive(&op.session_hash()) { return; }
                if tx.send(bytes::Bytes::from_static(b": keep-alive\n\n")).await.is_err() { return; }
                continue;
            }
            _ = tx.closed() => return,
        };
        let me = op.id;
        let frame = match ev {
            Ok(OperatorEvent::QueueChanged) => send(
                "queue",
                serde_json::json!({ "queue": queue_json(&app, me) }),
            ),
            Ok(OperatorEvent::Stored { audience, event }) if audience.contains(&me) => {
                let name = if event.from == Sender::Visitor {
                    let label = app.core().label(event.chat_id);
                    match label {
                        Some((n, _)) => n,
                        None => app
                            .storage
                            .chat(event.chat_id)
                            .await
                            .ok()
                            .flatten()
                            .map(|c| c.visitor.name)
                            .unwrap_or_default(),
                    }
                } else {
                    String::new()
                };
                // A visitor's event reached the assigned operator's open console.
                if event.from == Sender::Visitor
                    && event.kind == EventKind::Message
                    && app.core().assigned(event.chat_id) == Some(me)
                {
                    let delivered = app.core().delivered(event.chat_id, event.id);
                    if let Some(r) = delivered {
                        chat::receipts_to_visitor(&app, event.chat_id, r);
                    }
                }
                http::sse_frame(
                    event.kind.as_str(),
                    Some(event.id),
                    &event_json(&event, &name).to_string(),
                )
            }
            Ok(OperatorEvent::Typing {
                audience,
                chat,
                typing,
            }) if audience.contains(&me) => send(
                "typing",
                serde_json::json!({ "chat_id": chat, "from": "visitor", "typing": typing }),
            ),
            Ok(OperatorEvent::Receipt {
                audience,
                chat,
                receipts,
            }) if audience.contains(&me) => send(
                "receipt",
                serde_json::json!({ "chat_id": chat, "delivered_up_to": receipts.delivered_to_visitor, "read_up_to": receipts.read_by_visitor }),
            ),
            Ok(OperatorEvent::ChatChanged { audience, chat }) if audience.contains(&me) => {
                match chat_json(&app, chat, me).await {
                    Some(j) => send("chat", j),
                    None => continue,
                }
            }
            Ok(OperatorEvent::ChatRemoved { operator, chat }) if operator == me => {
                send("chat_removed", serde_json::json!({ "chat_id": chat }))
            }
            Ok(OperatorEvent::VisitorsChanged) => send(
                "visitors",
                serde_json::json!({ "visitors": visitors_json(&app) }),
            ),
            Ok(OperatorEvent::InviteUpdate {
                operator,
                invite,
                chat,
            }) if operator == me => send(
                "invite",
                serde_json::json!({ "invite_id": invite.id, "visitor_id": invite.visitor, "status": invite.status, "chat_id": chat }),
            ),
            Ok(OperatorEvent::Stats(text)) => http::sse_frame("stats", None, &text),
            Ok(OperatorEvent::InboxChanged) => send(
                "inbox",
                serde_json::json!({ "unread": app.storage.offline_unread().await.unwrap_or(0) }),
            ),
            Ok(OperatorEvent::SessionsEnded { operator, session }) if operator == me => {
                let mine = op.session_hash();
                if session == Some(mine) || (session.is_none() && !app.auth.session_alive(&mine)) {
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
