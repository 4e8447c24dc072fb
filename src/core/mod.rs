//! The chat domain: chats, the waiting queue, routing, presence, transfers, monitoring,
//! read receipts, the live visitor list and invitations.
//!
//! Architecture invariant: this module performs no I/O and knows nothing of tokio, hyper,
//! rusqlite or nix. Callers ask it for a decision (`accept`, `route`, `transfer`, …), carry
//! out the I/O, and report back (`confirm`, `revert`). Time comes in as an argument.
#![forbid(unsafe_code)]

pub mod redact;
pub mod visitors;

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
    /// When the chat started (Unix ms).
    started_ms: i64,
    token_hash: [u8; 32],
    department: Option<String>,
    /// Previous state and department, while a change is being stored.
    pending_from: Option<(ChatState, Option<String>)>,
    /// Highest event id of the visitor's side that reached an operator's open stream.
    delivered_to_operator: i64,
    /// Highest operator-side event id that reached the visitor's open stream.
    delivered_to_visitor: i64,
    /// Highest event id the operator / the visitor said they have seen.
    read_by_operator: i64,
    read_by_visitor: i64,
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
    /// The target operator is not online.
    NotOnline,
    /// No such department.
    UnknownDepartment,
    /// A change to this chat is being stored; try again.
    Busy,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NotFound => "no such chat",
            Refusal::AlreadyTaken => "another operator already accepted this chat",
            Refusal::Ended => "the chat has ended",
            Refusal::AtCapacity => "that operator is at their limit of concurrent chats",
            Refusal::NotYetAccepted => "the chat has not been accepted yet",
            Refusal::NotOnline => "that operator is not online",
            Refusal::UnknownDepartment => "no such department",
            Refusal::Busy => "the chat is changing hands; try again",
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
    /// What the operator chose (online or away) while connected.
    chosen: Presence,
    /// Open event streams; offline while none is open.
    streams: usize,
    chats: BTreeSet<ChatId>,
    departments: Vec<String>,
    max_chats: Option<usize>,
    last_assigned_ms: i64,
}

impl Operator {
    fn presence(&self) -> Presence {
        if self.streams == 0 {
            Presence::Offline
        } else {
            self.chosen
        }
    }
    fn serves(&self, department: &Option<String>) -> bool {
        match department {
            None => true,
            Some(d) => self.departments.is_empty() || self.departments.iter().any(|x| x == d),
        }
    }
}

/// Routing settings (from `chat.toml`), passed in with each decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// Assign queued chats to operators automatically.
    pub auto: bool,
    /// Most chats per operator unless the account says otherwise.
    pub max_chats: usize,
    pub departments: Vec<String>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            auto: false,
            max_chats: DEFAULT_MAX_CHATS,
            departments: Vec::new(),
        }
    }
}

/// Where a transfer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTarget {
    Operator(OperatorId),
    Department(String),
}

/// A decided transfer (to be stored, then confirmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub chat: ChatId,
    pub from: OperatorId,
    pub target: TransferTarget,
}

/// Read receipts of a chat, as each side sees the other's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Receipts {
    /// How far the visitor's events reached / were read by the operator side.
    pub delivered_to_operator: i64,
    pub read_by_operator: i64,
    /// How far the operator's events reached / were read by the visitor.
    pub delivered_to_visitor: i64,
    pub read_by_visitor: i64,
}

/// The in-memory chat state. Not thread-safe by itself; the caller wraps it in a mutex.
#[derive(Debug, Default)]
pub struct ChatCore {
    chats: HashMap<ChatId, Chat>,
    by_token: HashMap<[u8; 32], ChatId>,
    /// Queued chats in arrival order (chat ids increase with arrival).
    queue: BTreeMap<ChatId, i64>,
    operators: HashMap<OperatorId, Operator>,
    monitors: HashMap<ChatId, BTreeSet<OperatorId>>,
    /// Visitor name and question of live chats, for queue lists.
    labels: HashMap<ChatId, (String, String)>,
    pub visitors: visitors::Visitors,
}

