//! The live visitor list ("who's on") and proactive invitations. Pure state; the caller
//! passes the time in.

use super::{ChatId, OperatorId};
use serde::Serialize;
use std::collections::HashMap;

/// Most visitors tracked at once; beyond it new visitors are not listed (bounded memory).
pub const MAX_VISITORS: usize = 50_000;

/// A page as the loader reported it (already bounded and cleaned by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub url: String,
    pub title: String,
    pub referrer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InviteStatus {
    Pending,
    Accepted,
    Declined,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub id: u64,
    pub visitor: String,
    pub operator: OperatorId,
    pub message: String,
    pub created_ms: i64,
    pub status: InviteStatus,
}

/// One visitor on the customer's site.
#[derive(Debug, Clone, Serialize)]
pub struct LiveVisitor {
    pub visitor_id: String,
    pub page_url: String,
    pub page_title: String,
    pub referrer: String,
    pub pages_viewed: u32,
    pub first_seen: i64,
    pub last_seen: i64,
    pub ip: String,
    pub user_agent: String,
    pub chat_id: Option<ChatId>,
    pub invite: Option<InviteStatus>,
}

#[derive(Debug, Default)]
pub struct Visitors {
    by_id: HashMap<String, LiveVisitor>,
    by_token: HashMap<[u8; 32], String>,
    invites: HashMap<u64, Invite>,
    next_invite: u64,
    changed: bool,
}

/// Why an invitation cannot be made or answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteRefusal {
    NoSuchVisitor,
    AlreadyChatting,
    AlreadyInvited,
    NoSuchInvite,
}

impl InviteRefusal {
    pub fn message(self) -> &'static str {
        match self {
            InviteRefusal::NoSuchVisitor => "that visitor is no longer on the site",
            InviteRefusal::AlreadyChatting => "that visitor is already chatting",
            InviteRefusal::AlreadyInvited => "that visitor already has an invitation",
            InviteRefusal::NoSuchInvite => "no such invitation",
        }
    }
}

impl Visitors {
    /// A visitor arrived (or came back with their token). Returns false when the list is
    /// full and the visitor is not tracked.
    #[allow(clippy::too_many_arguments)]
    pub fn hello(
        &mut self,
        token_hash: [u8; 32],
        visitor_id: &str,
        page: Page,
        ip: String,
        user_agent: String,
        now: i64,
    ) -> bool {
        if !self.by_id.contains_key(visitor_id) && self.by_id.len() >= MAX_VISITORS {
            return false;
        }
        self.by_token.insert(token_hash, visitor_id.to_string());
        let v = self
            .by_id
            .entry(visitor_id.to_string())
            .or_insert_with(|| LiveVisitor {
                visitor_id: visitor_id.to_string(),
                page_url: String::new(),
                page_title: String::new(),
                referrer: String::new(),
                pages_viewed: 0,
                first_seen: now,
                last_seen: now,
                ip: String::new(),
                user_agent: String::new(),
                chat_id: None,
                invite: None,
            });
        v.ip = ip;
        v.user_agent = user_agent;
        Self::view(v, page, now);
        self.changed = true;
        true
    }

    fn view(v: &mut LiveVisitor, page: Page, now: i64) {
        if v.referrer.is_empty() {
            v.referrer = page.referrer;
        }
        v.page_url = page.url;
        v.page_title = page.title;
        v.pages_viewed = v.pages_viewed.saturating_add(1);
        v.last_seen = now;
    }

    /// The visitor id of a visitor token.
    pub fn id_of(&self, token_hash: &[u8; 32]) -> Option<String> {
        let id = self.by_token.get(token_hash)?;
        self.by_id.contains_key(id).then(|| id.clone())
    }

    pub fn page_view(&mut self, visitor_id: &str, page: Page, now: i64) -> bool {
        match self.by_id.get_mut(visitor_id) {
            Some(v) => {
                Self::view(v, page, now);
                self.changed = true;
                true
            }
            None => false,
        }
    }

    /// A heartbeat from the visitor's presence stream.
    pub fn touch(&mut self, visitor_id: &str, now: i64) {
        if let Some(v) = self.by_id.get_mut(visitor_id) {
            v.last_seen = now;
        }
    }

    pub fn set_chat(&mut self, visitor_id: &str, chat: Option<ChatId>) {
        if let Some(v) = self.by_id.get_mut(visitor_id) {
            v.chat_id = chat;
            self.changed = true;
        }
    }

    /// A chat ended: its visitor is browsing again.
    pub fn chat_ended(&mut self, chat: ChatId) {
        for v in self.by_id.values_mut() {
            if v.chat_id == Some(chat) {
                v.chat_id = None;
                self.changed = true;
            }
        }
    }

    /// Forget visitors idle for longer than `idle_ms` (not while chatting), and expire
    /// invitations older than `invite_ms`. Returns the expired invitations.
    pub fn expire(&mut self, now: i64, idle_ms: i64, invite_ms: i64) -> Vec<Invite> {
        let before = self.by_id.len();
        self.by_id
            .retain(|_, v| v.chat_id.is_some() || now - v.last_seen <= idle_ms);
        if self.by_id.len() != before {
            let ids = &self.by_id;
            self.by_token.retain(|_, id| ids.contains_key(id));
            self.changed = true;
        }
        let mut expired = Vec::new();
        for inv in self.invites.values_mut() {
            if inv.status == InviteStatus::Pending && now - inv.created_ms > invite_ms {
                inv.status = InviteStatus::Expired;
                expired.push(inv.clone());
            }
        }
        for inv in &expired {
            if let Some(v) = self.by_id.get_mut(&inv.visitor) {
                v.invite = None;
                self.changed = true;
            }
        }
        self.invites
            .retain(|_, i| now - i.created_ms <= invite_ms.saturating_mul(4));
        expired
    }

