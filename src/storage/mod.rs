//! The only code that opens the database.
//!
//! One SQLite file in the state directory, WAL with `synchronous=FULL`. All writes go
//! through one writer thread that batches whatever is queued into one transaction (group
//! commit; under steady load it waits briefly for more) and answers each caller only after that transaction committed; callbacks given
//! to [`Storage::write_then`] run in commit order before the caller is answered, so event
//! fan-out sees events in the order they were stored. Reads use a small pool of separate
//! connections (WAL lets them run beside the writer).
//!
//! Architecture invariant: message bodies and visitor personal data only enter the database
//! sealed by [`crypto::Sealer`]; nothing outside this module sees a `rusqlite` type.
#![forbid(unsafe_code)]

pub mod crypto;
mod features;
mod schema;

pub use features::*;

pub use schema::CURRENT_VERSION;

use crate::core::{ChatId, OperatorId};
use crypto::Sealer;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

pub const DB_FILE: &str = "palisade.db";

/// A storage failure, phrased for the person who has to act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError(pub String);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StorageError {}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError(format!("database error: {e}"))
    }
}

type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
/// A queued write: given the connection (or the reason no transaction could start), it does
/// its work and returns what to do once the commit outcome is known.
type Job =
    Box<dyn FnOnce(Result<(&Connection, &mut WriterState), StorageError>) -> Completion + Send>;

/// State only the writer thread touches: the next ids to hand out.
#[derive(Debug)]
struct WriterState {
    next_event_id: i64,
    next_chat_id: i64,
    sealer: Sealer,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    jobs: mpsc::SyncSender<Job>,
    readers: Arc<Vec<Mutex<Connection>>>,
    sealer: Sealer,
    path: PathBuf,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

/// Who wrote an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    Visitor,
    Operator,
    System,
}

impl Sender {
    fn as_str(self) -> &'static str {
        match self {
            Sender::Visitor => "visitor",
            Sender::Operator => "operator",
            Sender::System => "system",
        }
    }
    fn parse(s: &str) -> Sender {
        match s {
            "visitor" => Sender::Visitor,
            "operator" => Sender::Operator,
            _ => Sender::System,
        }
    }
}

/// What kind of stored chat event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Started,
    Joined,
    Message,
    Ended,
    /// Back in the queue (transfer to a department, operator logged out).
    Requeued,
    /// A supervisor's note to the operator; never shown to the visitor.
    Whisper,
    /// A transfer between operators or to a department, with its note; operators only.
    Transfer,
    /// The operator's wrap-up; operators only.
    Wrapup,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Joined => "joined",
            EventKind::Message => "message",
            EventKind::Ended => "ended",
            EventKind::Requeued => "requeued",
            EventKind::Whisper => "whisper",
            EventKind::Transfer => "transfer",
            EventKind::Wrapup => "wrapup",
        }
    }

    /// Does the visitor see this kind of event (stream and transcript)?
    pub fn visitor_visible(self) -> bool {
        !matches!(
            self,
            EventKind::Whisper | EventKind::Transfer | EventKind::Wrapup
        )
    }

    fn parse(s: &str) -> Result<EventKind, StorageError> {
        Ok(match s {
            "started" => EventKind::Started,
            "joined" => EventKind::Joined,
            "message" => EventKind::Message,
            "ended" => EventKind::Ended,
            "requeued" => EventKind::Requeued,
            "whisper" => EventKind::Whisper,
            "transfer" => EventKind::Transfer,
            "wrapup" => EventKind::Wrapup,
            other => return Err(StorageError(format!("unknown event kind {other:?}"))),
        })
    }
}

/// A chat event as stored (and as sent on event streams).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEvent {
    pub id: i64,
    pub chat_id: ChatId,
    pub kind: EventKind,
    pub from: Sender,
    pub author: String,
    pub text: String,
    pub ts: i64,
}

#[derive(Serialize, Deserialize)]
struct EventBody {
    author: String,
    text: String,
}

/// Visitor-supplied personal data of a chat (sealed at rest).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorInfo {
    pub name: String,
    pub email: String,
    pub question: String,
}

impl std::fmt::Debug for VisitorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VisitorInfo([personal data redacted])")
    }
}

/// An operator account row.
#[derive(Clone)]
pub struct OperatorRecord {
    pub id: OperatorId,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub role: String,
    pub disabled: bool,
    pub departments: Vec<String>,
    pub totp_enabled: bool,
}

