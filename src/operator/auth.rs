//! Operator login and sessions.
//!
//! Login = username + password + the server-wide authentication string. Both secrets are
//! checked against argon2id hashes every time — also for unknown or disabled users, against
//! a dummy hash — so every failure costs the same and looks the same. Hashing runs on
//! `max_concurrent_hashes` dedicated threads, with a bounded waiting line in front of them.
//!
//! Architecture invariant: only this module builds an [`AuthenticatedOperator`], and every
//! operator API handler takes one.

use crate::core::OperatorId;
use crate::policy::{Argon2Policy, LoginPolicy, SessionPolicy};
use crate::secret::Secret;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// An operator's role. Supervisors and admins may monitor, whisper, take over and manage
/// canned responses; everyone may chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Supervisor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Role {
        match s {
            "admin" => Role::Admin,
            "supervisor" => Role::Supervisor,
            _ => Role::Operator,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }
    pub fn supervises(self) -> bool {
        self >= Role::Supervisor
    }
}

/// Proof that a request carries a valid, unexpired session. Only [`Auth`] builds one.
#[derive(Debug, Clone)]
pub struct AuthenticatedOperator {
    pub id: OperatorId,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub departments: Vec<String>,
    /// The policy requires TOTP for this role and it is not enrolled yet.
    pub must_enroll: bool,
    session: [u8; 32],
}

impl AuthenticatedOperator {
    pub fn session_hash(&self) -> [u8; 32] {
        self.session
    }
}

/// argon2id with explicit parameters.
pub fn hasher(p: &Argon2Policy) -> Result<Argon2<'static>, String> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None)
        .map_err(|e| format!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash a secret into a PHC string (`$argon2id$v=19$m=…`).
pub fn hash_secret(p: &Argon2Policy, secret: &Secret) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    hasher(p)?
        .hash_password(secret.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

thread_local! {
    /// argon2's working memory (`memory_kib`), kept by each thread that verifies and reused:
    /// allocating, faulting in and unmapping it for every login cost the whole process
    /// page faults and TLB shootdowns during a login flood. argon2 overwrites every block
    /// it reads, so nothing carries over from one hash to the next.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Check a secret against a PHC string; only argon2id hashes are accepted.
pub fn verify_secret(phc: &str, secret: &Secret) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    // What `PasswordVerifier::verify_password` does, with reused memory.
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = Argon2::new(Algorithm::Argon2id, version, params);
    let computed = ARGON2_MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < blocks {
            m.resize(blocks, argon2::Block::default());
        }
        argon2::password_hash::Output::init_with(expected.len(), |out| {
            argon
                .hash_password_into_with_memory(
                    secret.expose().as_bytes(),
                    salt,
                    out,
                    &mut m[..blocks],
                )
                .map_err(|_| argon2::password_hash::Error::Password)
        })
    });
    // `Output` compares in constant time.
    computed.is_ok_and(|c| c == expected)
}

/// SHA-256 of a bearer token (tokens are stored and looked up only by their hash).
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh 256-bit random token, base64url.
pub fn new_token() -> Secret {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Option<Instant>,
}

/// Outcome of checking the password and the authentication string.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Both secrets are right for an enabled account; a second factor may still be due.
    Valid(AccountView),
    /// Wrong username, password, authentication string, or a disabled account — one answer.
    Invalid { reason: &'static str },
    /// Backoff in force for this account or source.
    Throttled { retry_after: Duration },
    /// Too many logins waiting for a hashing slot.
    Busy,
}

#[derive(Debug, Clone)]
struct Session {
    operator: OperatorId,
    username: String,
    display_name: String,
    role: Role,
    departments: Vec<String>,
    must_enroll: bool,
    created: Instant,
    /// Wall-clock creation time, to compare with account changes.
    created_ms: i64,
    last_seen: Instant,
}

