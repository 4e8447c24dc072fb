//! Versioned schema migrations. `PRAGMA user_version` is the schema version;
//! `PRAGMA application_id` marks the file as Palisade's.

/// 'PALI'
pub const APPLICATION_ID: i64 = 0x5041_4c49;

/// Migration N (1-based) brings the schema from version N-1 to N.
pub const MIGRATIONS: &[&str] = &[
    // 1: operators, sessions, chats, events, audit, meta
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;
    CREATE TABLE operators (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'operator',
        disabled INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        changed_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        operator_id INTEGER NOT NULL REFERENCES operators(id),
        created_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE chats (
        id INTEGER PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,
        state TEXT NOT NULL,
        operator_id INTEGER REFERENCES operators(id),
        created_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        visitor BLOB NOT NULL
    ) STRICT;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL REFERENCES chats(id),
        kind TEXT NOT NULL,
        sender TEXT NOT NULL,
        operator_id INTEGER REFERENCES operators(id),
        body BLOB NOT NULL,
        ts_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX events_by_chat ON events(chat_id, id);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL
    ) STRICT;
    ",
];

pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;