impl std::fmt::Debug for OperatorRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A chat row as loaded at start-up.
#[derive(Debug, Clone)]
pub struct ChatRecord {
    pub id: ChatId,
    pub token_hash: Vec<u8>,
    pub state: String,
    pub operator_id: Option<OperatorId>,
    pub created_ms: i64,
    pub visitor: VisitorInfo,
    pub department: Option<String>,
    pub visitor_id: Option<String>,
    pub ended_ms: Option<i64>,
    pub rating: Option<i64>,
    pub wrapup_category: Option<String>,
    pub extra: ChatExtra,
}

/// Sealed extras of a chat: the rating comment and the wrap-up note.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatExtra {
    #[serde(default)]
    pub rating_comment: String,
    #[serde(default)]
    pub wrapup_note: String,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn configure(conn: &Connection) -> Result<(), StorageError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON; PRAGMA synchronous=FULL;",
    )?;
    Ok(())
}

fn open_checked(path: &Path, create: bool) -> Result<Connection, StorageError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StorageError(format!("{}: cannot open database: {e}", path.display())))?;
    // The first statements read the file header: a file that is not a database fails here.
    configure(&conn).map_err(|e| {
        StorageError(format!(
            "{}: not a usable SQLite database ({}); refusing to start; it was not modified",
            path.display(),
            e.0.trim_start_matches("database error: ")
        ))
    })?;
    Ok(conn)
}

/// Check a database file before use: integrity, owner application, schema version.
fn check_and_migrate(conn: &Connection, path: &Path, fresh: bool) -> Result<(), StorageError> {
    let p = path.display();
    let quick: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| {
            StorageError(format!(
                "{p}: not a usable SQLite database ({e}); refusing to start; it was not modified"
            ))
        })?;
    if quick != "ok" {
        // quick_check's report spans lines; the refusal is one line.
        let quick = quick.lines().map(str::trim).collect::<Vec<_>>().join("; ");
        return Err(StorageError(format!(
            "{p}: database is corrupt (quick_check: {quick}); refusing to start; restore from backup, nothing was repaired or deleted"
        )));
    }
    let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if app_id != schema::APPLICATION_ID {
        if !(fresh || (app_id == 0 && version == 0 && has_tables == 0)) {
            return Err(StorageError(format!(
                "{p}: not a Palisade database (application_id {app_id:#x}); refusing to start"
            )));
        }
        conn.execute_batch(&format!("PRAGMA application_id={}", schema::APPLICATION_ID))?;
    }
    if version > CURRENT_VERSION {
        return Err(StorageError(format!(
            "{p}: database schema version {version} is newer than this palisade supports ({CURRENT_VERSION}); refusing to start; run the newer release or restore a backup"
        )));
    }
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(StorageError(format!("{p}: cannot enable WAL (got {mode})")));
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate() {
        let target = i as i64 + 1;
        if target <= version {
            continue;
        }
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version={target}; COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            StorageError(format!(
                "{p}: migration to schema version {target} failed: {e}"
            ))
        })?;
    }
    Ok(())
}

const CANARY: &[u8] = b"palisade data key check";

