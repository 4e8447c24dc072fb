//! The chat domain: chats, the waiting queue, assignment and presence.
//!
//! Architecture invariant: this module performs no I/O and knows nothing of tokio, hyper,
//! rusqlite or nix. Callers ask it for a decision (`accept`, `visitor_chat`, …), carry out
//! the I/O, and report back (`confirm_*`, `revert_*`). Every decision is unit-tested here.
#![forbid(unsafe_code)]

pub mod redact;

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A chat's id (the database row id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChatId(pub i64);

/// An operator account's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OperatorId(pub i64);

/// Proof that a visitor token was matched to a live chat. Only [`ChatCore::visitor_chat`]
/// builds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitorChat {
    chat: ChatId,
}

impl VisitorChat {
    pub fn id(&self) -> ChatId {
        self.chat
    }
}

/// Proof that an operator may act on a chat (it is assigned to them). Only
/// [`ChatCore::operator_chat`] and [`ChatCore::accept`] build one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorChat {
    chat: ChatId,
    operator: OperatorId,
}

impl OperatorChat {
    pub fn id(&self) -> ChatId {
        self.chat
    }
    pub fn operator(&self) -> OperatorId {
        self.operator
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatState {
    Queued {
        since_ms: i64,
    },
    Active {
        operator: OperatorId,
    },
    /// End decided, being stored.
    Ending {
        operator: Option<OperatorId>,
    },
}

#[derive(Debug, Clone)]
struct Chat {
    state: ChatState,
    token_hash: [u8; 32],
    /// Previous state, while an accept or end is being stored.
    pending_from: Option<ChatState>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such live chat, or not one this party may see (the two look the same).
    NotFound,
    /// Another operator accepted the chat first.
    AlreadyTaken,
    /// The chat has ended or is ending.
    Ended,
    /// The operator is at their limit of concurrent chats.
    AtCapacity,
    /// The chat is still waiting for an operator.
    NotYetAccepted,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NotFound => "no such chat",
            Refusal::AlreadyTaken => "another operator already accepted this chat",
            Refusal::Ended => "the chat has ended",
            Refusal::AtCapacity => "you are at your limit of concurrent chats",
            Refusal::NotYetAccepted => "the chat has not been accepted yet",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Away,
    Offline,
}

#[derive(Debug, Clone)]
struct Operator {
    presence: Presence,
    /// Open sessions; online while at least one is connected.
    sessions: usize,
    chats: BTreeSet<ChatId>,
    max_chats: usize,
}

/// The in-memory chat state. Not thread-safe by itself; the caller wraps it in a mutex.
#[derive(Debug, Default)]
pub struct ChatCore {
    chats: HashMap<ChatId, Chat>,
    by_token: HashMap<[u8; 32], ChatId>,
    /// Queued chats in arrival order (chat ids increase with arrival).
    queue: BTreeMap<ChatId, i64>,
    operators: HashMap<OperatorId, Operator>,
}

/// Default most concurrent chats per operator.
pub const DEFAULT_MAX_CHATS: usize = 8;

impl ChatCore {
    pub fn new() -> ChatCore {
        ChatCore::default()
    }

    /// A new (or restored) queued chat.
    pub fn open_queued(&mut self, id: ChatId, token_hash: [u8; 32], since_ms: i64) {
        self.chats.insert(
            id,
            Chat {
                state: ChatState::Queued { since_ms },
                token_hash,
                pending_from: None,
            },
        );
        self.by_token.insert(token_hash, id);
        self.queue.insert(id, since_ms);
    }

    /// A restored active chat (start-up).
    pub fn restore_active(&mut self, id: ChatId, token_hash: [u8; 32], operator: OperatorId) {
        self.chats.insert(
            id,
            Chat {
                state: ChatState::Active { operator },
                token_hash,
                pending_from: None,
            },
        );
        self.by_token.insert(token_hash, id);
        self.operator_mut(operator).chats.insert(id);
    }

    fn operator_mut(&mut self, op: OperatorId) -> &mut Operator {
        self.operators.entry(op).or_insert(Operator {
            presence: Presence::Offline,
            sessions: 0,
            chats: BTreeSet::new(),
            max_chats: DEFAULT_MAX_CHATS,
        })
    }

    /// Match a visitor token (its hash) to a live chat.
    pub fn visitor_chat(&self, token_hash: &[u8; 32]) -> Option<VisitorChat> {
        let id = *self.by_token.get(token_hash)?;
        match self.chats.get(&id)?.state {
            ChatState::Ending { .. } => None,
            _ => Some(VisitorChat { chat: id }),
        }
    }

    /// The chat's state, if it is live.
    pub fn state(&self, id: ChatId) -> Option<ChatState> {
        self.chats.get(&id).map(|c| c.state)
    }

    /// The operator a chat is assigned to.
    pub fn assigned(&self, id: ChatId) -> Option<OperatorId> {
        match self.chats.get(&id)?.state {
            ChatState::Active { operator } => Some(operator),
            _ => None,
        }
    }

    /// May this operator act on this chat? Unassigned and foreign chats look alike.
    pub fn operator_chat(&self, op: OperatorId, id: ChatId) -> Result<OperatorChat, Refusal> {
        match self.chats.get(&id).map(|c| c.state) {
            Some(ChatState::Active { operator }) if operator == op => Ok(OperatorChat {
                chat: id,
                operator: op,
            }),
            _ => Err(Refusal::NotFound),
        }
    }

    /// An operator accepts a queued chat. Decided atomically: of two operators accepting
    /// the same chat, exactly one wins. Call [`confirm`](Self::confirm) once stored or
    /// [`revert`](Self::revert) if storing failed.
    pub fn accept(&mut self, op: OperatorId, id: ChatId) -> Result<OperatorChat, Refusal> {
        let max = self.operator_mut(op).max_chats;
        let load = self.operator_mut(op).chats.len();
        let chat = self.chats.get_mut(&id).ok_or(Refusal::NotFound)?;
        match chat.state {
            ChatState::Queued { .. } => {}
            ChatState::Active { operator } if operator == op => {
                return Err(Refusal::AlreadyTaken);
            }
            ChatState::Active { .. } => return Err(Refusal::AlreadyTaken),
            ChatState::Ending { .. } => return Err(Refusal::Ended),
        }
        if load >= max {
            return Err(Refusal::AtCapacity);
        }
        chat.pending_from = Some(chat.state);
        chat.state = ChatState::Active { operator: op };
        self.queue.remove(&id);
        self.operator_mut(op).chats.insert(id);
        Ok(OperatorChat {
            chat: id,
            operator: op,
        })
    }

    /// End a live chat (either side). Returns the operator it was assigned to.
    pub fn end(&mut self, id: ChatId) -> Result<Option<OperatorId>, Refusal> {
        let chat = self.chats.get_mut(&id).ok_or(Refusal::NotFound)?;
        let operator = match chat.state {
            ChatState::Queued { .. } => None,
            ChatState::Active { operator } => Some(operator),
            ChatState::Ending { .. } => return Err(Refusal::Ended),
        };
        chat.pending_from = Some(chat.state);
        chat.state = ChatState::Ending { operator };
        self.queue.remove(&id);
        Ok(operator)
    }

    /// The pending accept or end of `id` was stored.
    pub fn confirm(&mut self, id: ChatId) {
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        chat.pending_from = None;
        if let ChatState::Ending { operator } = chat.state {
            let token = chat.token_hash;
            self.chats.remove(&id);
            self.by_token.remove(&token);
            if let Some(op) = operator {
                self.operator_mut(op).chats.remove(&id);
            }
        }
    }

    /// The pending accept or end of `id` could not be stored: undo it.
    pub fn revert(&mut self, id: ChatId) {
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        let Some(prev) = chat.pending_from.take() else {
            return;
        };
        let current = chat.state;
        chat.state = prev;
        if let ChatState::Active { operator } = current {
            if !matches!(prev, ChatState::Active { .. }) {
                self.operator_mut(operator).chats.remove(&id);
            }
        }
        if let ChatState::Queued { since_ms } = prev {
            self.queue.insert(id, since_ms);
        }
    }

    /// Queued chats, oldest first, with the time they started waiting.
    pub fn queue(&self) -> Vec<(ChatId, i64)> {
        self.queue.iter().map(|(id, since)| (*id, *since)).collect()
    }

    /// 1-based position in the queue.
    pub fn queue_position(&self, id: ChatId) -> Option<usize> {
        self.queue.keys().position(|c| *c == id).map(|p| p + 1)
    }

    /// The chats assigned to an operator.
    pub fn chats_of(&self, op: OperatorId) -> Vec<ChatId> {
        self.operators
            .get(&op)
            .map(|o| o.chats.iter().copied().collect())
            .unwrap_or_default()
    }

    /// An operator session connected (online) or disconnected.
    pub fn session_opened(&mut self, op: OperatorId) {
        let o = self.operator_mut(op);
        o.sessions += 1;
        if o.presence == Presence::Offline {
            o.presence = Presence::Online;
        }
    }

    pub fn session_closed(&mut self, op: OperatorId) {
        let o = self.operator_mut(op);
        o.sessions = o.sessions.saturating_sub(1);
        if o.sessions == 0 {
            o.presence = Presence::Offline;
        }
    }

    pub fn set_presence(&mut self, op: OperatorId, p: Presence) {
        self.operator_mut(op).presence = p;
    }

    pub fn presence(&self, op: OperatorId) -> Presence {
        self.operators
            .get(&op)
            .map(|o| o.presence)
            .unwrap_or(Presence::Offline)
    }

    /// Is any operator online to take chats?
    pub fn anyone_online(&self) -> bool {
        self.operators
            .values()
            .any(|o| o.presence == Presence::Online)
    }

    pub fn live_chats(&self) -> usize {
        self.chats.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn two_operators_accepting_the_same_chat_one_wins() {
        let mut c = ChatCore::new();
        c.open_queued(ChatId(1), t(1), 0);
        let a = c.accept(OperatorId(10), ChatId(1));
        let b = c.accept(OperatorId(11), ChatId(1));
        assert!(a.is_ok());
        assert_eq!(b, Err(Refusal::AlreadyTaken));
        c.confirm(ChatId(1));
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(10)));
        assert!(c.operator_chat(OperatorId(11), ChatId(1)).is_err());
        assert!(c.operator_chat(OperatorId(10), ChatId(1)).is_ok());
    }

    #[test]
    fn queue_positions_follow_arrival_and_departures() {
        let mut c = ChatCore::new();
        for i in 1..=3 {
            c.open_queued(ChatId(i), t(i as u8), i);
        }
        assert_eq!(c.queue_position(ChatId(3)), Some(3));
        c.accept(OperatorId(1), ChatId(1)).unwrap();
        assert_eq!(c.queue_position(ChatId(3)), Some(2));
        // A visitor who leaves while queued leaves the queue at once.
        c.end(ChatId(2)).unwrap();
        assert_eq!(c.queue_position(ChatId(3)), Some(1));
        c.confirm(ChatId(2));
        assert!(c.visitor_chat(&t(2)).is_none());
        assert_eq!(c.queue(), vec![(ChatId(3), 3)]);
    }

    #[test]
    fn failed_store_reverts_accept_and_end() {
        let mut c = ChatCore::new();
        c.open_queued(ChatId(1), t(1), 5);
        c.accept(OperatorId(1), ChatId(1)).unwrap();
        c.revert(ChatId(1));
        assert_eq!(c.queue_position(ChatId(1)), Some(1));
        assert!(c.chats_of(OperatorId(1)).is_empty());
        c.accept(OperatorId(2), ChatId(1)).unwrap();
        c.confirm(ChatId(1));
        c.end(ChatId(1)).unwrap();
        assert_eq!(
            c.end(ChatId(1)),
            Err(Refusal::Ended),
            "ending twice is refused"
        );
        c.revert(ChatId(1));
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(2)));
    }

    #[test]
    fn operator_at_capacity_cannot_accept() {
        let mut c = ChatCore::new();
        for i in 0..=DEFAULT_MAX_CHATS as i64 {
            c.open_queued(ChatId(i), t(i as u8), i);
        }
        for i in 0..DEFAULT_MAX_CHATS as i64 {
            c.accept(OperatorId(1), ChatId(i)).unwrap();
        }
        assert_eq!(
            c.accept(OperatorId(1), ChatId(DEFAULT_MAX_CHATS as i64)),
            Err(Refusal::AtCapacity)
        );
        assert_eq!(c.queue_position(ChatId(DEFAULT_MAX_CHATS as i64)), Some(1));
    }

    #[test]
    fn presence_follows_sessions() {
        let mut c = ChatCore::new();
        assert!(!c.anyone_online());
        c.session_opened(OperatorId(1));
        c.session_opened(OperatorId(1));
        assert!(c.anyone_online());
        c.session_closed(OperatorId(1));
        assert!(c.anyone_online());
        c.session_closed(OperatorId(1));
        assert!(!c.anyone_online());
        c.session_opened(OperatorId(1));
        c.set_presence(OperatorId(1), Presence::Away);
        assert!(!c.anyone_online());
    }

    #[test]
    fn ended_chat_token_no_longer_matches() {
        let mut c = ChatCore::new();
        c.open_queued(ChatId(1), t(1), 0);
        assert!(c.visitor_chat(&t(1)).is_some());
        c.end(ChatId(1)).unwrap();
        assert!(
            c.visitor_chat(&t(1)).is_none(),
            "ending chat is closed to the visitor"
        );
        assert!(c.visitor_chat(&t(9)).is_none());
    }
}
