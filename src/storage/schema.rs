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
    // (Migration 1's sessions table is unused: sessions live in memory only, so a restart
    // logs everyone out.)
    // 2: chat features: departments, TOTP, ratings and wrap-up, canned responses, the
    // offline inbox, page views.
    "
    ALTER TABLE operators ADD COLUMN departments TEXT NOT NULL DEFAULT '';
    ALTER TABLE operators ADD COLUMN totp_secret BLOB;
    ALTER TABLE operators ADD COLUMN totp_enabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE operators ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE recovery_codes (
        operator_id INTEGER NOT NULL REFERENCES operators(id),
        code_hash BLOB NOT NULL,
        used_ms INTEGER,
        PRIMARY KEY (operator_id, code_hash)
    ) STRICT;
    ALTER TABLE chats ADD COLUMN department TEXT;
    ALTER TABLE chats ADD COLUMN visitor_id TEXT;
    ALTER TABLE chats ADD COLUMN accepted_ms INTEGER;
    ALTER TABLE chats ADD COLUMN rating INTEGER;
    ALTER TABLE chats ADD COLUMN wrapup_category TEXT;
    ALTER TABLE chats ADD COLUMN extra BLOB;
    CREATE INDEX chats_by_created ON chats(created_ms);
    CREATE TABLE canned (
        id INTEGER PRIMARY KEY,
        shortcut TEXT NOT NULL UNIQUE,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        changed_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE offline_messages (
        id INTEGER PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        department TEXT,
        body BLOB NOT NULL,
        read_ms INTEGER,
        read_by INTEGER REFERENCES operators(id)
    ) STRICT;
    CREATE TABLE page_views (
        id INTEGER PRIMARY KEY,
        visitor_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        body BLOB NOT NULL
    ) STRICT;
    CREATE INDEX page_views_by_ts ON page_views(ts_ms);
    ",
];

pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;