impl Storage {
    /// Open (creating if absent) the database in `state_dir`.
    pub fn open(state_dir: &Path, sealer: Sealer) -> Result<Storage, StorageError> {
        let path = state_dir.join(DB_FILE);
        let fresh = !path.exists();
        let conn = open_checked(&path, true)?;
        crate::sandbox::restrict_file(&path)
            .map_err(|e| StorageError(format!("{}: {e}", path.display())))?;
        check_and_migrate(&conn, &path, fresh)?;
        // The data key must be the one this database was written with.
        let canary: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key='key_check'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match canary {
            Some(sealed) => {
                sealer.open("meta/key_check", &sealed).map_err(|e| {
                    StorageError(format!(
                        "{}: the data key does not open this database ({e}); refusing to start",
                        path.display()
                    ))
                })?;
            }
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('key_check', ?1)",
                    params![sealer.seal("meta/key_check", CANARY)],
                )?;
            }
        }
        let next_event_id: i64 =
            conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM events", [], |r| {
                r.get(0)
            })?;
        let next_chat_id: i64 =
            conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM chats", [], |r| {
                r.get(0)
            })?;
        let mut readers = Vec::new();
        for _ in 0..2 {
            readers.push(Mutex::new(open_checked(&path, false)?));
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(4096);
        let state = WriterState {
            next_event_id,
            next_chat_id,
            sealer: sealer.clone(),
        };
        std::thread::Builder::new()
            .name("palisade-writer".into())
            .spawn(move || writer_loop(conn, rx, state))
            .map_err(|e| StorageError(format!("cannot start the database writer: {e}")))?;
        Ok(Storage {
            jobs: tx,
            readers: Arc::new(readers),
            sealer,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Run `f` inside the next group-commit transaction; answer after the commit.
    async fn write<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> Result<T, StorageError> + Send + 'static,
    {
        self.write_then(f, |_| {}).await
    }

    /// Like [`write`](Self::write); `on_commit` runs on the writer thread right after the
    /// commit, in commit order, before the caller is answered.
    async fn write_then<T, F, C>(&self, f: F, on_commit: C) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> Result<T, StorageError> + Send + 'static,
        C: FnOnce(&T) + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StorageError>>();
        let job: Job = Box::new(move |ctx| {
            let (conn, st) = match ctx {
                Ok(ctx) => ctx,
                Err(err) => {
                    return Box::new(move |_| {
                        let _ = tx.send(Err(err));
                    })
                }
            };
            if let Err(e) = exec_cached(conn, "SAVEPOINT job") {
                let err = StorageError::from(e);
                return Box::new(move |_| {
                    let _ = tx.send(Err(err));
                });
            }
            match f(conn, st) {
                Ok(v) => {
                    let _ = exec_cached(conn, "RELEASE job");
                    Box::new(move |commit: Result<(), StorageError>| {
                        let out = commit.map(|_| {
                            on_commit(&v);
                            v
                        });
                        let _ = tx.send(out);
                    })
                }
                Err(e) => {
                    let _ = exec_cached(conn, "ROLLBACK TO job");
                    let _ = exec_cached(conn, "RELEASE job");
                    Box::new(move |_| {
                        let _ = tx.send(Err(e));
                    })
                }
            }
        });
        // The queue is bounded. Enqueue at once when there is room (the common case: no
        // thread hand-off per write); a full queue blocks only this caller, off the async
        // workers.
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(StorageError("database writer stopped".into()))
            }
            Err(mpsc::TrySendError::Full(job)) => {
                let jobs = self.jobs.clone();
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|_| StorageError("database writer unavailable".into()))?
                    .map_err(|_| StorageError("database writer stopped".into()))?;
            }
        }
        rx.await
            .map_err(|_| StorageError("database writer stopped".into()))?
    }

    /// Run a read on a pooled connection, off the async workers.
    async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Sealer) -> Result<T, StorageError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let sealer = self.sealer.clone();
        tokio::task::spawn_blocking(move || {
            let idx = readers
                .iter()
                .position(|m| !matches!(m.try_lock(), Err(std::sync::TryLockError::WouldBlock)))
                .unwrap_or(0);
            let conn = readers[idx]
                .lock()
                .map_err(|_| StorageError("database reader poisoned".into()))?;
            f(&conn, &sealer)
        })
        .await
        .map_err(|_| StorageError("database reader failed".into()))?
    }

    // ---- audit ----

    /// Append one record to the hash-chained audit table.
    pub async fn append_audit(
        &self,
        message_id: &'static str,
        event: &'static str,
        detail: String,
    ) -> Result<(), StorageError> {
        self.write(move |c, st| {
            let prev: (i64, Vec<u8>) = c
                .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?
                .map_or_else(|| audit_anchor(c, &st.sealer), Ok)?;
            let seq = prev.0 + 1;
            let ts = now_ms();
            let hash =
                crate::audit::link_hash(&st.sealer, &prev.1, seq, ts, message_id, event, &detail);
            c.execute(
                "INSERT INTO audit(seq, ts_ms, message_id, event, detail, prev_hash, hash) VALUES(?1,?2,?3,?4,?5,?6,?7)",
                params![seq, ts, message_id, event, detail, prev.1, hash],
            )?;
            Ok(())
        })
        .await
    }

    // ---- operators ----

    pub async fn add_operator(
        &self,
        username: String,
        display_name: String,
        password_hash: String,
        role: String,
        departments: Vec<String>,
    ) -> Result<OperatorId, StorageError> {
        self.write(move |c, _| {
            let now = now_ms();
            c.execute(
                "INSERT INTO operators(username, display_name, password_hash, role, created_ms, changed_ms, departments) VALUES(?1,?2,?3,?4,?5,?5,?6)",
                params![username, display_name, password_hash, role, now, departments.join(",")],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    StorageError(format!("operator {username:?} already exists"))
                }
                e => e.into(),
            })?;
            Ok(OperatorId(c.last_insert_rowid()))
        })
        .await
    }

    pub async fn set_password(
        &self,
        username: String,
        password_hash: String,
    ) -> Result<OperatorId, StorageError> {
        self.write(move |c, _| {
            let id: Option<i64> = c
                .query_row(
                    "SELECT id FROM operators WHERE username=?1",
                    [&username],
                    |r| r.get(0),
                )
                .optional()?;
            let id = id.ok_or_else(|| StorageError(format!("no operator {username:?}")))?;
            c.execute(
                "UPDATE operators SET password_hash=?1, changed_ms=?2 WHERE id=?3",
                params![password_hash, now_ms(), id],
            )?;
            c.execute("DELETE FROM sessions WHERE operator_id=?1", [id])?;
            Ok(OperatorId(id))
        })
        .await
    }

    pub async fn set_disabled(
        &self,
        username: String,
        disabled: bool,
    ) -> Result<OperatorId, StorageError> {
        self.write(move |c, _| {
            let id: Option<i64> = c
                .query_row(
                    "SELECT id FROM operators WHERE username=?1",
                    [&username],
                    |r| r.get(0),
                )
                .optional()?;
            let id = id.ok_or_else(|| StorageError(format!("no operator {username:?}")))?;
            c.execute(
                "UPDATE operators SET disabled=?1, changed_ms=?2 WHERE id=?3",
                params![disabled, now_ms(), id],
            )?;
            if disabled {
                c.execute("DELETE FROM sessions WHERE operator_id=?1", [id])?;
            }
            Ok(OperatorId(id))
        })
        .await
    }

    pub async fn operator_by_name(
        &self,
        username: String,
    ) -> Result<Option<OperatorRecord>, StorageError> {
        self.read(move |c, _| {
            Ok(c.query_row(
                &format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE username=?1"),
                [username],
                operator_row,
            )
            .optional()?)
        })
        .await
    }

    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StorageError> {
        self.read(|c, _| {
            let mut st = c.prepare(&format!(
                "SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY username"
            ))?;
            let rows = st.query_map([], operator_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    // ---- chats and events ----

    /// Create a chat and its `started` event in one transaction.
    pub async fn create_chat<C>(
        &self,
        token_hash: Vec<u8>,
        visitor: VisitorInfo,
        start: ChatStart,
        on_commit: C,
    ) -> Result<StoredEvent, StorageError>
    where
        C: FnOnce(&StoredEvent) + Send + 'static,
    {
        self.write_then(
            move |c, st| {
                let chat_id = ChatId(st.next_chat_id);
                let now = now_ms();
                let blob = serde_json::to_vec(&visitor)
                    .map_err(|e| StorageError(format!("encoding visitor data: {e}")))?;
                let sealed = st.sealer.seal(&format!("chats/visitor/{}", chat_id.0), &blob);
                let (state, accepted) = match start.operator {
                    Some(_) => ("active", Some(now)),
                    None => ("queued", None),
                };
                c.execute(
                    "INSERT INTO chats(id, token_hash, state, created_ms, visitor, department, visitor_id, operator_id, accepted_ms) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                    params![chat_id.0, token_hash, state, now, sealed, start.department, start.visitor_id, start.operator.map(|o| o.0), accepted],
                )?;
                st.next_chat_id += 1;
                insert_event(c, st, chat_id, EventKind::Started, Sender::Visitor, None, visitor.name.clone(), visitor.question.clone(), now)
            },
            on_commit,
        )
        .await
    }

    /// Append one event; optionally change the chat's state in the same transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_event<C>(
        &self,
        chat_id: ChatId,
        kind: EventKind,
        from: Sender,
        operator: Option<OperatorId>,
        author: String,
        text: String,
        new_state: Option<StateChange>,
        on_commit: C,
    ) -> Result<StoredEvent, StorageError>
    where
        C: FnOnce(&StoredEvent) + Send + 'static,
    {
        self.write_then(
            move |c, st| {
                let now = now_ms();
                if let Some(StateChange::Queued { department: Some(d) }) = &new_state {
                    c.execute(
                        "UPDATE chats SET department=?1 WHERE id=?2",
                        params![d, chat_id.0],
                    )?;
                }
                if let Some(state) = new_state.map(|s| s.name()) {
                    let n = match state {
                        "active" => c.execute(
                            "UPDATE chats SET state='active', operator_id=?1, accepted_ms=coalesce(accepted_ms, ?3) WHERE id=?2",
                            params![operator.map(|o| o.0), chat_id.0, now],
                        )?,
                        "queued" => c.execute(
                            "UPDATE chats SET state='queued', operator_id=NULL WHERE id=?1",
                            params![chat_id.0],
                        )?,
                        "ended" => c.execute(
                            "UPDATE chats SET state='ended', ended_ms=?1 WHERE id=?2",
                            params![now, chat_id.0],
                        )?,
                        other => return Err(StorageError(format!("unknown chat state {other:?}"))),
                    };
                    if n != 1 {
                        return Err(StorageError(format!("no chat {}", chat_id.0)));
                    }
                }
                insert_event(c, st, chat_id, kind, from, operator, author, text, now)
            },
            on_commit,
        )
        .await
    }

    /// Stored events of a chat with id > `after`, in order.
    pub async fn events_after(
        &self,
        chat_id: ChatId,
        after: i64,
    ) -> Result<Vec<StoredEvent>, StorageError> {
        self.read(move |c, sealer| load_events(c, sealer, chat_id, after))
            .await
    }

    /// Chats not yet ended, for rebuilding the chat core at start-up.
    pub async fn open_chats(&self) -> Result<Vec<ChatRecord>, StorageError> {
        self.read(|c, sealer| {
            let mut st = c.prepare(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats WHERE state != 'ended' ORDER BY id"
            ))?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(chat_row(r, sealer)?);
            }
            Ok(out)
        })
        .await
    }

    /// One chat's visitor data and state, by id.
    pub async fn chat(&self, chat_id: ChatId) -> Result<Option<ChatRecord>, StorageError> {
        self.read(move |c, sealer| {
            let mut st =
                c.prepare_cached(&format!("SELECT {CHAT_COLUMNS} FROM chats WHERE id=?1"))?;
            let mut rows = st.query([chat_id.0])?;
            match rows.next()? {
                Some(r) => Ok(Some(chat_row(r, sealer)?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// A chat by its visitor token's hash (also after it ended: rating, transcript).
    pub async fn chat_by_token(
        &self,
        token_hash: Vec<u8>,
    ) -> Result<Option<ChatRecord>, StorageError> {
        self.read(move |c, sealer| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats WHERE token_hash=?1"
            ))?;
            let mut rows = st.query([token_hash])?;
            match rows.next()? {
                Some(r) => Ok(Some(chat_row(r, sealer)?)),
                None => Ok(None),
            }
        })
        .await
    }
}

pub(crate) const CHAT_COLUMNS: &str = "id, token_hash, state, operator_id, created_ms, visitor, department, visitor_id, ended_ms, rating, wrapup_category, extra";

pub(crate) fn chat_row(r: &rusqlite::Row<'_>, sealer: &Sealer) -> Result<ChatRecord, StorageError> {
    let id = ChatId(r.get(0)?);
    let sealed: Vec<u8> = r.get(5)?;
    let extra: Option<Vec<u8>> = r.get(11)?;
    let extra = match extra {
        Some(b) => {
            let plain = sealer
                .open(&format!("chats/extra/{}", id.0), &b)
                .map_err(|e| StorageError(format!("chat {}: extra: {e}", id.0)))?;
            serde_json::from_slice(&plain).unwrap_or_default()
        }
        None => ChatExtra::default(),
    };
    Ok(ChatRecord {
        id,
        token_hash: r.get(1)?,
        state: r.get(2)?,
        operator_id: r.get::<_, Option<i64>>(3)?.map(OperatorId),
        created_ms: r.get(4)?,
        visitor: open_visitor(sealer, id, &sealed)?,
        department: r.get(6)?,
        visitor_id: r.get(7)?,
        ended_ms: r.get(8)?,
        rating: r.get(9)?,
        wrapup_category: r.get(10)?,
        extra,
    })
}

pub(crate) const OPERATOR_COLUMNS: &str =
    "id, username, display_name, password_hash, role, disabled, departments, totp_enabled";

pub(crate) fn operator_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperatorRecord> {
    let departments: String = r.get(6)?;
    Ok(OperatorRecord {
        id: OperatorId(r.get(0)?),
        username: r.get(1)?,
        display_name: r.get(2)?,
        password_hash: r.get(3)?,
        role: r.get(4)?,
        disabled: r.get(5)?,
        departments: departments
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect(),
        totp_enabled: r.get(7)?,
    })
}

fn open_visitor(sealer: &Sealer, id: ChatId, sealed: &[u8]) -> Result<VisitorInfo, StorageError> {
    let plain = sealer
        .open(&format!("chats/visitor/{}", id.0), sealed)
        .map_err(|e| StorageError(format!("chat {}: visitor data: {e}", id.0)))?;
    serde_json::from_slice(&plain).map_err(|e| StorageError(format!("chat {}: {e}", id.0)))
}

fn event_aad(id: i64, chat: ChatId, kind: EventKind) -> String {
    format!("events/body/{id}/{}/{}", chat.0, kind.as_str())
}

#[allow(clippy::too_many_arguments)]
fn insert_event(
    c: &Connection,
    st: &mut WriterState,
    chat_id: ChatId,
    kind: EventKind,
    from: Sender,
    operator: Option<OperatorId>,
    author: String,
    text: String,
    ts: i64,
) -> Result<StoredEvent, StorageError> {
    let id = st.next_event_id;
    let body = serde_json::to_vec(&EventBody {
        author: author.clone(),
        text: text.clone(),
    })
    .map_err(|e| StorageError(format!("encoding event: {e}")))?;
    let sealed = st.sealer.seal(&event_aad(id, chat_id, kind), &body);
    c.prepare_cached(
        "INSERT INTO events(id, chat_id, kind, sender, operator_id, body, ts_ms) VALUES(?1,?2,?3,?4,?5,?6,?7)",
    )?
    .execute(
        params![id, chat_id.0, kind.as_str(), from.as_str(), operator.map(|o| o.0), sealed, ts],
    )?;
    st.next_event_id += 1;
    Ok(StoredEvent {
        id,
        chat_id,
        kind,
        from,
        author,
        text,
        ts,
    })
}

pub(crate) fn load_events(
    c: &Connection,
    sealer: &Sealer,
    chat_id: ChatId,
    after: i64,
) -> Result<Vec<StoredEvent>, StorageError> {
    let mut st = c.prepare_cached(
        "SELECT id, kind, sender, body, ts_ms FROM events WHERE chat_id=?1 AND id>?2 ORDER BY id",
    )?;
    let mut rows = st.query(params![chat_id.0, after])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let kind = EventKind::parse(&r.get::<_, String>(1)?)?;
        let from = Sender::parse(&r.get::<_, String>(2)?);
        let sealed: Vec<u8> = r.get(3)?;
        let plain = sealer
            .open(&event_aad(id, chat_id, kind), &sealed)
            .map_err(|e| StorageError(format!("event {id}: {e}")))?;
        let body: EventBody =
            serde_json::from_slice(&plain).map_err(|e| StorageError(format!("event {id}: {e}")))?;
        out.push(StoredEvent {
            id,
            chat_id,
            kind,
            from,
            author: body.author,
            text: body.text,
            ts: r.get(4)?,
        });
    }
    Ok(out)
}

/// Run a statement without parameters from the connection's statement cache (the writer
/// runs the same few for every job; parsing them each time cost more than running them).
fn exec_cached(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// How long the writer lets a transaction gather writes before it commits, when writes are
/// arriving steadily: one fsync (and one writer wake-up) then covers several messages. The
/// first write after a quiet spell commits at once.
const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_micros(1500);
/// Writes closer together than this count as steady.
const STEADY_GAP: std::time::Duration = std::time::Duration::from_millis(20);

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, mut state: WriterState) {
    const MAX_BATCH: usize = 512;
    let mut last_batch: Option<std::time::Instant> = None;
    while let Ok(first) = rx.recv() {
        let now = std::time::Instant::now();
        if last_batch.is_some_and(|t| now.duration_since(t) < STEADY_GAP) {
            // Sleep rather than wait on the queue: callers enqueue without waking this
            // thread, and nobody is answered before the COMMIT below.
            std::thread::sleep(GROUP_COMMIT_WINDOW);
        }
        last_batch = Some(now);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let began = exec_cached(&conn, "BEGIN IMMEDIATE");
        if let Err(e) = began {
            let err = StorageError(format!("database write failed, nothing was saved: {e}"));
            for job in batch {
                job(Err(err.clone()))(Err(err.clone()));
            }
            tracing::error!(MESSAGE_ID = crate::audit::ids::STORAGE_WRITE_FAILED, error = %e, "database write failed");
            continue;
        }
        let completions: Vec<Completion> = batch
            .into_iter()
            .map(|j| j(Ok((&conn, &mut state))))
            .collect();
        let commit = exec_cached(&conn, "COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            StorageError(format!("database write failed, nothing was saved: {e}"))
        });
        if let Err(e) = &commit {
            tracing::error!(MESSAGE_ID = crate::audit::ids::STORAGE_WRITE_FAILED, error = %e, "database commit failed");
            // Ids handed out in the failed batch were rolled back; start again from disk.
            if let Ok(n) = conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM events", [], |r| {
                r.get(0)
            }) {
                state.next_event_id = n;
            }
            if let Ok(n) = conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM chats", [], |r| {
                r.get(0)
            }) {
                state.next_chat_id = n;
            }
        }
        for done in completions {
            done(commit.clone());
        }
    }
}

