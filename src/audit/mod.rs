//! Security events: one place that names them, logs them to the journal with a stable
//! `MESSAGE_ID`, and appends them to the hash-chained audit table.
//!
//! Architecture invariant: a security event is never only logged or only stored; both go
//! through [`Auditor::record`]. No event carries a secret, a token or a message body.
#![forbid(unsafe_code)]

use crate::storage::{Storage, StorageError};

/// Stable journal `MESSAGE_ID`s (128-bit, lowercase hex). Never reuse or change one.
pub mod ids {
    pub const DAEMON_READY: &str = "c53f20ed7f5b4ef5a83cadfd6b89d501";
    pub const DAEMON_STOPPING: &str = "cdcd17b365ce49b98d2fd3607b87ea90";
    pub const POLICY_LOADED: &str = "148c45a071d44d40be10f88ba615461e";
    pub const PIN_VERIFIED: &str = "e6e082ca03e248279d9b67eb53cb6164";
    pub const PIN_REFUSED: &str = "e66c4e7074e843fe9750b18ff7711319";
    pub const LOGIN_OK: &str = "600839d9fe244fd8be14781e5ded1032";
    pub const LOGIN_FAILED: &str = "a5ee2a2cdb3d484886b5c87fd2eb6bd7";
    pub const LOGIN_THROTTLED: &str = "ff45139005ae406e9395321cc5f81a71";
    pub const SOURCE_REFUSED: &str = "08d6864fc07249a9be11d2619565aec1";
    pub const LOGOUT: &str = "f2785bc6c1374f319bfe53cdeb118372";
    pub const OPERATOR_CHANGED: &str = "ce3e03c1a04547418191da6fa7988cdc";
    pub const TRANSCRIPT_ACCESS: &str = "ef5c1e1519dd4a718b672dc4562d840c";
    pub const STORAGE_WRITE_FAILED: &str = "8810935d7fa1479380b8076af9154b07";
    pub const STARTUP_REFUSED: &str = "736921ca72d14113966983ab0d4ad1b5";
    pub const POLICY_OVERRIDE: &str = "3f0c6b1f0d8a4f5c9d2e7a41b6c8e913";
    pub const POLICY_RELOAD_REFUSED: &str = "9a7d2c4e5b1f4d8e8c3a6f0b2d4e1c77";
    pub const AUDIT_HEAD: &str = "5d1e8f2a7c9b4e6d8a0f3c5b7e9d1a24";
    pub const RETENTION_PURGE: &str = "b8e3c1d5f7a94b2c8e6d0f4a2c6e8b19";
    pub const VISITOR_ERASED: &str = "c4a9e7b2d1f84c3e9b5a7d0e2f4c6a81";
    pub const BACKUP_WRITTEN: &str = "e2d4f6a8c0b14e3d9f7a5c3e1b9d7f52";
    pub const SUPERVISOR_ACTION: &str = "7b3e9d1c5a2f4e8b9c6d0a3f5e7b1d48";
    pub const INVITATION: &str = "a1f7c3e9b5d24f6a8e0c2b4d6f8a1c35";
    pub const TOTP_CHANGED: &str = "d6b2f8e4a0c94d1e7b3f5a9c1e7d3b62";

    /// Every id the code emits, with its event name (kept equal to the journal catalog).
    pub const ALL: &[(&str, &str)] = &[
        (DAEMON_READY, "daemon_ready"),
        (DAEMON_STOPPING, "daemon_stopping"),
        (POLICY_LOADED, "policy_loaded"),
        (PIN_VERIFIED, "pin_verified"),
        (PIN_REFUSED, "pin_refused"),
        (LOGIN_OK, "login_ok"),
        (LOGIN_FAILED, "login_failed"),
        (LOGIN_THROTTLED, "login_throttled"),
        (SOURCE_REFUSED, "source_refused"),
        (LOGOUT, "logout"),
        (OPERATOR_CHANGED, "operator_changed"),
        (TRANSCRIPT_ACCESS, "transcript_access"),
        (STORAGE_WRITE_FAILED, "storage_write_failed"),
        (STARTUP_REFUSED, "startup_refused"),
        (POLICY_OVERRIDE, "policy_override"),
        (POLICY_RELOAD_REFUSED, "policy_reload_refused"),
        (AUDIT_HEAD, "audit_head"),
        (RETENTION_PURGE, "retention_purge"),
        (VISITOR_ERASED, "visitor_erased"),
        (BACKUP_WRITTEN, "backup_written"),
        (SUPERVISOR_ACTION, "supervisor_action"),
        (INVITATION, "invitation"),
        (TOTP_CHANGED, "totp_changed"),
    ];
}

/// Appends security events to the journal and to the audit chain.
#[derive(Debug, Clone)]
pub struct Auditor {
    storage: Storage,
}

/// Chain link: an HMAC (keyed from the data key) over the previous link and every field
/// of the record. Without the key, a changed, inserted or reordered record cannot be given
/// a valid link.
pub fn link_hash(
    sealer: &crate::storage::crypto::Sealer,
    prev: &[u8],
    seq: i64,
    ts: i64,
    message_id: &str,
    event: &str,
    detail: &str,
) -> Vec<u8> {
    sealer.audit_mac(&[
        b"palisade audit record v1",
        prev,
        &seq.to_be_bytes(),
        &ts.to_be_bytes(),
        message_id.as_bytes(),
        event.as_bytes(),
        detail.as_bytes(),
    ])
}

impl Auditor {
    pub fn new(storage: Storage) -> Auditor {
        Auditor { storage }
    }

    /// Log and store one security event. `detail` is a short `key=value` text without
    /// secrets. Storage failures are logged; the event is still in the journal.
    pub async fn record(&self, message_id: &'static str, event: &'static str, detail: String) {
        tracing::info!(MESSAGE_ID = message_id, EVENT = event, "{event}: {detail}");
        if let Err(e) = self.append(message_id, event, detail).await {
            tracing::error!(MESSAGE_ID = ids::STORAGE_WRITE_FAILED, error = %e, "audit record not stored");
        }
    }

    async fn append(
        &self,
        message_id: &'static str,
        event: &'static str,
        detail: String,
    ) -> Result<(), StorageError> {
        self.storage.append_audit(message_id, event, detail).await
    }
}