    /// The list, longest on site first.
    pub fn list(&self) -> Vec<LiveVisitor> {
        let mut v: Vec<LiveVisitor> = self.by_id.values().cloned().collect();
        v.sort_by(|a, b| {
            a.first_seen
                .cmp(&b.first_seen)
                .then(a.visitor_id.cmp(&b.visitor_id))
        });
        v
    }

    pub fn count(&self) -> usize {
        self.by_id.len()
    }

    /// Did the list change since the last call?
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// An operator invites a browsing visitor.
    pub fn invite(
        &mut self,
        operator: OperatorId,
        visitor_id: &str,
        message: String,
        now: i64,
    ) -> Result<Invite, InviteRefusal> {
        let v = self
            .by_id
            .get_mut(visitor_id)
            .ok_or(InviteRefusal::NoSuchVisitor)?;
        if v.chat_id.is_some() {
            return Err(InviteRefusal::AlreadyChatting);
        }
        if v.invite == Some(InviteStatus::Pending) {
            return Err(InviteRefusal::AlreadyInvited);
        }
        v.invite = Some(InviteStatus::Pending);
        self.next_invite += 1;
        let inv = Invite {
            id: self.next_invite,
            visitor: visitor_id.to_string(),
            operator,
            message,
            created_ms: now,
            status: InviteStatus::Pending,
        };
        self.invites.insert(inv.id, inv.clone());
        self.changed = true;
        Ok(inv)
    }

    /// The visitor answers a pending invitation of theirs.
    pub fn answer(
        &mut self,
        visitor_id: &str,
        invite_id: u64,
        accept: bool,
    ) -> Result<Invite, InviteRefusal> {
        let inv = self
            .invites
            .get_mut(&invite_id)
            .filter(|i| i.visitor == visitor_id && i.status == InviteStatus::Pending)
            .ok_or(InviteRefusal::NoSuchInvite)?;
        inv.status = if accept {
            InviteStatus::Accepted
        } else {
            InviteStatus::Declined
        };
        let out = inv.clone();
        if let Some(v) = self.by_id.get_mut(visitor_id) {
            v.invite = if accept {
                None
            } else {
                Some(InviteStatus::Declined)
            };
        }
        self.changed = true;
        Ok(out)
    }

    /// Pending invitations of a visitor (for a presence stream that (re)connects).
    pub fn pending_for(&self, visitor_id: &str) -> Vec<Invite> {
        let mut v: Vec<Invite> = self
            .invites
            .values()
            .filter(|i| i.visitor == visitor_id && i.status == InviteStatus::Pending)
            .cloned()
            .collect();
        v.sort_by_key(|i| i.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(u: &str) -> Page {
        Page {
            url: u.into(),
            title: "T".into(),
            referrer: "https://search.example/".into(),
        }
    }

    #[test]
    fn tracks_pages_and_drops_idle_visitors_but_not_chatting_ones() {
        let mut v = Visitors::default();
        v.hello(
            [1; 32],
            "a",
            page("/"),
            "203.0.113.0/24".into(),
            "UA".into(),
            0,
        );
        v.hello([2; 32], "b", page("/"), String::new(), String::new(), 0);
        assert!(v.page_view("a", page("/pricing"), 10));
        let a = v.list().into_iter().find(|x| x.visitor_id == "a").unwrap();
        assert_eq!((a.pages_viewed, a.page_url.as_str()), (2, "/pricing"));
        assert_eq!(
            a.referrer, "https://search.example/",
            "the entry referrer is kept"
        );
        v.set_chat("b", Some(ChatId(7)));
        v.expire(100_000, 60_000, 60_000);
        let ids: Vec<String> = v.list().into_iter().map(|x| x.visitor_id).collect();
        assert_eq!(ids, vec!["b"]);
        assert_eq!(v.id_of(&[1; 32]), None);
        assert_eq!(v.id_of(&[2; 32]).as_deref(), Some("b"));
    }

    #[test]
    fn invitations_are_answered_once_and_expire() {
        let mut v = Visitors::default();
        v.hello([1; 32], "a", page("/"), String::new(), String::new(), 0);
        let inv = v.invite(OperatorId(1), "a", "Hi".into(), 0).unwrap();
        assert_eq!(
            v.invite(OperatorId(2), "a", "Hi".into(), 0),
            Err(InviteRefusal::AlreadyInvited)
        );
        assert_eq!(
            v.answer("b", inv.id, true),
            Err(InviteRefusal::NoSuchInvite),
            "only the invited visitor answers"
        );
        assert_eq!(
            v.answer("a", inv.id, false).unwrap().status,
            InviteStatus::Declined
        );
        assert_eq!(
            v.answer("a", inv.id, true),
            Err(InviteRefusal::NoSuchInvite),
            "answered once"
        );
        let again = v.invite(OperatorId(1), "a", String::new(), 1).unwrap();
        let expired = v.expire(120_002, 1_000_000, 120_000);
        assert_eq!(
            expired.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![again.id]
        );
        v.set_chat("a", Some(ChatId(3)));
        assert_eq!(
            v.invite(OperatorId(1), "a", String::new(), 2),
            Err(InviteRefusal::AlreadyChatting)
        );
    }
}
