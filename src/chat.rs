//! Carrying out chat decisions: the core decides, storage commits, the hub announces.
//!
//! Every change follows one shape: lock the core and decide (which also marks the change
//! pending), store the event (group commit), and on commit — on the writer thread, in
//! commit order — confirm the decision in the core and publish; if storing fails, revert.
//! Both the visitor and the operator API go through these functions.
#![forbid(unsafe_code)]

use crate::app::App;
use crate::core::{ChatId, OperatorId, Receipts, Refusal, Routing, TransferTarget};
use crate::hub::{OperatorEvent, VisitorEvent};
use crate::operator::auth::AuthenticatedOperator;
use crate::storage::{
    now_ms, ChatStart, EventKind, Sender, StateChange, StorageError, StoredEvent, VisitorInfo,
};
use std::sync::Arc;

/// Why a chat action did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    Refused(Refusal),
    NotSaved(String),
}

impl From<Refusal> for ActionError {
    fn from(r: Refusal) -> Self {
        ActionError::Refused(r)
    }
}

impl From<StorageError> for ActionError {
    fn from(e: StorageError) -> Self {
        ActionError::NotSaved(e.0)
    }
}

/// Routing settings from the policy in force.
pub fn routing(app: &App) -> Routing {
    let p = app.policy();
    Routing {
        auto: p.chat.routing == "auto",
        max_chats: p.chat.max_chats_per_operator,
        departments: p.chat.departments.clone(),
    }
}

/// Announce a committed event to the visitor and to everyone who sees the chat.
pub fn publish(app: &App, ev: &StoredEvent) {
    let audience = app.core().audience(ev.chat_id);
    app.hub.publish(ev, audience);
}

/// Tell every queued visitor their position and every operator the new queue.
pub fn queue_changed(app: &App) {
    let queue = app.core().queue();
    for (i, (chat, _)) in queue.iter().enumerate() {
        app.hub.to_chat(*chat, VisitorEvent::QueuePosition(i + 1));
    }
    app.hub.to_operators(OperatorEvent::QueueChanged);
}

/// The operator side got further (delivered to or read by the operator): only the visitor
/// is told, since an operator's receipt frame carries the visitor's progress alone.
pub fn receipts_to_visitor(app: &App, chat: ChatId, r: Receipts) {
    app.hub.to_chat(chat, VisitorEvent::Receipt(r));
}

/// The visitor got further (delivered to or read by the visitor): only the operators who
/// see the chat are told, since the visitor's receipt frame carries the operator's progress.
pub fn receipts_to_operators(app: &App, chat: ChatId, r: Receipts) {
    let audience = app.core().audience(chat);
    app.hub.to_operators(OperatorEvent::Receipt {
        audience: audience.into(),
        chat,
        receipts: r,
    });
}

fn chat_changed(app: &App, chat: ChatId, operators: &[OperatorId]) {
    if !operators.is_empty() {
        app.hub.to_operators(OperatorEvent::ChatChanged {
            audience: operators.to_vec().into(),
            chat,
        });
    }
}

/// Store one event (optionally changing the chat's state) and publish it on commit.
#[allow(clippy::too_many_arguments)]
pub async fn post(
    app: &Arc<App>,
    chat: ChatId,
    kind: EventKind,
    from: Sender,
    operator: Option<OperatorId>,
    author: String,
    text: String,
    change: Option<StateChange>,
) -> Result<StoredEvent, StorageError> {
    let app2 = app.clone();
    app.storage
        .append_event(
            chat,
            kind,
            from,
            operator,
            author,
            text,
            change,
            move |ev| publish(&app2, ev),
        )
        .await
}

