//! In-memory fan-out of chat events to open event streams.
//!
//! Stored events are published by the storage writer right after their commit, in commit
//! order; streams that fall behind re-read from the database, so nothing is skipped.
#![forbid(unsafe_code)]

use crate::core::{ChatId, OperatorId};
use crate::storage::StoredEvent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// What operator event streams receive.
#[derive(Debug, Clone)]
pub enum OperatorEvent {
    /// The waiting queue changed.
    QueueChanged,
    /// A stored event of a chat assigned to `operator`.
    Stored {
        operator: OperatorId,
        event: Arc<StoredEvent>,
    },
    /// The visitor of a chat assigned to `operator` is (not) typing.
    Typing {
        operator: OperatorId,
        chat: ChatId,
        typing: bool,
    },
    /// A chat assigned to `operator` changed hands or state; re-send it.
    ChatChanged { operator: OperatorId, chat: ChatId },
    /// These sessions (all of an operator's, when `session` is `None`) ended.
    SessionsEnded {
        operator: OperatorId,
        session: Option<[u8; 32]>,
    },
}

/// What a visitor's event stream receives.
#[derive(Debug, Clone)]
pub enum VisitorEvent {
    Stored(Arc<StoredEvent>),
    QueuePosition(usize),
    OperatorTyping(bool),
}

impl OperatorEvent {
    /// The one operator this event is for; `None` for events every operator gets.
    fn operator(&self) -> Option<OperatorId> {
        match self {
            OperatorEvent::QueueChanged => None,
            OperatorEvent::Stored { operator, .. }
            | OperatorEvent::Typing { operator, .. }
            | OperatorEvent::ChatChanged { operator, .. }
            | OperatorEvent::SessionsEnded { operator, .. } => Some(*operator),
        }
    }
}

/// An operator event stream's subscription: what every operator gets, and its own events.
#[derive(Debug)]
pub struct OperatorSubscription {
    pub all: broadcast::Receiver<OperatorEvent>,
    pub mine: broadcast::Receiver<OperatorEvent>,
}

#[derive(Debug)]
pub struct Hub {
    operators: broadcast::Sender<OperatorEvent>,
    /// One channel per operator with open streams, so a chat's events wake only the
    /// streams of the operator it is assigned to, not every operator's.
    operator: Mutex<HashMap<OperatorId, broadcast::Sender<OperatorEvent>>>,
    chats: Mutex<HashMap<ChatId, broadcast::Sender<VisitorEvent>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            operators: broadcast::channel(1024).0,
            operator: Mutex::new(HashMap::new()),
            chats: Mutex::new(HashMap::new()),
        }
    }

    pub fn subscribe_operator(&self, op: OperatorId) -> OperatorSubscription {
        let mut map = self.operator.lock().unwrap_or_else(|p| p.into_inner());
        OperatorSubscription {
            all: self.operators.subscribe(),
            mine: map
                .entry(op)
                .or_insert_with(|| broadcast::channel(1024).0)
                .subscribe(),
        }
    }

    pub fn to_operators(&self, e: OperatorEvent) {
        match e.operator() {
            None => {
                let _ = self.operators.send(e);
            }
            Some(op) => {
                let mut map = self.operator.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tx) = map.get(&op) {
                    if tx.send(e).is_err() {
                        // None of this operator's streams is open any more.
                        map.remove(&op);
                    }
                }
            }
        }
    }

    pub fn subscribe_chat(&self, chat: ChatId) -> broadcast::Receiver<VisitorEvent> {
        let mut map = self.chats.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(chat)
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe()
    }

    pub fn to_chat(&self, chat: ChatId, e: VisitorEvent) {
        let mut map = self.chats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(&chat) {
            if tx.send(e).is_err() {
                // Nobody listens any more.
                map.remove(&chat);
            }
        }
    }

    /// Publish a committed event to the chat's visitor and its operator (if any).
    pub fn publish(&self, event: &StoredEvent, operator: Option<OperatorId>) {
        let event = Arc::new(event.clone());
        self.to_chat(event.chat_id, VisitorEvent::Stored(event.clone()));
        if let Some(operator) = operator {
            self.to_operators(OperatorEvent::Stored { operator, event });
        }
    }

    pub fn forget_chat(&self, chat: ChatId) {
        let mut map = self.chats.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&chat);
    }
}