/// Default most concurrent chats per operator.
pub const DEFAULT_MAX_CHATS: usize = 8;

impl ChatCore {
    pub fn new() -> ChatCore {
        ChatCore::default()
    }

    fn new_chat(
        token_hash: [u8; 32],
        state: ChatState,
        department: Option<String>,
        started_ms: i64,
    ) -> Chat {
        Chat {
            state,
            started_ms,
            token_hash,
            department,
            pending_from: None,
            delivered_to_operator: 0,
            delivered_to_visitor: 0,
            read_by_operator: 0,
            read_by_visitor: 0,
        }
    }

    /// A new (or restored) queued chat.
    pub fn open_queued(
        &mut self,
        id: ChatId,
        token_hash: [u8; 32],
        since_ms: i64,
        department: Option<String>,
    ) {
        self.chats.insert(
            id,
            Self::new_chat(
                token_hash,
                ChatState::Queued { since_ms },
                department,
                since_ms,
            ),
        );
        self.by_token.insert(token_hash, id);
        self.queue.insert(id, since_ms);
    }

    /// A chat that starts assigned (restored at start-up, or an accepted invitation).
    pub fn open_active(
        &mut self,
        id: ChatId,
        token_hash: [u8; 32],
        operator: OperatorId,
        department: Option<String>,
        started_ms: i64,
    ) {
        self.chats.insert(
            id,
            Self::new_chat(
                token_hash,
                ChatState::Active { operator },
                department,
                started_ms,
            ),
        );
        self.by_token.insert(token_hash, id);
        self.operator_mut(operator).chats.insert(id);
    }

    fn operator_mut(&mut self, op: OperatorId) -> &mut Operator {
        self.operators.entry(op).or_insert(Operator {
            chosen: Presence::Online,
            streams: 0,
            chats: BTreeSet::new(),
            departments: Vec::new(),
            max_chats: None,
            last_assigned_ms: 0,
        })
    }

    /// Remember a live chat's visitor name and question (for queue lists).
    pub fn set_label(&mut self, id: ChatId, name: String, question: String) {
        if self.chats.contains_key(&id) {
            self.labels.insert(id, (name, question));
        }
    }

    pub fn label(&self, id: ChatId) -> Option<(String, String)> {
        self.labels.get(&id).cloned()
    }

    /// Tell the core about an account's departments and chat limit.
    pub fn set_operator_profile(
        &mut self,
        op: OperatorId,
        departments: Vec<String>,
        max_chats: Option<usize>,
    ) {
        let o = self.operator_mut(op);
        o.departments = departments;
        o.max_chats = max_chats;
    }

    fn limit(&self, op: OperatorId, r: &Routing) -> usize {
        self.operators
            .get(&op)
            .and_then(|o| o.max_chats)
            .unwrap_or(r.max_chats)
    }