/// A new chat from a visitor: queued (or assigned, for an accepted invitation), announced,
/// then routed.
pub async fn start(
    app: &Arc<App>,
    token_hash: [u8; 32],
    visitor: VisitorInfo,
    start: ChatStart,
    invited_by: Option<(OperatorId, String)>,
) -> Result<StoredEvent, StorageError> {
    let app2 = app.clone();
    let department = start.department.clone();
    let visitor_id = start.visitor_id.clone();
    let label = (visitor.name.clone(), visitor.question.clone());
    let mut start = start;
    start.operator = invited_by.as_ref().map(|(op, _)| *op);
    let assigned = start.operator;
    let started = app
        .storage
        .create_chat(token_hash.to_vec(), visitor, start, move |ev| {
            {
                let mut core = app2.core();
                match assigned {
                    Some(op) => core.open_active(ev.chat_id, token_hash, op, department, ev.ts),
                    None => core.open_queued(ev.chat_id, token_hash, ev.ts, department),
                }
                core.set_label(ev.chat_id, label.0, label.1);
                if let Some(v) = &visitor_id {
                    core.visitors.set_chat(v, Some(ev.chat_id));
                }
            }
            publish(&app2, ev);
            queue_changed(&app2);
        })
        .await?;
    if let Some((op, name)) = invited_by {
        post(
            app,
            started.chat_id,
            EventKind::Joined,
            Sender::Operator,
            Some(op),
            name,
            String::new(),
            None,
        )
        .await?;
        chat_changed(app, started.chat_id, &[op]);
    }
    route(app).await;
    Ok(started)
}

/// The display name of an operator (cached; from the database on a miss).
pub async fn display_name(app: &App, op: OperatorId) -> String {
    if let Some(n) = app.names().get(&op) {
        return n.clone();
    }
    let name = match app.storage.operator_by_id(op).await {
        Ok(Some(o)) => o.display_name,
        _ => format!("operator {}", op.0),
    };
    app.names().insert(op, name.clone());
    name
}

/// Automatic routing: assign what the core decides, store each assignment.
pub async fn route(app: &Arc<App>) {
    let r = routing(app);
    if !r.auto {
        return;
    }
    let assignments = app.core().route(&r, now_ms());
    for (chat, op) in assignments {
        let name = display_name(app, op).await;
        if let Err(e) = assign_and_announce(app, chat, op, name, None).await {
            tracing::error!(error = %e, chat = chat.0, "assignment not stored");
        }
    }
}

/// Store a decided assignment (accept, routing, transfer, take-over) as a `joined` event.
async fn assign_and_announce(
    app: &Arc<App>,
    chat: ChatId,
    op: OperatorId,
    name: String,
    previous: Option<OperatorId>,
) -> Result<(), StorageError> {
    let app2 = app.clone();
    let res = app
        .storage
        .append_event(
            chat,
            EventKind::Joined,
            Sender::Operator,
            Some(op),
            name,
            String::new(),
            Some(StateChange::Active),
            move |ev| {
                app2.core().confirm(chat);
                publish(&app2, ev);
                if let Some(prev) = previous {
                    app2.hub.to_operators(OperatorEvent::ChatRemoved {
                        operator: prev,
                        chat,
                    });
                }
                let audience = app2.core().audience(chat);
                chat_changed(&app2, chat, &audience);
                queue_changed(&app2);
            },
        )
        .await;
    if res.is_err() {
        app.core().revert(chat);
    }
    res.map(|_| ())
}

/// An operator accepts a queued chat.
pub async fn accept(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    chat: ChatId,
) -> Result<(), ActionError> {
    let r = routing(app);
    app.core().accept(op.id, chat, &r)?;
    assign_and_announce(app, chat, op.id, op.display_name.clone(), None).await?;
    Ok(())
}