// ---- audit chain verification, retention, erasure, backup ----

fn anchor_mac(sealer: &Sealer, seq: i64, hash: &[u8]) -> Vec<u8> {
    sealer.audit_mac(&[b"palisade audit anchor v1", &seq.to_be_bytes(), hash])
}

/// Where the audit chain starts: (0, zeros), or the last purged record (sealed anchor).
fn audit_anchor(c: &Connection, sealer: &Sealer) -> Result<(i64, Vec<u8>), StorageError> {
    let raw: Option<Vec<u8>> = c
        .query_row("SELECT value FROM meta WHERE key='audit_anchor'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(raw) = raw else {
        return Ok((0, vec![0u8; 32]));
    };
    if raw.len() != 8 + 32 + 32 {
        return Err(StorageError("audit anchor is malformed".into()));
    }
    let seq = i64::from_be_bytes(raw[..8].try_into().unwrap_or([0; 8]));
    let hash = raw[8..40].to_vec();
    if anchor_mac(sealer, seq, &hash) != raw[40..] {
        return Err(StorageError(
            "audit anchor was altered (its MAC does not verify)".into(),
        ));
    }
    Ok((seq, hash))
}

/// What walking the audit chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub records: u64,
    /// The last record purged by retention (the chain starts after it).
    pub anchor_seq: i64,
    pub head_seq: i64,
    pub head_hash: String,
    /// The first broken link, described for a person.
    pub broken: Option<String>,
}

