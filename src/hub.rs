//! In-memory fan-out of chat events to open event streams.
//!
//! Stored events are published by the storage writer right after their commit, in commit
//! order; streams that fall behind re-read from the database, so nothing is skipped.
#![forbid(unsafe_code)]

use crate::core::visitors::Invite;
use crate::core::{ChatId, OperatorId, Receipts};
use crate::storage::StoredEvent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// What operator event streams receive; each stream keeps what concerns its operator.
#[derive(Debug, Clone)]
pub enum OperatorEvent {
    /// The waiting queue changed.
    QueueChanged,
    /// A stored event, for the operators who see that chat (assigned and monitoring).
    Stored {
        audience: Arc<[OperatorId]>,
        event: Arc<StoredEvent>,
    },
    /// The visitor of a chat is (not) typing.
    Typing {
        audience: Arc<[OperatorId]>,
        chat: ChatId,
        typing: bool,
    },
    /// How far the visitor got, for the operators who see that chat.
    Receipt {
        audience: Arc<[OperatorId]>,
        chat: ChatId,
        receipts: Receipts,
    },
    /// These operators should re-send this chat (accepted, transferred, ended, wrapped up).
    ChatChanged {
        audience: Arc<[OperatorId]>,
        chat: ChatId,
    },
    /// The chat is no longer this operator's.
    ChatRemoved { operator: OperatorId, chat: ChatId },
    /// The live visitor list changed.
    VisitorsChanged,
    /// An invitation of this operator changed state.
    InviteUpdate {
        operator: OperatorId,
        invite: Invite,
        chat: Option<ChatId>,
    },
    /// New live stats (already serialised).
    Stats(Arc<str>),
    /// The offline inbox changed.
    InboxChanged,
    /// These sessions (all of an operator's, when `session` is `None`) ended.
    SessionsEnded {
        operator: OperatorId,
        session: Option<[u8; 32]>,
    },
}

impl OperatorEvent {
    /// The operators this event is for; `None` for events every operator gets.
    fn recipients(&self) -> Option<&[OperatorId]> {
        match self {
            OperatorEvent::QueueChanged
            | OperatorEvent::VisitorsChanged
            | OperatorEvent::Stats(_)
            | OperatorEvent::InboxChanged => None,
            OperatorEvent::Stored { audience, .. }
            | OperatorEvent::Typing { audience, .. }
            | OperatorEvent::Receipt { audience, .. }
            | OperatorEvent::ChatChanged { audience, .. } => Some(audience),
            OperatorEvent::ChatRemoved { operator, .. }
            | OperatorEvent::InviteUpdate { operator, .. }
            | OperatorEvent::SessionsEnded { operator, .. } => Some(std::slice::from_ref(operator)),
        }
    }
}

/// An operator event stream's subscription: what every operator gets, and its own events.
#[derive(Debug)]
pub struct OperatorSubscription {
    pub all: broadcast::Receiver<OperatorEvent>,
    pub own: broadcast::Receiver<OperatorEvent>,
}

/// What a visitor's chat event stream receives.
#[derive(Debug, Clone)]
pub enum VisitorEvent {
    Stored(Arc<StoredEvent>),
    QueuePosition(usize),
    OperatorTyping(bool),
    Receipt(Receipts),
}

/// What a browsing visitor's presence stream receives.
#[derive(Debug, Clone)]
pub enum PresenceEvent {
    Invite(Invite, String),
    InviteWithdrawn(u64),
}

#[derive(Debug)]
pub struct Hub {
    /// Events for every operator (queue, visitor list, stats, inbox).
    operators: broadcast::Sender<OperatorEvent>,
    /// One channel per operator with open streams, so a chat's events wake only the streams
    /// of the operators who see that chat, not every operator's.
    operator: Mutex<HashMap<OperatorId, broadcast::Sender<OperatorEvent>>>,
    chats: Mutex<HashMap<ChatId, broadcast::Sender<VisitorEvent>>>,
    presence: Mutex<HashMap<String, broadcast::Sender<PresenceEvent>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            operators: broadcast::channel(4096).0,
            operator: Mutex::new(HashMap::new()),
            chats: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
        }
    }

    pub fn subscribe_operator(&self, op: OperatorId) -> OperatorSubscription {
        let all = self.operators.subscribe();
        let own = lock(&self.operator)
            .entry(op)
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe();
        OperatorSubscription { all, own }
    }

    pub fn to_operators(&self, e: OperatorEvent) {
        let Some(recipients) = e.recipients() else {
            let _ = self.operators.send(e);
            return;
        };
        let mut map = lock(&self.operator);
        for op in recipients {
            if let Some(tx) = map.get(op) {
                if tx.send(e.clone()).is_err() {
                    // None of this operator's streams is open any more.
                    map.remove(op);
                }
            }
        }
    }

    pub fn subscribe_chat(&self, chat: ChatId) -> broadcast::Receiver<VisitorEvent> {
        lock(&self.chats)
            .entry(chat)
            // Small on purpose: each slot is memory per idle visitor, and a stream that falls
            // behind re-reads what it missed from the database.
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe()
    }

    /// How many visitor streams are open for this chat.
    pub fn chat_listeners(&self, chat: ChatId) -> usize {
        lock(&self.chats)
            .get(&chat)
            .map_or(0, |tx| tx.receiver_count())
    }

    /// Is a visitor stream open for this chat?
    pub fn chat_has_listener(&self, chat: ChatId) -> bool {
        self.chat_listeners(chat) > 0
    }

    pub fn to_chat(&self, chat: ChatId, e: VisitorEvent) {
        let mut map = lock(&self.chats);
        if let Some(tx) = map.get(&chat) {
            if tx.send(e).is_err() {
                map.remove(&chat);
            }
        }
    }

    /// Publish a committed event to the chat's visitor (if they may see it) and to the
    /// operators who see the chat.
    pub fn publish(&self, event: &StoredEvent, audience: Vec<OperatorId>) {
        let event = Arc::new(event.clone());
        if event.kind.visitor_visible() {
            self.to_chat(event.chat_id, VisitorEvent::Stored(event.clone()));
        }
        if !audience.is_empty() {
            self.to_operators(OperatorEvent::Stored {
                audience: audience.into(),
                event,
            });
        }
    }

    pub fn forget_chat(&self, chat: ChatId) {
        lock(&self.chats).remove(&chat);
    }

    pub fn subscribe_presence(&self, visitor: &str) -> broadcast::Receiver<PresenceEvent> {
        lock(&self.presence)
            .entry(visitor.to_string())
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe()
    }

    pub fn to_presence(&self, visitor: &str, e: PresenceEvent) {
        let mut map = lock(&self.presence);
        if let Some(tx) = map.get(visitor) {
            if tx.send(e).is_err() {
                map.remove(visitor);
            }
        }
    }
}