    fn load(&self, op: OperatorId) -> usize {
        self.operators.get(&op).map(|o| o.chats.len()).unwrap_or(0)
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

    pub fn department(&self, id: ChatId) -> Option<String> {
        self.chats.get(&id).and_then(|c| c.department.clone())
    }

    /// The operator a chat is assigned to.
    pub fn assigned(&self, id: ChatId) -> Option<OperatorId> {
        match self.chats.get(&id)?.state {
            ChatState::Active { operator } => Some(operator),
            _ => None,
        }
    }

    /// Who sees a chat's events: the assigned operator (also while the chat is ending)
    /// and its monitors.
    pub fn audience(&self, id: ChatId) -> Vec<OperatorId> {
        let owner = match self.chats.get(&id).map(|c| c.state) {
            Some(ChatState::Active { operator }) => Some(operator),
            Some(ChatState::Ending { operator }) => operator,
            _ => None,
        };
        let mut out: Vec<OperatorId> = owner.into_iter().collect();
        if let Some(m) = self.monitors.get(&id) {
            out.extend(m.iter().copied().filter(|o| Some(*o) != owner));
        }
        out
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

    /// May this operator read this chat (assigned or monitoring)?
    pub fn can_read(&self, op: OperatorId, id: ChatId) -> bool {
        self.audience(id).contains(&op)
    }

    fn begin(&mut self, id: ChatId) -> Result<&mut Chat, Refusal> {
        let chat = self.chats.get_mut(&id).ok_or(Refusal::NotFound)?;
        if chat.pending_from.is_some() {
            return Err(Refusal::Busy);
        }
        chat.pending_from = Some((chat.state, chat.department.clone()));
        Ok(chat)
    }

    /// An operator accepts a queued chat. Decided atomically: of two operators accepting
    /// the same chat, exactly one wins. Call [`confirm`](Self::confirm) once stored or
    /// [`revert`](Self::revert) if storing failed.
    pub fn accept(
        &mut self,
        op: OperatorId,
        id: ChatId,
        r: &Routing,
    ) -> Result<OperatorChat, Refusal> {
        let limit = self.limit(op, r);
        let load = self.load(op);
        let chat = self.chats.get(&id).ok_or(Refusal::NotFound)?;
        match chat.state {
            ChatState::Queued { .. } => {}
            ChatState::Active { .. } => return Err(Refusal::AlreadyTaken),
            ChatState::Ending { .. } => return Err(Refusal::Ended),
        }
        if chat.pending_from.is_some() {
            return Err(Refusal::AlreadyTaken);
        }
        if load >= limit {
            return Err(Refusal::AtCapacity);
        }
        self.assign(op, id)?;
        Ok(OperatorChat {
            chat: id,
            operator: op,
        })
    }

    fn assign(&mut self, op: OperatorId, id: ChatId) -> Result<(), Refusal> {
        let chat = self.begin(id)?;
        chat.state = ChatState::Active { operator: op };
        self.queue.remove(&id);
        self.operator_mut(op).chats.insert(id);
        Ok(())
    }

    /// Automatic routing: give queued chats (oldest first) to the least-busy online
    /// operator of their department who is under their limit (ties: the one who waited
    /// longest since their last assignment). Returns the assignments to store; each must
    /// be confirmed or reverted.
    pub fn route(&mut self, r: &Routing, now_ms: i64) -> Vec<(ChatId, OperatorId)> {
        if !r.auto {
            return Vec::new();
        }
        let mut out = Vec::new();
        let queued: Vec<ChatId> = self.queue.keys().copied().collect();
        for chat in queued {
            let Some(c) = self.chats.get(&chat) else {
                continue;
            };
            if c.pending_from.is_some() {
                continue;
            }
            let department = c.department.clone();
            let best = self
                .operators
                .iter()
                .filter(|(id, o)| {
                    o.presence() == Presence::Online
                        && o.serves(&department)
                        && o.chats.len() < self.limit(**id, r)
                })
                .min_by_key(|(id, o)| (o.chats.len(), o.last_assigned_ms, **id))
                .map(|(id, _)| *id);
            if let Some(op) = best {
                if self.assign(op, chat).is_ok() {
                    self.operator_mut(op).last_assigned_ms = now_ms;
                    out.push((chat, op));
                }
            }
        }
        out
    }

    /// Decide a transfer of an assigned chat.
    pub fn transfer(
        &mut self,
        from: OperatorId,
        id: ChatId,
        target: TransferTarget,
        r: &Routing,
        now_ms: i64,
    ) -> Result<Transfer, Refusal> {
        self.operator_chat(from, id)?;
        match &target {
            TransferTarget::Operator(to) => {
                if *to == from {
                    return Err(Refusal::AlreadyTaken);
                }
                let o = self.operators.get(to).ok_or(Refusal::NotOnline)?;
                if o.presence() == Presence::Offline {
                    return Err(Refusal::NotOnline);
                }
                if o.chats.len() >= self.limit(*to, r) {
                    return Err(Refusal::AtCapacity);
                }
                let to = *to;
                self.begin(id)?.state = ChatState::Active { operator: to };
                self.operator_mut(from).chats.remove(&id);
                self.operator_mut(to).chats.insert(id);
            }
            TransferTarget::Department(d) => {
                if !r.departments.iter().any(|x| x == d) {
                    return Err(Refusal::UnknownDepartment);
                }
                let chat = self.begin(id)?;
                chat.state = ChatState::Queued { since_ms: now_ms };
                chat.department = Some(d.clone());
                self.queue.insert(id, now_ms);
                self.operator_mut(from).chats.remove(&id);
            }
        }
        Ok(Transfer {
            chat: id,
            from,
            target,
        })
    }

    /// A supervisor takes a chat over (it becomes theirs whatever their load).
    pub fn take_over(&mut self, supervisor: OperatorId, id: ChatId) -> Result<OperatorId, Refusal> {
        let from = self.assigned(id).ok_or(Refusal::NotFound)?;
        if from == supervisor {
            return Err(Refusal::AlreadyTaken);
        }
        self.begin(id)?.state = ChatState::Active {
            operator: supervisor,
        };
        self.operator_mut(from).chats.remove(&id);
        self.operator_mut(supervisor).chats.insert(id);
        if let Some(m) = self.monitors.get_mut(&id) {
            m.remove(&supervisor);
        }
        Ok(from)
    }

    /// An operator logged out: their chats go back to the queue. Returns them (each must
    /// be confirmed or reverted like any change).
    pub fn requeue_all(&mut self, op: OperatorId, now_ms: i64) -> Vec<ChatId> {
        let chats: Vec<ChatId> = self.chats_of(op);
        let mut out = Vec::new();
        for id in chats {
            if let Ok(c) = self.begin(id) {
                c.state = ChatState::Queued { since_ms: now_ms };
                self.queue.insert(id, now_ms);
                self.operator_mut(op).chats.remove(&id);
                out.push(id);
            }
        }
        self.monitors.values_mut().for_each(|m| {
            m.remove(&op);
        });
        out
    }

    /// End a live chat (either side). Returns the operator it was assigned to.
    pub fn end(&mut self, id: ChatId) -> Result<Option<OperatorId>, Refusal> {
        let chat = self.chats.get(&id).ok_or(Refusal::NotFound)?;
        let operator = match chat.state {
            ChatState::Queued { .. } => None,
            ChatState::Active { operator } => Some(operator),
            ChatState::Ending { .. } => return Err(Refusal::Ended),
        };
        self.begin(id)?.state = ChatState::Ending { operator };
        self.queue.remove(&id);
        Ok(operator)
    }

    /// The pending change of `id` was stored.
    pub fn confirm(&mut self, id: ChatId) {
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        chat.pending_from = None;
        if let ChatState::Ending { operator } = chat.state {
            let token = chat.token_hash;
            self.chats.remove(&id);
            self.by_token.remove(&token);
            self.monitors.remove(&id);
            self.labels.remove(&id);
            if let Some(op) = operator {
                self.operator_mut(op).chats.remove(&id);
            }
        }
    }

    /// The pending change of `id` could not be stored: undo it.
    pub fn revert(&mut self, id: ChatId) {
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        let Some((prev, dept)) = chat.pending_from.take() else {
            return;
        };
        let current = chat.state;
        chat.state = prev;
        chat.department = dept;
        if let ChatState::Active { operator } = current {
            self.operator_mut(operator).chats.remove(&id);
        }
        match prev {
            ChatState::Queued { since_ms } => {
                self.queue.insert(id, since_ms);
            }
            ChatState::Active { operator } => {
                self.queue.remove(&id);
                self.operator_mut(operator).chats.insert(id);
            }
            ChatState::Ending { .. } => {}
        }
    }

    /// Queued chats, oldest first, with the time they started waiting.
    pub fn queue(&self) -> Vec<(ChatId, i64)> {
        self.queue.iter().map(|(id, since)| (*id, *since)).collect()
    }

    /// The queue as one operator sees it (their departments only).
    pub fn queue_for(&self, op: OperatorId) -> Vec<(ChatId, i64)> {
        let o = self.operators.get(&op);
        self.queue
            .iter()
            .filter(|(id, _)| {
                let d = self.chats.get(id).and_then(|c| c.department.clone());
                o.map(|o| o.serves(&d)).unwrap_or(true)
            })
            .map(|(id, since)| (*id, *since))
            .collect()
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

    /// The chats an operator monitors.
    pub fn monitored_by(&self, op: OperatorId) -> Vec<ChatId> {
        self.monitors
            .iter()
            .filter(|(_, m)| m.contains(&op))
            .map(|(c, _)| *c)
            .collect()
    }

    /// Start or stop monitoring a live chat.
    pub fn monitor(&mut self, op: OperatorId, id: ChatId, on: bool) -> Result<(), Refusal> {
        if !self.chats.contains_key(&id) {
            return Err(Refusal::NotFound);
        }
        let m = self.monitors.entry(id).or_default();
        if on {
            m.insert(op);
        } else {
            m.remove(&op);
        }
        Ok(())
    }

    /// Every live chat: (id, state, department, started).
    pub fn live(&self) -> Vec<(ChatId, ChatState, Option<String>, i64)> {
        let mut v: Vec<_> = self
            .chats
            .iter()
            .map(|(id, c)| (*id, c.state, c.department.clone(), c.started_ms))
            .collect();
        v.sort_by_key(|(id, ..)| *id);
        v
    }

    /// An operator event stream opened or closed.
    pub fn stream_opened(&mut self, op: OperatorId) {
        self.operator_mut(op).streams += 1;
    }

    pub fn stream_closed(&mut self, op: OperatorId) {
        let o = self.operator_mut(op);
        o.streams = o.streams.saturating_sub(1);
    }

    /// Online or away (while connected).
    pub fn set_presence(&mut self, op: OperatorId, p: Presence) {
        if p != Presence::Offline {
            self.operator_mut(op).chosen = p;
        }
    }

    pub fn presence(&self, op: OperatorId) -> Presence {
        self.operators
            .get(&op)
            .map(Operator::presence)
            .unwrap_or(Presence::Offline)
    }

    /// Is any operator online to take a chat (of this department)?
    pub fn anyone_online(&self, department: &Option<String>) -> bool {
        self.operators
            .values()
            .any(|o| o.presence() == Presence::Online && o.serves(department))
    }

    pub fn live_chats(&self) -> usize {
        self.chats.len()
    }

    pub fn load_of(&self, op: OperatorId) -> usize {
        self.load(op)
    }

    /// Visitor-side events up to `id` reached an open operator stream.
    pub fn delivered(&mut self, chat: ChatId, id: i64) -> Option<Receipts> {
        let c = self.chats.get_mut(&chat)?;
        if id <= c.delivered_to_operator {
            return None;
        }
        c.delivered_to_operator = id;
        Some(Self::receipts_of(c))
    }

    /// Operator-side events up to `id` reached the visitor's open stream.
    pub fn delivered_to_visitor(&mut self, chat: ChatId, id: i64) -> Option<Receipts> {
        let c = self.chats.get_mut(&chat)?;
        if id <= c.delivered_to_visitor {
            return None;
        }
        c.delivered_to_visitor = id;
        Some(Self::receipts_of(c))
    }

    /// One side read up to `id`. Returns the new receipts when something changed.
    pub fn read(&mut self, chat: ChatId, by_visitor: bool, id: i64) -> Option<Receipts> {
        let c = self.chats.get_mut(&chat)?;
        let slot = if by_visitor {
            &mut c.read_by_visitor
        } else {
            &mut c.read_by_operator
        };
        if id <= *slot {
            return None;
        }
        *slot = id;
        if !by_visitor && c.delivered_to_operator < id {
            c.delivered_to_operator = id;
        }
        if by_visitor && c.delivered_to_visitor < id {
            c.delivered_to_visitor = id;
        }
        Some(Self::receipts_of(c))
    }

    pub fn receipts(&self, chat: ChatId) -> Option<Receipts> {
        self.chats.get(&chat).map(Self::receipts_of)
    }

    fn receipts_of(c: &Chat) -> Receipts {
        Receipts {
            delivered_to_operator: c.delivered_to_operator,
            read_by_operator: c.read_by_operator,
            delivered_to_visitor: c.delivered_to_visitor,
            read_by_visitor: c.read_by_visitor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn manual() -> Routing {
        Routing::default()
    }

    fn auto(max: usize) -> Routing {
        Routing {
            auto: true,
            max_chats: max,
            departments: vec!["Sales".into(), "Support".into()],
        }
    }

    fn online(c: &mut ChatCore, op: i64, departments: &[&str]) {
        c.stream_opened(OperatorId(op));
        c.set_operator_profile(
            OperatorId(op),
            departments.iter().map(|s| s.to_string()).collect(),
            None,
        );
    }

    #[test]
    fn two_operators_accepting_the_same_chat_one_wins() {
        let mut c = ChatCore::new();
        c.open_queued(ChatId(1), t(1), 0, None);
        let a = c.accept(OperatorId(10), ChatId(1), &manual());
        let b = c.accept(OperatorId(11), ChatId(1), &manual());
        assert!(a.is_ok());
        assert_eq!(b, Err(Refusal::AlreadyTaken));
        c.confirm(ChatId(1));
        assert_eq!(
            c.accept(OperatorId(11), ChatId(1), &manual()),
            Err(Refusal::AlreadyTaken)
        );
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(10)));
        assert!(c.operator_chat(OperatorId(11), ChatId(1)).is_err());
        assert!(c.operator_chat(OperatorId(10), ChatId(1)).is_ok());
    }

    #[test]
    fn queue_positions_follow_arrival_and_a_visitor_leaving_while_queued() {
        let mut c = ChatCore::new();
        for i in 1..=3 {
            c.open_queued(ChatId(i), t(i as u8), i, None);
        }
        assert_eq!(c.queue_position(ChatId(3)), Some(3));
        c.accept(OperatorId(1), ChatId(1), &manual()).unwrap();
        assert_eq!(c.queue_position(ChatId(3)), Some(2));
        c.end(ChatId(2)).unwrap();
        assert_eq!(c.queue_position(ChatId(3)), Some(1));
        c.confirm(ChatId(2));
        assert!(c.visitor_chat(&t(2)).is_none());
        assert_eq!(c.queue(), vec![(ChatId(3), 3)]);
    }

    #[test]
    fn failed_store_reverts_accept_end_and_transfer() {
        let mut c = ChatCore::new();
        c.open_queued(ChatId(1), t(1), 5, None);
        c.accept(OperatorId(1), ChatId(1), &manual()).unwrap();
        c.revert(ChatId(1));
        assert_eq!(c.queue_position(ChatId(1)), Some(1));
        assert!(c.chats_of(OperatorId(1)).is_empty());
        c.accept(OperatorId(2), ChatId(1), &manual()).unwrap();
        c.confirm(ChatId(1));
        c.end(ChatId(1)).unwrap();
        assert_eq!(
            c.end(ChatId(1)),
            Err(Refusal::Ended),
            "ending twice is refused"
        );
        c.revert(ChatId(1));
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(2)));
        online(&mut c, 3, &[]);
        let r = auto(4);
        c.transfer(
            OperatorId(2),
            ChatId(1),
            TransferTarget::Operator(OperatorId(3)),
            &r,
            9,
        )
        .unwrap();
        c.revert(ChatId(1));
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(2)));
        assert_eq!(c.chats_of(OperatorId(2)), vec![ChatId(1)]);
        assert!(c.chats_of(OperatorId(3)).is_empty());
    }

    #[test]
    fn operator_at_capacity_cannot_accept_or_receive_a_transfer() {
        let mut c = ChatCore::new();
        let r = Routing {
            max_chats: 2,
            ..auto(2)
        };
        online(&mut c, 1, &[]);
        online(&mut c, 2, &[]);
        for i in 1..=4 {
            c.open_queued(ChatId(i), t(i as u8), i, None);
        }
        c.accept(OperatorId(1), ChatId(1), &r).unwrap();
        c.accept(OperatorId(1), ChatId(2), &r).unwrap();
        assert_eq!(
            c.accept(OperatorId(1), ChatId(3), &r),
            Err(Refusal::AtCapacity)
        );
        c.accept(OperatorId(2), ChatId(3), &r).unwrap();
        c.accept(OperatorId(2), ChatId(4), &r).unwrap();
        for i in 1..=4 {
            c.confirm(ChatId(i));
        }
        // Transfer to an operator at their limit is refused; nothing changes.
        assert_eq!(
            c.transfer(
                OperatorId(1),
                ChatId(1),
                TransferTarget::Operator(OperatorId(2)),
                &r,
                5
            ),
            Err(Refusal::AtCapacity)
        );
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(1)));
    }

    #[test]
    fn auto_routing_picks_the_least_busy_online_operator_of_the_department() {
        let mut c = ChatCore::new();
        let r = auto(2);
        online(&mut c, 1, &["Sales"]);
        online(&mut c, 2, &["Support"]);
        online(&mut c, 3, &[]);
        c.open_queued(ChatId(1), t(1), 1, Some("Support".into()));
        c.open_queued(ChatId(2), t(2), 2, Some("Support".into()));
        c.open_queued(ChatId(3), t(3), 3, Some("Sales".into()));
        let got = c.route(&r, 100);
        // Chat 1 → op 2 (Support, idle longest among ties with op 3? op 2 has lower id at equal time)
        assert_eq!(got[0].0, ChatId(1));
        let support_ops: Vec<OperatorId> = got
            .iter()
            .filter(|(ch, _)| *ch != ChatId(3))
            .map(|(_, o)| *o)
            .collect();
        assert!(support_ops
            .iter()
            .all(|o| *o == OperatorId(2) || *o == OperatorId(3)));
        assert_ne!(support_ops[0], support_ops[1], "load is spread");
        let sales = got.iter().find(|(ch, _)| *ch == ChatId(3)).unwrap().1;
        assert!(sales == OperatorId(1) || sales == OperatorId(3));
        assert_ne!(
            sales,
            OperatorId(2),
            "the Support-only operator never gets a Sales chat"
        );
    }

    #[test]
    fn away_and_offline_operators_get_no_chats_but_keep_theirs() {
        let mut c = ChatCore::new();
        let r = auto(4);
        online(&mut c, 1, &[]);
        c.open_queued(ChatId(1), t(1), 1, None);
        assert_eq!(c.route(&r, 1), vec![(ChatId(1), OperatorId(1))]);
        c.confirm(ChatId(1));
        // The operator goes away mid-chat: keeps the chat, gets nothing new.
        c.set_presence(OperatorId(1), Presence::Away);
        c.open_queued(ChatId(2), t(2), 2, None);
        assert!(c.route(&r, 2).is_empty());
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(1)));
        assert!(c.operator_chat(OperatorId(1), ChatId(1)).is_ok());
        assert!(!c.anyone_online(&None));
        // Their console disconnects: offline, still keeps the chat.
        c.stream_closed(OperatorId(1));
        assert_eq!(c.presence(OperatorId(1)), Presence::Offline);
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(1)));
        // Logging out sends their chats back to the queue.
        let back = c.requeue_all(OperatorId(1), 50);
        assert_eq!(back, vec![ChatId(1)]);
        c.confirm(ChatId(1));
        // The queue is ordered by arrival: a visitor sent back keeps their place.
        assert_eq!(c.queue_position(ChatId(1)), Some(1));
        assert_eq!(c.queue_position(ChatId(2)), Some(2));
    }

    #[test]
    fn transfer_to_a_department_requeues_and_routing_takes_it() {
        let mut c = ChatCore::new();
        let r = auto(4);
        online(&mut c, 1, &["Sales"]);
        c.open_queued(ChatId(1), t(1), 1, Some("Sales".into()));
        c.route(&r, 1);
        c.confirm(ChatId(1));
        assert_eq!(
            c.transfer(
                OperatorId(1),
                ChatId(1),
                TransferTarget::Department("Legal".into()),
                &r,
                2
            ),
            Err(Refusal::UnknownDepartment)
        );
        c.transfer(
            OperatorId(1),
            ChatId(1),
            TransferTarget::Department("Support".into()),
            &r,
            2,
        )
        .unwrap();
        c.confirm(ChatId(1));
        assert_eq!(c.department(ChatId(1)).as_deref(), Some("Support"));
        assert!(c.route(&r, 3).is_empty(), "nobody serves Support yet");
        online(&mut c, 2, &["Support"]);
        assert_eq!(c.route(&r, 4), vec![(ChatId(1), OperatorId(2))]);
    }

    #[test]
    fn monitors_see_events_and_take_over_moves_the_chat() {
        let mut c = ChatCore::new();
        c.open_queued(ChatId(1), t(1), 1, None);
        c.accept(OperatorId(1), ChatId(1), &manual()).unwrap();
        c.confirm(ChatId(1));
        c.monitor(OperatorId(9), ChatId(1), true).unwrap();
        assert_eq!(c.audience(ChatId(1)), vec![OperatorId(1), OperatorId(9)]);
        assert!(c.can_read(OperatorId(9), ChatId(1)));
        assert!(
            c.operator_chat(OperatorId(9), ChatId(1)).is_err(),
            "monitoring is read-only"
        );
        assert_eq!(c.take_over(OperatorId(9), ChatId(1)), Ok(OperatorId(1)));
        c.confirm(ChatId(1));
        assert_eq!(c.assigned(ChatId(1)), Some(OperatorId(9)));
        assert!(c.chats_of(OperatorId(1)).is_empty());
        assert_eq!(c.audience(ChatId(1)), vec![OperatorId(9)]);
    }

    #[test]
    fn receipts_only_move_forward() {
        let mut c = ChatCore::new();
        c.open_queued(ChatId(1), t(1), 1, None);
        assert!(c.delivered(ChatId(1), 5).is_some());
        assert!(c.delivered(ChatId(1), 4).is_none());
        let r = c.read(ChatId(1), false, 7).unwrap();
        assert_eq!((r.delivered_to_operator, r.read_by_operator), (7, 7));
        assert!(c.read(ChatId(1), false, 6).is_none());
        assert_eq!(c.read(ChatId(1), true, 8).unwrap().read_by_visitor, 8);
    }

    #[test]
    fn ended_chat_token_no_longer_matches() {
        let mut c = ChatCore::new();
        c.open_queued(ChatId(1), t(1), 0, None);
        assert!(c.visitor_chat(&t(1)).is_some());
        c.end(ChatId(1)).unwrap();
        assert!(
            c.visitor_chat(&t(1)).is_none(),
            "ending chat is closed to the visitor"
        );
        assert!(c.visitor_chat(&t(9)).is_none());
    }
}