fn walk_audit(c: &Connection, sealer: &Sealer) -> Result<AuditReport, StorageError> {
    let (anchor_seq, anchor_hash) = match audit_anchor(c, sealer) {
        Ok(a) => a,
        Err(e) => {
            return Ok(AuditReport {
                records: 0,
                anchor_seq: 0,
                head_seq: 0,
                head_hash: String::new(),
                broken: Some(e.0),
            })
        }
    };
    let mut st = c.prepare(
        "SELECT seq, ts_ms, message_id, event, detail, prev_hash, hash FROM audit ORDER BY seq",
    )?;
    let mut rows = st.query([])?;
    let (mut prev_seq, mut prev_hash) = (anchor_seq, anchor_hash);
    let mut records = 0u64;
    let mut broken = None;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let ts: i64 = r.get(1)?;
        let message_id: String = r.get(2)?;
        let event: String = r.get(3)?;
        let detail: String = r.get(4)?;
        let stored_prev: Vec<u8> = r.get(5)?;
        let hash: Vec<u8> = r.get(6)?;
        records += 1;
        if seq != prev_seq + 1 {
            broken = Some(format!(
                "record {seq} follows record {prev_seq}: record(s) {} deleted, or records inserted or reordered",
                if seq > prev_seq + 1 { format!("{}..={}", prev_seq + 1, seq - 1) } else { format!("{seq}") }
            ));
            break;
        }
        if stored_prev != prev_hash {
            broken = Some(format!(
                "record {seq} does not link to record {prev_seq}: a record was inserted, deleted or reordered here"
            ));
            break;
        }
        if crate::audit::link_hash(sealer, &prev_hash, seq, ts, &message_id, &event, &detail)
            != hash
        {
            broken = Some(format!(
                "record {seq} was changed after it was written (its link does not verify)"
            ));
            break;
        }
        prev_seq = seq;
        prev_hash = hash;
    }
    Ok(AuditReport {
        records,
        anchor_seq,
        head_seq: prev_seq,
        head_hash: crate::policy::hex(&prev_hash),
        broken,
    })
}

