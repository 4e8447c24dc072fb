//! Storage for the chat features: chat metadata, TOTP, canned responses, the offline
//! inbox, page views, stats and transcript search.

use super::{
    load_events, now_ms, ChatExtra, ChatRecord, Sealer, Storage, StorageError, StoredEvent,
    CHAT_COLUMNS,
};
use crate::core::{ChatId, OperatorId};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

/// How a new chat starts.
#[derive(Debug, Clone, Default)]
pub struct ChatStart {
    pub department: Option<String>,
    pub visitor_id: Option<String>,
    /// Set when the chat starts assigned (an accepted invitation).
    pub operator: Option<OperatorId>,
}

/// A chat state change stored together with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    Active,
    Queued { department: Option<String> },
    Ended,
}

impl StateChange {
    pub(super) fn name(&self) -> &'static str {
        match self {
            StateChange::Active => "active",
            StateChange::Queued { .. } => "queued",
            StateChange::Ended => "ended",
        }
    }
}

/// A canned response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canned {
    pub id: i64,
    pub shortcut: String,
    pub title: String,
    pub text: String,
}

/// A leave-a-message entry (sealed at rest).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineMessage {
    #[serde(default)]
    pub id: i64,
    pub name: String,
    pub email: String,
    pub message: String,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub ts: i64,
    #[serde(default)]
    pub read: bool,
}

impl std::fmt::Debug for OfflineMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineMessage")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A page view as stored (sealed): the visitor-controlled parts.
#[derive(Clone, Serialize, Deserialize)]
pub struct PageView {
    pub url: String,
    pub title: String,
    pub referrer: String,
    pub user_agent: String,
    pub ip: String,
}

impl std::fmt::Debug for PageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageView([visitor data redacted])")
    }
}

/// Counts for the live stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DayCounts {
    pub chats_today: i64,
    pub missed_today: i64,
    pub average_rating: Option<f64>,
    pub ratings_count: i64,
}

/// What transcript search looks for. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    pub text: String,
    pub name: String,
    pub operator: Option<OperatorId>,
    pub department: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only chats handled by this operator (operators); `None` for supervisors.
    pub only_operator: Option<OperatorId>,
}

/// One search hit.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub chat_id: ChatId,
    pub name: String,
    pub operator_id: Option<OperatorId>,
    pub department: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub snippet: String,
}

/// Most chats one search decrypts; the newest are searched first.
pub const SEARCH_SCAN_LIMIT: usize = 5_000;
/// Most hits one search returns.
pub const SEARCH_RESULT_LIMIT: usize = 100;

fn snippet(text: &str, needle_lower: &str) -> String {
    let lower = text.to_lowercase();
    match lower.find(needle_lower) {
        Some(pos) if !needle_lower.is_empty() => {
            let start = lower[..pos]
                .char_indices()
                .rev()
                .nth(30)
                .map(|(i, _)| i)
                .unwrap_or(0);
            let tail: String = text[start.min(text.len())..].chars().take(100).collect();
            tail
        }
        _ => text.chars().take(100).collect(),
    }
}

impl Storage {
    pub async fn operator_by_id(
        &self,
        id: OperatorId,
    ) -> Result<Option<super::OperatorRecord>, StorageError> {
        self.read(move |c, _| {
            Ok(c.query_row(
                &format!(
                    "SELECT {} FROM operators WHERE id=?1",
                    super::OPERATOR_COLUMNS
                ),
                [id.0],
                super::operator_row,
            )
            .optional()?)
        })
        .await
    }