/// What login needs to know about an account.
#[derive(Clone)]
pub struct AccountView {
    pub id: OperatorId,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub disabled: bool,
    pub role: Role,
    pub departments: Vec<String>,
    pub totp_enabled: bool,
}

impl std::fmt::Debug for AccountView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountView")
            .field("id", &self.id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

pub struct Auth {
    auth_string_hash: RwLock<String>,
    dummy_hash: String,
    login: RwLock<LoginPolicy>,
    session: RwLock<SessionPolicy>,
    hashers: std::sync::mpsc::Sender<HashJob>,
    waiting: AtomicUsize,
    by_account: Mutex<HashMap<String, Failures>>,
    by_source: Mutex<HashMap<IpAddr, Failures>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field(
                "sessions",
                &self.sessions.lock().map(|s| s.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Start the threads that run every argon2 check, for as long as `Auth` lives.
///
/// Each thread keeps its own `memory_kib` of argon2 working memory (see `verify_secret`).
/// On tokio's blocking pool (which grows to hundreds of threads under a login flood) that
/// memory grew with the number of threads that had ever hashed. A fixed set of threads
/// bounds it to about `threads × memory_kib` and also bounds how many hashes run at once.
fn start_hashers(threads: usize) -> Result<std::sync::mpsc::Sender<HashJob>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads.max(1) {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("palisade-argon2-{i}"))
            .spawn(move || {
                // Lowest CPU priority: a login flood cannot take the CPU from chats in
                // progress (best effort; a sandbox may refuse, and then nothing changes).
                let _ = crate::sandbox::lower_thread_priority();
                hash_jobs(&rx)
            })
            .map_err(|e| format!("cannot start the password-hashing threads: {e}"))?;
    }
    Ok(tx)
}

/// Run hashing jobs until `Auth` is dropped.
fn hash_jobs(rx: &Mutex<std::sync::mpsc::Receiver<HashJob>>) {
    loop {
        // Holding the lock only while waiting: one idle thread takes the next job.
        let job = lock(rx).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return, // Auth dropped
        }
    }
}

/// A place in the login waiting line, given back however the login ends (also when the
/// client hangs up and the login future is dropped half-way).
struct WaitingPlace<'a>(&'a AtomicUsize);

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn read<T: Clone>(m: &RwLock<T>) -> T {
    m.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn check_phc(hash: &str) -> Result<(), String> {
    if PasswordHash::new(hash.trim())
        .map(|h| h.algorithm.as_str() != "argon2id")
        .unwrap_or(true)
    {
        return Err("the authentication-string hash is not an argon2id PHC string".into());
    }
    Ok(())
}

impl Auth {
    pub fn new(
        auth_string_hash: String,
        argon: &Argon2Policy,
        login: LoginPolicy,
        session: SessionPolicy,
    ) -> Result<Auth, String> {
        check_phc(&auth_string_hash)?;
        let dummy = hash_secret(argon, &new_token())?;
        Ok(Auth {
            auth_string_hash: RwLock::new(auth_string_hash.trim().to_string()),
            dummy_hash: dummy,
            hashers: start_hashers(login.max_concurrent_hashes)?,
            login: RwLock::new(login),
            session: RwLock::new(session),
            waiting: AtomicUsize::new(0),
            by_account: Mutex::new(HashMap::new()),
            by_source: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Apply a reloaded policy and authentication-string hash. Sessions stay; the number
    /// of hashing slots changes only at restart.
    pub fn update(
        &self,
        auth_string_hash: String,
        login: LoginPolicy,
        session: SessionPolicy,
    ) -> Result<(), String> {
        check_phc(&auth_string_hash)?;
        *self
            .auth_string_hash
            .write()
            .unwrap_or_else(|p| p.into_inner()) = auth_string_hash.trim().to_string();
        *self.login.write().unwrap_or_else(|p| p.into_inner()) = login;
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = session;
        Ok(())
    }

    /// Would `login` answer `Busy` right now (no backoff in force, the waiting line full)?
    /// Asked before the account is looked up, so an excess login is refused without a
    /// database read; `login` checks again when it takes its place in the line.
    pub fn line_full(&self, username: &str, source: IpAddr) -> bool {
        if self.blocked(username, source, Instant::now()).is_some() {
            return false;
        }
        self.waiting.load(Ordering::SeqCst) >= self.line_len()
    }

    /// Logins that may hash or wait for a hashing thread at once.
    fn line_len(&self) -> usize {
        let l = read(&self.login);
        l.max_waiting_logins + l.max_concurrent_hashes
    }

    fn blocked(&self, username: &str, source: IpAddr, now: Instant) -> Option<Duration> {
        let until = [
            lock(&self.by_account)
                .get(username)
                .and_then(|f| f.blocked_until),
            lock(&self.by_source)
                .get(&source)
                .and_then(|f| f.blocked_until),
        ];
        until
            .into_iter()
            .flatten()
            .filter(|u| *u > now)
            .max()
            .map(|u| u - now)
    }

    fn backoff(&self, count: u32, threshold: u32) -> Option<Duration> {
        if count < threshold {
            return None;
        }
        let login = read(&self.login);
        let exp = (count - threshold).min(20);
        let secs = login
            .backoff_base_secs
            .saturating_mul(1u64 << exp)
            .min(login.backoff_max_secs);
        Some(Duration::from_secs(secs))
    }

    /// Count a failed login (also one that failed at the second factor).
    pub fn fail(&self, username: &str, source: IpAddr) {
        self.note_failure(username, source, Instant::now());
    }

    fn note_failure(&self, username: &str, source: IpAddr, now: Instant) {
        let login = read(&self.login);
        let mut acc = lock(&self.by_account);
        // Bound the table: an attacker spraying random names must not grow it without end.
        if acc.len() > 100_000 {
            acc.retain(|_, f| f.blocked_until.is_some_and(|u| u > now));
        }
        let f = acc.entry(username.to_string()).or_insert(Failures {
            count: 0,
            blocked_until: None,
        });
        f.count += 1;
        f.blocked_until = self
            .backoff(f.count, login.max_failures_per_account)
            .map(|d| now + d);
        drop(acc);
        let mut src = lock(&self.by_source);
        if src.len() > 100_000 {
            src.retain(|_, f| f.blocked_until.is_some_and(|u| u > now));
        }
        let f = src.entry(source).or_insert(Failures {
            count: 0,
            blocked_until: None,
        });
        f.count += 1;
        f.blocked_until = self
            .backoff(f.count, login.max_failures_per_source)
            .map(|d| now + d);
    }

    fn note_success(&self, username: &str, source: IpAddr) {
        lock(&self.by_account).remove(username);
        lock(&self.by_source).remove(&source);
    }

    /// Check the three secrets. `account` is `None` for an unknown username.
    pub async fn login(
        &self,
        username: &str,
        password: Secret,
        auth_string: Secret,
        account: Option<AccountView>,
        source: IpAddr,
    ) -> LoginOutcome {
        let now = Instant::now();
        if let Some(retry_after) = self.blocked(username, source, now) {
            return LoginOutcome::Throttled { retry_after };
        }
        // Bounded waiting line in front of the hashing threads.
        let place = WaitingPlace(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.line_len() {
            return LoginOutcome::Busy;
        }
        let phc = account
            .as_ref()
            .map(|a| a.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let string_hash = read(&self.auth_string_hash);
        let (done, checked) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            // A login whose client hung up while waiting gave its place in the line back
            // already: hashing for nobody would let a client that sends logins and
            // disconnects queue unbounded argon2 work.
            if done.is_closed() {
                return;
            }
            // Both checks always run: the answer and its cost do not depend on which failed.
            let pw_ok = verify_secret(&phc, &password);
            let str_ok = verify_secret(&string_hash, &auth_string);
            let _ = done.send((pw_ok, str_ok));
        });
        let checked = match self.hashers.send(job) {
            Ok(()) => checked.await.ok(),
            Err(_) => None,
        };
        drop(place);
        let (pw_ok, str_ok) = checked.unwrap_or((false, false));
        let reason = match (&account, pw_ok, str_ok) {
            (None, _, _) => Some("unknown_user"),
            (Some(a), _, _) if a.disabled => Some("disabled"),
            (Some(_), false, _) => Some("bad_password"),
            (Some(_), true, false) => Some("bad_auth_string"),
            (Some(_), true, true) => None,
        };
        match (reason, account) {
            (None, Some(a)) => LoginOutcome::Valid(a),
            (reason, _) => {
                self.note_failure(username, source, Instant::now());
                LoginOutcome::Invalid {
                    reason: reason.unwrap_or("unknown_user"),
                }
            }
        }
    }

    /// Open a session for an account whose every factor checked out.
    pub fn open_session(
        &self,
        a: &AccountView,
        source: IpAddr,
        must_enroll: bool,
    ) -> (AuthenticatedOperator, Secret) {
        self.note_success(&a.username, source);
        let token = new_token();
        let hash = token_hash(token.expose());
        let now = Instant::now();
        lock(&self.sessions).insert(
            hash,
            Session {
                operator: a.id,
                username: a.username.clone(),
                display_name: a.display_name.clone(),
                role: a.role,
                departments: a.departments.clone(),
                must_enroll,
                created: now,
                created_ms: crate::storage::now_ms(),
                last_seen: now,
            },
        );
        (
            AuthenticatedOperator {
                id: a.id,
                username: a.username.clone(),
                display_name: a.display_name.clone(),
                role: a.role,
                departments: a.departments.clone(),
                must_enroll,
                session: hash,
            },
            token,
        )
    }

    /// TOTP is now enrolled for this operator: lift the enrolment gate on their sessions.
    pub fn enrolled(&self, op: OperatorId) {
        for s in lock(&self.sessions).values_mut() {
            if s.operator == op {
                s.must_enroll = false;
            }
        }
    }

    /// Look up a session token. `touch` refreshes the idle timer.
    pub fn session(&self, token: &str, touch: bool) -> Option<AuthenticatedOperator> {
        let hash = token_hash(token);
        let now = Instant::now();
        let mut map = lock(&self.sessions);
        let s = map.get_mut(&hash)?;
        let session = read(&self.session);
        let idle = Duration::from_secs(session.idle_timeout_secs);
        let absolute = Duration::from_secs(session.absolute_timeout_secs);
        if now.duration_since(s.last_seen) > idle || now.duration_since(s.created) > absolute {
            map.remove(&hash);
            return None;
        }
        if touch {
            s.last_seen = now;
        }
        Some(AuthenticatedOperator {
            id: s.operator,
            username: s.username.clone(),
            display_name: s.display_name.clone(),
            role: s.role,
            departments: s.departments.clone(),
            must_enroll: s.must_enroll,
            session: hash,
        })
    }

    /// Is this session (by hash) still valid? Used by open event streams.
    pub fn session_alive(&self, hash: &[u8; 32]) -> bool {
        let now = Instant::now();
        let session = read(&self.session);
        let map = lock(&self.sessions);
        map.get(hash).is_some_and(|s| {
            now.duration_since(s.last_seen) <= Duration::from_secs(session.idle_timeout_secs)
                && now.duration_since(s.created)
                    <= Duration::from_secs(session.absolute_timeout_secs)
        })
    }

    pub fn end_session(&self, hash: &[u8; 32]) {
        lock(&self.sessions).remove(hash);
    }

    /// How many live sessions an operator has.
    pub fn sessions_of(&self, op: OperatorId) -> usize {
        lock(&self.sessions)
            .values()
            .filter(|s| s.operator == op)
            .count()
    }

    /// End the sessions of an operator opened before `changed_ms` (the account changed
    /// after they logged in). Returns how many ended.
    pub fn end_sessions_before(&self, op: OperatorId, changed_ms: i64) -> usize {
        let mut map = lock(&self.sessions);
        let before = map.len();
        map.retain(|_, s| s.operator != op || s.created_ms >= changed_ms);
        before - map.len()
    }

    /// End every session of an operator (password change, disable).
    pub fn end_sessions_of(&self, op: OperatorId) -> usize {
        let mut map = lock(&self.sessions);
        let before = map.len();
        map.retain(|_, s| s.operator != op);
        before - map.len()
    }

    pub fn cookie_max_age(&self) -> u64 {
        read(&self.session).absolute_timeout_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> (Argon2Policy, LoginPolicy, SessionPolicy) {
        (
            Argon2Policy {
                memory_kib: 19456,
                iterations: 2,
                parallelism: 1,
            },
            LoginPolicy {
                max_failures_per_account: 3,
                max_failures_per_source: 100,
                backoff_base_secs: 60,
                backoff_max_secs: 600,
                max_concurrent_hashes: 2,
                max_waiting_logins: 8,
            },
            SessionPolicy {
                idle_timeout_secs: 600,
                absolute_timeout_secs: 3600,
            },
        )
    }

    #[tokio::test]
    async fn wrong_string_and_wrong_password_look_alike_and_backoff_engages() {
        let (a, l, s) = policy();
        let string = Secret::new("the-string".into());
        let auth = Auth::new(hash_secret(&a, &string).unwrap(), &a, l, s).unwrap();
        let account = AccountView {
            id: OperatorId(1),
            username: "ann".into(),
            display_name: "Ann".into(),
            password_hash: hash_secret(&a, &Secret::new("pw-ann-123".into())).unwrap(),
            disabled: false,
            role: Role::Operator,
            departments: vec![],
            totp_enabled: false,
        };
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let ok = auth
            .login(
                "ann",
                Secret::new("pw-ann-123".into()),
                string.clone(),
                Some(account.clone()),
                src,
            )
            .await;
        let LoginOutcome::Valid(valid) = ok else {
            panic!("{ok:?}")
        };
        let (_, token) = auth.open_session(&valid, src, false);
        assert!(auth.session(token.expose(), true).is_some());
        let bad_string = auth
            .login(
                "ann",
                Secret::new("pw-ann-123".into()),
                Secret::new("nope".into()),
                Some(account.clone()),
                src,
            )
            .await;
        assert!(matches!(
            bad_string,
            LoginOutcome::Invalid {
                reason: "bad_auth_string"
            }
        ));
        let bad_pw = auth
            .login(
                "ann",
                Secret::new("nope".into()),
                string.clone(),
                Some(account.clone()),
                src,
            )
            .await;
        assert!(matches!(
            bad_pw,
            LoginOutcome::Invalid {
                reason: "bad_password"
            }
        ));
        let unknown = auth
            .login("bob", Secret::new("x".into()), string.clone(), None, src)
            .await;
        assert!(matches!(
            unknown,
            LoginOutcome::Invalid {
                reason: "unknown_user"
            }
        ));
        // Third failure for "ann" reaches the threshold: even the right secrets now wait.
        let _ = auth
            .login(
                "ann",
                Secret::new("nope".into()),
                string.clone(),
                Some(account.clone()),
                src,
            )
            .await;
        let locked = auth
            .login(
                "ann",
                Secret::new("pw-ann-123".into()),
                string.clone(),
                Some(account),
                src,
            )
            .await;
        assert!(
            matches!(locked, LoginOutcome::Throttled { .. }),
            "{locked:?}"
        );
        assert_eq!(auth.end_sessions_of(OperatorId(1)), 1);
        assert!(auth.session(token.expose(), false).is_none());
    }
}