/// End a chat from either side.
pub async fn end(app: &Arc<App>, chat: ChatId, from: Sender) -> Result<StoredEvent, ActionError> {
    let (operator, audience) = {
        let mut core = app.core();
        let operator = core.end(chat)?;
        (operator, core.audience(chat))
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
            Some(StateChange::Ended),
            move |ev| {
                app2.hub.publish(ev, audience.clone());
                {
                    let mut core = app2.core();
                    core.confirm(chat);
                    core.visitors.chat_ended(chat);
                }
                chat_changed(&app2, chat, &audience);
                queue_changed(&app2);
                app2.hub.forget_chat(chat);
            },
        )
        .await;
    match res {
        Ok(ev) => {
            route(app).await;
            Ok(ev)
        }
        Err(e) => {
            app.core().revert(chat);
            Err(e.into())
        }
    }
}

/// Transfer an assigned chat to another operator or to a department, with a note that
/// only operators see.
pub async fn transfer(
    app: &Arc<App>,
    op: &AuthenticatedOperator,
    chat: ChatId,
    target: TransferTarget,
    target_name: String,
    note: String,
) -> Result<(), ActionError> {
    let r = routing(app);
    let decided = app
        .core()
        .transfer(op.id, chat, target.clone(), &r, now_ms())?;
    let text = if note.is_empty() {
        format!("transferred to {target_name}")
    } else {
        format!("transferred to {target_name}: {note}")
    };
    // The note is stored first (operators only); then the change of hands.
    let audience_before = app.core().audience(chat);
    let mut audience = audience_before.clone();
    if let TransferTarget::Operator(to) = &target {
        audience.push(*to);
    }
    let app2 = app.clone();
    let noted = app
        .storage
        .append_event(
            chat,
            EventKind::Transfer,
            Sender::Operator,
            Some(op.id),
            op.display_name.clone(),
            text,
            None,
            move |ev| app2.hub.publish(ev, audience),
        )
        .await;
    if let Err(e) = noted {
        app.core().revert(chat);
        return Err(e.into());
    }
    match decided.target {
        TransferTarget::Operator(to) => {
            assign_and_announce(app, chat, to, target_name, Some(op.id)).await?;
        }
        TransferTarget::Department(d) => {
            requeue(
                app,
                chat,
                Some(d.clone()),
                format!("transferred to {d}"),
                Some(op.id),
            )
            .await?;
            route(app).await;
        }
    }
    Ok(())
}

/// A supervisor takes a chat over.
pub async fn take_over(
    app: &Arc<App>,
    sup: &AuthenticatedOperator,
    chat: ChatId,
) -> Result<(), ActionError> {
    let from = app.core().take_over(sup.id, chat)?;
    assign_and_announce(app, chat, sup.id, sup.display_name.clone(), Some(from)).await?;
    Ok(())
}

/// Store a decided move back to the queue (confirm on commit, revert on failure).
async fn requeue(
    app: &Arc<App>,
    chat: ChatId,
    department: Option<String>,
    reason: String,
    removed_from: Option<OperatorId>,
) -> Result<(), StorageError> {
    let app2 = app.clone();
    let res = app
        .storage
        .append_event(
            chat,
            EventKind::Requeued,
            Sender::System,
            None,
            String::new(),
            reason,
            Some(StateChange::Queued { department }),
            move |ev| {
                app2.core().confirm(chat);
                publish(&app2, ev);
                if let Some(operator) = removed_from {
                    app2.hub
                        .to_operators(OperatorEvent::ChatRemoved { operator, chat });
                }
                queue_changed(&app2);
            },
        )
        .await;
    if res.is_err() {
        app.core().revert(chat);
    }
    res.map(|_| ())
}

/// An operator logged out: their chats go back to the queue, then routing runs.
pub async fn requeue_operator(app: &Arc<App>, op: OperatorId) {
    let chats = app.core().requeue_all(op, now_ms());
    for chat in chats {
        let reason = "the operator left; waiting for another operator".to_string();
        if let Err(e) = requeue(app, chat, None, reason, None).await {
            tracing::error!(error = %e, chat = chat.0, "requeue not stored");
        }
    }
    queue_changed(app);
    route(app).await;
}