    /// Operators whose account changed since `since_ms` (password, disable, role), with
    /// their disabled flag: the daemon ends their sessions.
    pub async fn operators_changed_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(OperatorId, i64)>, StorageError> {
        self.read(move |c, _| {
            let mut st = c.prepare("SELECT id, changed_ms FROM operators WHERE changed_ms > ?1")?;
            let rows = st.query_map([since_ms], |r| Ok((OperatorId(r.get(0)?), r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    // ---- TOTP ----

    /// The TOTP secret, whether it is enabled, and the last time step used.
    pub async fn totp(&self, op: OperatorId) -> Result<Option<(Vec<u8>, bool, i64)>, StorageError> {
        self.read(move |c, sealer| {
            let row: Option<(Option<Vec<u8>>, bool, i64)> = c
                .query_row(
                    "SELECT totp_secret, totp_enabled, totp_last_step FROM operators WHERE id=?1",
                    [op.0],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match row {
                Some((Some(sealed), enabled, step)) => {
                    let secret = sealer
                        .open(&format!("operators/totp/{}", op.0), &sealed)
                        .map_err(|e| {
                            StorageError(format!("operator {}: TOTP secret: {e}", op.0))
                        })?;
                    Ok(Some((secret, enabled, step)))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    /// Turn TOTP on with a confirmed secret (sealed) and recovery-code hashes (replacing
    /// older ones).
    pub async fn enable_totp(
        &self,
        op: OperatorId,
        secret: Vec<u8>,
        step: i64,
        recovery_hashes: Vec<Vec<u8>>,
    ) -> Result<(), StorageError> {
        self.write(move |c, st| {
            let sealed = st.sealer.seal(&format!("operators/totp/{}", op.0), &secret);
            c.execute(
                "UPDATE operators SET totp_secret=?1, totp_enabled=1, totp_last_step=?2 WHERE id=?3",
                params![sealed, step, op.0],
            )?;
            c.execute("DELETE FROM recovery_codes WHERE operator_id=?1", [op.0])?;
            for h in recovery_hashes {
                c.execute(
                    "INSERT INTO recovery_codes(operator_id, code_hash) VALUES(?1, ?2)",
                    params![op.0, h],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Record that a TOTP step was used; false when it (or a later one) was used already.
    pub async fn use_totp_step(&self, op: OperatorId, step: i64) -> Result<bool, StorageError> {
        self.write(move |c, _| {
            let n = c.execute(
                "UPDATE operators SET totp_last_step=?1 WHERE id=?2 AND totp_last_step < ?1",
                params![step, op.0],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Use a recovery code (by hash) once.
    pub async fn use_recovery_code(
        &self,
        op: OperatorId,
        hash: Vec<u8>,
    ) -> Result<bool, StorageError> {
        self.write(move |c, _| {
            let n = c.execute(
                "UPDATE recovery_codes SET used_ms=?1 WHERE operator_id=?2 AND code_hash=?3 AND used_ms IS NULL",
                params![now_ms(), op.0, hash],
            )?;
            Ok(n == 1)
        })
        .await
    }

    // ---- chat metadata ----

    /// Rate an ended chat, once.
    pub async fn set_rating(
        &self,
        chat: ChatId,
        rating: i64,
        comment: String,
    ) -> Result<bool, StorageError> {
        self.write(move |c, st| {
            let row: Option<(String, Option<i64>, Option<Vec<u8>>)> = c
                .query_row(
                    "SELECT state, rating, extra FROM chats WHERE id=?1",
                    [chat.0],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((state, existing, extra)) = row else {
                return Err(StorageError(format!("no chat {}", chat.0)));
            };
            if state != "ended" || existing.is_some() {
                return Ok(false);
            }
            let mut x = open_extra(&st.sealer, chat, extra)?;
            x.rating_comment = comment;
            let sealed = seal_extra(&st.sealer, chat, &x)?;
            c.execute(
                "UPDATE chats SET rating=?1, extra=?2 WHERE id=?3",
                params![rating, sealed, chat.0],
            )?;
            Ok(true)
        })
        .await
    }

    /// The wrap-up of a chat (category, sealed note); replaces an earlier one.
    pub async fn set_wrapup(
        &self,
        chat: ChatId,
        category: String,
        note: String,
    ) -> Result<(), StorageError> {
        self.write(move |c, st| {
            let extra: Option<Option<Vec<u8>>> = c
                .query_row("SELECT extra FROM chats WHERE id=?1", [chat.0], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(extra) = extra else {
                return Err(StorageError(format!("no chat {}", chat.0)));
            };
            let mut x = open_extra(&st.sealer, chat, extra)?;
            x.wrapup_note = note;
            let sealed = seal_extra(&st.sealer, chat, &x)?;
            c.execute(
                "UPDATE chats SET wrapup_category=?1, extra=?2 WHERE id=?3",
                params![category, sealed, chat.0],
            )?;
            Ok(())
        })
        .await
    }

    // ---- canned responses ----

    pub async fn canned(&self) -> Result<Vec<Canned>, StorageError> {
        self.read(|c, _| {
            let mut st =
                c.prepare("SELECT id, shortcut, title, body FROM canned ORDER BY shortcut")?;
            let rows = st.query_map([], |r| {
                Ok(Canned {
                    id: r.get(0)?,
                    shortcut: r.get(1)?,
                    title: r.get(2)?,
                    text: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Create (id 0) or update a canned response. Shortcuts are unique.
    pub async fn save_canned(&self, item: Canned) -> Result<i64, StorageError> {
        self.write(move |c, _| {
            let r = if item.id == 0 {
                c.execute(
                    "INSERT INTO canned(shortcut, title, body, changed_ms) VALUES(?1,?2,?3,?4)",
                    params![item.shortcut, item.title, item.text, now_ms()],
                )
                .map(|_| c.last_insert_rowid())
            } else {
                c.execute(
                    "UPDATE canned SET shortcut=?1, title=?2, body=?3, changed_ms=?4 WHERE id=?5",
                    params![item.shortcut, item.title, item.text, now_ms(), item.id],
                )
                .map(|n| if n == 1 { item.id } else { 0 })
            };
            match r {
                Ok(0) => Err(StorageError("no such canned response".into())),
                Ok(id) => Ok(id),
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StorageError(format!(
                        "the shortcut {:?} is taken",
                        item.shortcut
                    )))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    pub async fn delete_canned(&self, id: i64) -> Result<bool, StorageError> {
        self.write(move |c, _| Ok(c.execute("DELETE FROM canned WHERE id=?1", [id])? == 1))
            .await
    }

    // ---- the offline inbox ----

    pub async fn add_offline_message(&self, m: OfflineMessage) -> Result<i64, StorageError> {
        self.write(move |c, st| {
            let id: i64 =
                c.query_row("SELECT coalesce(max(id), 0) + 1 FROM offline_messages", [], |r| r.get(0))?;
            let body = serde_json::to_vec(&m).map_err(|e| StorageError(e.to_string()))?;
            let sealed = st.sealer.seal(&format!("offline_messages/body/{id}"), &body);
            c.execute(
                "INSERT INTO offline_messages(id, created_ms, department, body) VALUES(?1,?2,?3,?4)",
                params![id, now_ms(), m.department, sealed],
            )?;
            Ok(id)
        })
        .await
    }

    /// The inbox, newest first (at most 500), for the given departments (empty: all).
    pub async fn offline_messages(
        &self,
        departments: Vec<String>,
    ) -> Result<Vec<OfflineMessage>, StorageError> {
        self.read(move |c, sealer| {
            let mut st = c.prepare(
                "SELECT id, created_ms, department, body, read_ms FROM offline_messages ORDER BY id DESC LIMIT 500",
            )?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                let department: Option<String> = r.get(2)?;
                if !departments.is_empty() {
                    if let Some(d) = &department {
                        if !departments.contains(d) {
                            continue;
                        }
                    }
                }
                let sealed: Vec<u8> = r.get(3)?;
                let plain = sealer
                    .open(&format!("offline_messages/body/{id}"), &sealed)
                    .map_err(|e| StorageError(format!("offline message {id}: {e}")))?;
                let mut m: OfflineMessage =
                    serde_json::from_slice(&plain).map_err(|e| StorageError(e.to_string()))?;
                m.id = id;
                m.ts = r.get(1)?;
                m.department = department;
                m.read = r.get::<_, Option<i64>>(4)?.is_some();
                out.push(m);
            }
            Ok(out)
        })
        .await
    }

    pub async fn mark_offline_read(&self, id: i64, by: OperatorId) -> Result<bool, StorageError> {
        self.write(move |c, _| {
            Ok(c.execute(
                "UPDATE offline_messages SET read_ms=coalesce(read_ms, ?1), read_by=coalesce(read_by, ?2) WHERE id=?3",
                params![now_ms(), by.0, id],
            )? == 1)
        })
        .await
    }

    pub async fn offline_unread(&self) -> Result<i64, StorageError> {
        self.read(|c, _| {
            Ok(c.query_row(
                "SELECT count(*) FROM offline_messages WHERE read_ms IS NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    // ---- page views ----

    pub async fn add_page_view(&self, visitor_id: String, v: PageView) -> Result<(), StorageError> {
        self.write(move |c, st| {
            let id: i64 =
                c.query_row("SELECT coalesce(max(id), 0) + 1 FROM page_views", [], |r| {
                    r.get(0)
                })?;
            let body = serde_json::to_vec(&v).map_err(|e| StorageError(e.to_string()))?;
            let sealed = st.sealer.seal(&format!("page_views/body/{id}"), &body);
            c.execute(
                "INSERT INTO page_views(id, visitor_id, ts_ms, body) VALUES(?1,?2,?3,?4)",
                params![id, visitor_id, now_ms(), sealed],
            )?;
            Ok(())
        })
        .await
    }

    // ---- stats and search ----

    /// Chats started, missed, and the average rating since `since_ms`.
    pub async fn day_counts(&self, since_ms: i64) -> Result<DayCounts, StorageError> {
        self.read(move |c, _| {
            let (chats, missed): (i64, i64) = c.query_row(
                "SELECT count(*), coalesce(sum(CASE WHEN state='ended' AND accepted_ms IS NULL THEN 1 ELSE 0 END), 0) FROM chats WHERE created_ms >= ?1",
                [since_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (avg, n): (Option<f64>, i64) = c.query_row(
                "SELECT avg(rating), count(rating) FROM chats WHERE created_ms >= ?1 AND rating IS NOT NULL",
                [since_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(DayCounts { chats_today: chats, missed_today: missed, average_rating: avg, ratings_count: n })
        })
        .await
    }

    /// Search transcripts over the encrypted store: decrypt, match in memory, forget.
    /// Bounded: the newest [`SEARCH_SCAN_LIMIT`] chats in the range are examined.
    pub async fn search(&self, q: SearchQuery) -> Result<Vec<SearchHit>, StorageError> {
        self.read(move |c, sealer| {
            let mut st = c.prepare(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats WHERE created_ms >= ?1 AND created_ms <= ?2 \
                 AND (?3 IS NULL OR operator_id = ?3) AND (?4 IS NULL OR operator_id = ?4) \
                 ORDER BY id DESC LIMIT ?5"
            ))?;
            let mut rows = st.query(params![
                q.from_ms,
                q.to_ms,
                q.only_operator.map(|o| o.0),
                q.operator.map(|o| o.0),
                SEARCH_SCAN_LIMIT as i64
            ])?;
            let name = q.name.to_lowercase();
            let text = q.text.to_lowercase();
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let chat: ChatRecord = super::chat_row(r, sealer)?;
                if !q.department.is_empty()
                    && chat.department.as_deref() != Some(q.department.as_str())
                {
                    continue;
                }
                if !name.is_empty() && !chat.visitor.name.to_lowercase().contains(&name) {
                    continue;
                }
                let mut hit_text = None;
                if !text.is_empty() {
                    let events: Vec<StoredEvent> = load_events(c, sealer, chat.id, 0)?;
                    hit_text = std::iter::once(chat.visitor.question.clone())
                        .chain(events.into_iter().map(|e| e.text))
                        .find(|t| t.to_lowercase().contains(&text));
                    if hit_text.is_none() {
                        continue;
                    }
                }
                let snip = snippet(hit_text.as_deref().unwrap_or(&chat.visitor.question), &text);
                out.push(SearchHit {
                    chat_id: chat.id,
                    name: chat.visitor.name,
                    operator_id: chat.operator_id,
                    department: chat.department,
                    started_ms: chat.created_ms,
                    ended_ms: chat.ended_ms,
                    snippet: snip,
                });
                if out.len() >= SEARCH_RESULT_LIMIT {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Purge page views and offline messages older than the cut-offs.
    pub async fn purge_tracking(
        &self,
        page_views_before_ms: i64,
        offline_before_ms: i64,
    ) -> Result<(u64, u64), StorageError> {
        self.write(move |c, _| {
            let pv = c.execute(
                "DELETE FROM page_views WHERE ts_ms < ?1",
                [page_views_before_ms],
            )? as u64;
            let om = c.execute(
                "DELETE FROM offline_messages WHERE created_ms < ?1",
                [offline_before_ms],
            )? as u64;
            Ok((pv, om))
        })
        .await
    }
}

fn open_extra(
    sealer: &Sealer,
    chat: ChatId,
    extra: Option<Vec<u8>>,
) -> Result<ChatExtra, StorageError> {
    match extra {
        None => Ok(ChatExtra::default()),
        Some(b) => {
            let plain = sealer
                .open(&format!("chats/extra/{}", chat.0), &b)
                .map_err(|e| StorageError(format!("chat {}: extra: {e}", chat.0)))?;
            Ok(serde_json::from_slice(&plain).unwrap_or_default())
        }
    }
}

fn seal_extra(sealer: &Sealer, chat: ChatId, x: &ChatExtra) -> Result<Vec<u8>, StorageError> {
    let b = serde_json::to_vec(x).map_err(|e| StorageError(e.to_string()))?;
    Ok(sealer.seal(&format!("chats/extra/{}", chat.0), &b))
}