/// Walk the audit chain of the database in `state_dir`, read-only (the daemon may run).
pub fn verify_audit_chain(state_dir: &Path, sealer: &Sealer) -> Result<AuditReport, StorageError> {
    let path = state_dir.join(DB_FILE);
    if !path.exists() {
        return Err(StorageError(format!("{}: no database", path.display())));
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StorageError(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    walk_audit(&conn, sealer)
}

/// The stored link of one audit record (read-only), for comparing with a journal head.
pub fn audit_hash_at(
    state_dir: &Path,
    _sealer: &Sealer,
    seq: i64,
) -> Result<Option<String>, StorageError> {
    let path = state_dir.join(DB_FILE);
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StorageError(format!("{}: {e}", path.display())))?;
    let h: Option<Vec<u8>> = conn
        .query_row("SELECT hash FROM audit WHERE seq=?1", [seq], |r| r.get(0))
        .optional()?;
    Ok(h.map(|h| crate::policy::hex(&h)))
}

/// What a retention purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub chats: u64,
    pub events: u64,
    pub audit_records: u64,
}

impl Storage {
    /// The audit chain's head, for anchoring it in the journal.
    pub async fn audit_head(&self) -> Result<AuditReport, StorageError> {
        self.read(walk_audit).await
    }

    /// Delete ended chats older than `transcripts_before_ms` and audit records older than
    /// `audit_before_ms` (a prefix of the chain; the last one deleted becomes the sealed
    /// anchor). Deleted content is overwritten (`secure_delete`) and the WAL truncated.
    pub async fn purge(
        &self,
        transcripts_before_ms: i64,
        audit_before_ms: i64,
    ) -> Result<PurgeCounts, StorageError> {
        let counts = self
            .write(move |c, st| {
                let events = c.execute(
                    "DELETE FROM events WHERE chat_id IN (SELECT id FROM chats WHERE state='ended' AND ended_ms < ?1)",
                    [transcripts_before_ms],
                )? as u64;
                let chats = c.execute(
                    "DELETE FROM chats WHERE state='ended' AND ended_ms < ?1",
                    [transcripts_before_ms],
                )? as u64;
                // The prefix of the chain older than the cutoff.
                let first_kept: Option<i64> = c
                    .query_row("SELECT min(seq) FROM audit WHERE ts_ms >= ?1", [audit_before_ms], |r| r.get(0))?;
                let last_seq: Option<i64> = c.query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))?;
                let upto = match (first_kept, last_seq) {
                    (Some(k), _) => k - 1,
                    (None, Some(l)) => l,
                    (None, None) => 0,
                };
                let mut audit_records = 0;
                if upto > 0 {
                    let hash: Option<Vec<u8>> = c
                        .query_row("SELECT hash FROM audit WHERE seq=?1", [upto], |r| r.get(0))
                        .optional()?;
                    if let Some(hash) = hash {
                        let mut anchor = upto.to_be_bytes().to_vec();
                        anchor.extend_from_slice(&hash);
                        anchor.extend_from_slice(&anchor_mac(&st.sealer, upto, &hash));
                        c.execute(
                            "INSERT INTO meta(key, value) VALUES('audit_anchor', ?1) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                            [anchor],
                        )?;
                        audit_records = c.execute("DELETE FROM audit WHERE seq <= ?1", [upto])? as u64;
                    }
                }
                Ok(PurgeCounts { chats, events, audit_records })
            })
            .await?;
        self.checkpoint().await?;
        Ok(counts)
    }

    /// Erase one ended chat: its visitor data and every event. Refuses a live chat.
    pub async fn erase_chat(&self, chat: ChatId) -> Result<u64, StorageError> {
        let events = self
            .write(move |c, _| {
                let state: Option<String> = c
                    .query_row("SELECT state FROM chats WHERE id=?1", [chat.0], |r| {
                        r.get(0)
                    })
                    .optional()?;
                match state.as_deref() {
                    None => return Err(StorageError(format!("no chat {}", chat.0))),
                    Some("ended") => {}
                    Some(_) => {
                        return Err(StorageError(format!(
                            "chat {} is still open; it can be erased once it has ended",
                            chat.0
                        )))
                    }
                }
                let events = c.execute("DELETE FROM events WHERE chat_id=?1", [chat.0])? as u64;
                c.execute("DELETE FROM chats WHERE id=?1", [chat.0])?;
                Ok(events)
            })
            .await?;
        self.checkpoint().await?;
        Ok(events)
    }

    /// Move the WAL into the database and truncate it, so deleted content leaves no copy.
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        self.read(|c, _| {
            let (busy, _, _): (i64, i64, i64) =
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            if busy != 0 {
                return Err(StorageError(
                    "checkpoint could not complete (database busy)".into(),
                ));
            }
            Ok(())
        })
        .await
    }

    /// A consistent online copy of the database (SQLite backup API). The copy stays
    /// encrypted exactly like the original; it is created 0600 and never overwrites.
    pub async fn backup_to(&self, dest: PathBuf) -> Result<u64, StorageError> {
        if dest.exists() {
            return Err(StorageError(format!(
                "{}: already exists; not overwriting",
                dest.display()
            )));
        }
        crate::sandbox::write_private(&dest, b"").map_err(StorageError)?;
        self.read(move |c, _| {
            let mut out = Connection::open(&dest)
                .map_err(|e| StorageError(format!("{}: {e}", dest.display())))?;
            let backup = rusqlite::backup::Backup::new(c, &mut out)?;
            // One step copies every page under one read transaction: a consistent snapshot.
            backup.step(-1)?;
            let pages = backup.progress().pagecount as u64;
            drop(backup);
            let ok: String = out.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            if ok != "ok" {
                return Err(StorageError(format!(
                    "backup failed its integrity check: {ok}"
                )));
            }
            Ok(pages)
        })
        .await
    }
}
