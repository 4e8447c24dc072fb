//! Start-up and the two accept loops.
//!
//! [`start`] does every check before any port is opened: policy, file permissions, pins,
//! data key, database. Then it binds (or adopts socket-activated) listeners and spawns the
//! accept loops. The visitor loop hands each connection to TLS; the operator loop first asks
//! the allowlist, and closes refused sources without reading a byte.
#![forbid(unsafe_code)]

use crate::audit::{ids, Auditor};
use crate::core::ChatCore;
use crate::hub::Hub;
use crate::operator::allowlist::Allowlist;
use crate::operator::auth::Auth;
use crate::policy::{load_policy, Config, Policy, POLICY_FILES};
use crate::secret::SecretKey;
use crate::storage::crypto::Sealer;
use crate::storage::Storage;
use crate::tls::{load_pinned, PinnedCertificate};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// What a reload swaps: the policy and everything built from it.
#[derive(Clone)]
pub struct Live {
    pub policy: Arc<Policy>,
    pub visitor_tls: TlsAcceptor,
    pub operator_tls: TlsAcceptor,
    pub allowlist: Arc<Allowlist>,
    pub visitor_pin: String,
    pub operator_pin: String,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("policy", &self.policy.sha256)
            .field("visitor_pin", &self.visitor_pin)
            .field("operator_pin", &self.operator_pin)
            .finish_non_exhaustive()
    }
}

/// Shared state of a running daemon.
pub struct App {
    live: RwLock<Live>,
    pub config: Config,
    pub storage: Storage,
    pub audit: Auditor,
    pub core: Mutex<ChatCore>,
    pub hub: Hub,
    pub auth: Auth,
    pub limits: Limits,
    pub stats: Stats,
    pub started: Instant,
    /// Operators' display names, by id (events authored by operators).
    names: Mutex<HashMap<crate::core::OperatorId, String>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("policy", &self.policy().sha256)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The chat core (hold the guard briefly; never across an await).
    pub fn core(&self) -> std::sync::MutexGuard<'_, ChatCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn names(&self) -> std::sync::MutexGuard<'_, HashMap<crate::core::OperatorId, String>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy in force now (a reload may replace it at any time).
    pub fn policy(&self) -> Arc<Policy> {
        self.live().policy
    }

    /// The whole live configuration.
    pub fn live(&self) -> Live {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn build_live(v: &Verified, policy: Arc<Policy>) -> Result<Live, String> {
    let visitor_tls = crate::tls::visitor_server_config(
        &v.visitor_cert,
        &policy.tls.visitor.min_version,
        policy.tls.visitor.session_resumption,
    )?;
    let operator_tls = crate::tls::operator_server_config(&v.operator_cert)?;
    Ok(Live {
        allowlist: Arc::new(Allowlist::new(policy.operator_allow.clone())),
        visitor_tls: TlsAcceptor::from(visitor_tls),
        operator_tls: TlsAcceptor::from(operator_tls),
        visitor_pin: v.visitor_cert.pin().to_string(),
        operator_pin: v.operator_cert.pin().to_string(),
        policy,
    })
}

/// Log the policy that is now in force: its hash, the pins, and every override.
async fn announce_policy(app: &App, live: &Live) {
    let p = &live.policy;
    app.audit
        .record(
            ids::POLICY_LOADED,
            "policy_loaded",
            format!("dir={} sha256={}", p.dir.display(), p.sha256),
        )
        .await;
    for o in &p.overrides_in_force {
        tracing::warn!(
            MESSAGE_ID = ids::POLICY_OVERRIDE,
            "dangerous value accepted by override: {o}"
        );
        app.audit
            .record(ids::POLICY_OVERRIDE, "policy_override", o.clone())
            .await;
    }
    for (side, pin) in [
        ("visitor", &live.visitor_pin),
        ("operator", &live.operator_pin),
    ] {
        app.audit
            .record(
                ids::PIN_VERIFIED,
                "pin_verified",
                format!("side={side} pin={pin}"),
            )
            .await;
    }
}

/// Re-read policy and certificates (SIGHUP). A policy or certificate that fails any check
/// leaves the running configuration in place; a good one applies to new connections
/// without touching established chats. Returns the problems when the reload was refused.
pub async fn reload(app: &App) -> Result<(), Vec<String>> {
    let refuse = |problems: Vec<String>| async {
        for p in &problems {
            tracing::error!(
                MESSAGE_ID = ids::POLICY_RELOAD_REFUSED,
                "reload refused, old configuration kept: {p}"
            );
        }
        app.audit
            .record(
                ids::POLICY_RELOAD_REFUSED,
                "policy_reload_refused",
                format!(
                    "problems={} first={}",
                    problems.len(),
                    problems.first().map(String::as_str).unwrap_or("")
                ),
            )
            .await;
        Err(problems)
    };
    let config = match Config::load(&app.config.path) {
        Ok(c) => c,
        Err(e) => return refuse(vec![e]).await,
    };
    let verified = match verify(&config) {
        Ok(v) => v,
        Err(e) => return refuse(e.0).await,
    };
    let old = app.policy();
    let mut notes = Vec::new();
    if verified.policy.network.visitor.listen != old.network.visitor.listen
        || verified.policy.network.operator.listen != old.network.operator.listen
    {
        notes.push("listen addresses changed: they take effect at the next restart".to_string());
    }
    if config.state_dir != app.config.state_dir || config.data_key != app.config.data_key {
        return refuse(vec![
            "state_dir or data_key changed: these need a restart".to_string()
        ])
        .await;
    }
    let policy = Arc::new(verified.policy.clone());
    let live = match build_live(&verified, policy.clone()) {
        Ok(l) => l,
        Err(e) => return refuse(vec![e]).await,
    };
    if let Err(e) = app.auth.update(
        verified.auth_string_hash.clone(),
        policy.accounts.login.clone(),
        policy.accounts.session.clone(),
    ) {
        return refuse(vec![e]).await;
    }
    *app.live.write().unwrap_or_else(|p| p.into_inner()) = live.clone();
    for n in notes {
        tracing::warn!("{n}");
    }
    announce_policy(app, &live).await;
    Ok(())
}

/// Counters for health and the journal.
#[derive(Debug, Default)]
pub struct Stats {
    pub refused_sources: AtomicU64,
    pub visitor_connections: AtomicU64,
    pub operator_connections: AtomicU64,
}

/// Fixed-window rate limits keyed by chat or source.
#[derive(Debug, Default)]
pub struct Limits {
    messages: Mutex<HashMap<i64, (Instant, u32)>>,
    chat_starts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    page_views: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Page views (and hellos) one source may report per minute.
pub const PAGE_VIEWS_PER_MINUTE: u32 = 120;

fn window_hit<K: std::hash::Hash + Eq + Copy>(
    map: &Mutex<HashMap<K, (Instant, u32)>>,
    key: K,
    window: Duration,
    max: u32,
) -> bool {
    let now = Instant::now();
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() > 200_000 {
        m.retain(|_, (start, _)| now.duration_since(*start) < window);
    }
    let e = m.entry(key).or_insert((now, 0));
    if now.duration_since(e.0) >= window {
        *e = (now, 0);
    }
    if e.1 >= max {
        return false;
    }
    e.1 += 1;
    true
}

impl Limits {
    /// May this chat send another message now?
    pub fn message_allowed(&self, chat: i64, per_minute: u32) -> bool {
        window_hit(&self.messages, chat, Duration::from_secs(60), per_minute)
    }
    /// May this source report another page view now?
    pub fn page_view_allowed(&self, source: IpAddr) -> bool {
        window_hit(
            &self.page_views,
            source,
            Duration::from_secs(60),
            PAGE_VIEWS_PER_MINUTE,
        )
    }

    /// May this source start another chat now?
    pub fn chat_start_allowed(&self, source: IpAddr, per_hour: u32) -> bool {
        window_hit(
            &self.chat_starts,
            source,
            Duration::from_secs(3600),
            per_hour,
        )
    }
}

/// Everything that can stop the daemon from starting, one line each.
#[derive(Debug)]
pub struct StartError(pub Vec<String>);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

/// The verified inputs of a daemon: what `check` reports and `serve` runs on.
#[derive(Debug)]
pub struct Verified {
    pub policy: Policy,
    pub visitor_cert: PinnedCertificate,
    pub operator_cert: PinnedCertificate,
    pub data_key: SecretKey,
    pub auth_string_hash: String,
}

pub fn read_data_key(path: &Path) -> Result<SecretKey, String> {
    let raw = std::fs::read(path)
        .map_err(|e| format!("{}: cannot read data key: {e}", path.display()))?;
    let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
    let mut key = [0u8; 32];
    if raw.len() == 32 {
        key.copy_from_slice(&raw);
    } else if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).unwrap_or("00");
            key[i] = u8::from_str_radix(s, 16).unwrap_or(0);
        }
    } else {
        return Err(format!(
            "{}: the data key must be 32 raw bytes or 64 hex characters",
            path.display()
        ));
    }
    Ok(SecretKey::from_bytes(key))
}

/// Check config, policy, permissions, pins and secrets; report every problem found.
pub fn verify(config: &Config) -> Result<Verified, StartError> {
    let mut problems = Vec::new();
    if let Err(e) = crate::sandbox::check_policy_file(&config.path) {
        problems.push(e);
    }
    if let Err(e) = crate::sandbox::check_policy_file(&config.policy_dir) {
        problems.push(e);
    }
    for f in POLICY_FILES {
        let p = config.policy_dir.join(f);
        if p.exists() {
            if let Err(e) = crate::sandbox::check_policy_file(&p) {
                problems.push(e);
            }
        }
    }
    let policy = match load_policy(&config.policy_dir) {
        Ok(p) => Some(p),
        Err(errs) => {
            problems.extend(
                errs.0
                    .iter()
                    .map(|e| format!("{}: {e}", config.policy_dir.display())),
            );
            None
        }
    };
    let mut secret_path = |spec: &str, what: &str| -> Option<PathBuf> {
        match config.resolve_secret_path(spec) {
            Ok(p) => match crate::sandbox::check_secret_file(&p) {
                Ok(()) => Some(p),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
            Err(e) => {
                problems.push(format!("{what}: {e}"));
                None
            }
        }
    };
    let data_key_path = secret_path(&config.data_key, "data_key");
    let auth_path = secret_path(&config.auth_string_hash, "auth_string_hash");
    let (mut visitor_cert, mut operator_cert) = (None, None);
    if let Some(policy) = &policy {
        let base = &config.policy_dir;
        let mut certs =
            |cert: &str, key: &str, pins: &[String], side: &str| -> Option<PinnedCertificate> {
                let cert_path = crate::policy::resolve_location(base, cert);
                let key_path = crate::policy::resolve_location(base, key);
                let (cert_path, key_path) = match (cert_path, key_path) {
                    (Ok(c), Ok(k)) => (c, k),
                    (Err(e), _) | (_, Err(e)) => {
                        problems.push(format!("tls.toml: {side}: {e}"));
                        return None;
                    }
                };
                if let Err(e) = crate::sandbox::check_secret_file(&key_path) {
                    problems.push(e);
                    return None;
                }
                match load_pinned(&cert_path, &key_path, pins) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        problems.push(format!("{side} certificate {}: {e}", cert_path.display()));
                        None
                    }
                }
            };
        visitor_cert = certs(
            &policy.tls.visitor.certificate,
            &policy.tls.visitor.key,
            &policy.tls.visitor.pins,
            "visitor",
        );
        operator_cert = certs(
            &policy.tls.operator.certificate,
            &policy.tls.operator.key,
            &policy.tls.operator.pins,
            "operator",
        );
    }
    let data_key = data_key_path.and_then(|p| read_data_key(&p).map_err(|e| problems.push(e)).ok());
    let auth_string_hash = auth_path.and_then(|p| {
        std::fs::read_to_string(&p)
            .map_err(|e| problems.push(format!("{}: {e}", p.display())))
            .ok()
    });
    if config.state_dir.exists() {
        if let Err(e) = crate::sandbox::check_state_dir(&config.state_dir) {
            problems.push(e);
        }
    }
    if let Some(p) = &policy {
        let (sys, nft) = crate::policy::render::compare_installed(
            p,
            config.rendered_systemd_dir.as_deref(),
            config.rendered_nftables.as_deref(),
        );
        if config.rendered_systemd_dir.is_some() {
            problems.extend(sys);
        }
        if config.rendered_nftables.is_some() {
            problems.extend(nft);
        }
    }
    match (
        policy,
        visitor_cert,
        operator_cert,
        data_key,
        auth_string_hash,
    ) {
        (
            Some(policy),
            Some(visitor_cert),
            Some(operator_cert),
            Some(data_key),
            Some(auth_string_hash),
        ) if problems.is_empty() => Ok(Verified {
            policy,
            visitor_cert,
            operator_cert,
            data_key,
            auth_string_hash,
        }),
        _ => Err(StartError(problems)),
    }
}

/// Purge what the retention policy says has expired, and audit the run.
pub async fn purge_expired(
    storage: &Storage,
    audit: &Auditor,
    r: &crate::policy::RetentionPolicy,
    by: &str,
) -> Result<crate::storage::PurgeCounts, String> {
    let day = 86_400_000i64;
    let now = crate::storage::now_ms();
    let c = storage
        .purge(
            now - i64::from(r.transcripts_days) * day,
            now - i64::from(r.audit_days) * day,
        )
        .await
        .map_err(|e| e.0)?;
    let (page_views, offline) = storage
        .purge_tracking(
            now - i64::from(r.visitor_tracking_days) * day,
            now - i64::from(r.transcripts_days) * day,
        )
        .await
        .map_err(|e| e.0)?;
    audit
        .record(
            ids::RETENTION_PURGE,
            "retention_purge",
            format!(
                "chats={} events={} audit_records={} page_views={page_views} offline_messages={offline} transcripts_days={} visitor_tracking_days={} audit_days={} by={by}",
                c.chats, c.events, c.audit_records, r.transcripts_days, r.visitor_tracking_days, r.audit_days
            ),
        )
        .await;
    Ok(c)
}

/// Hourly retention purge; the audit head goes to the journal every ten minutes.
async fn housekeeping(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut purge = tokio::time::interval(Duration::from_secs(3600));
    let mut head = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = purge.tick() => {
                let policy = app.policy();
                if let Err(e) = purge_expired(&app.storage, &app.audit, &policy.retention, "schedule").await {
                    tracing::error!(error = %e, "retention purge failed");
                }
            }
            _ = head.tick() => log_audit_head(&app).await,
            _ = shutdown.changed() => return,
        }
    }
}

/// Once a second: drop idle visitors and expired invitations, announce a changed visitor
/// list; every two seconds, announce changed live stats.
async fn live_updates(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_stats = String::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        n += 1;
        let policy = app.policy();
        let now = crate::storage::now_ms();
        let (expired, changed) = {
            let mut core = app.core();
            let expired = core.visitors.expire(
                now,
                policy.chat.visitor_idle_secs as i64 * 1000,
                policy.chat.invite_timeout_secs as i64 * 1000,
            );
            (expired, core.visitors.take_changed())
        };
        for inv in expired {
            app.hub.to_presence(
                &inv.visitor,
                crate::hub::PresenceEvent::InviteWithdrawn(inv.id),
            );
            app.hub
                .to_operators(crate::hub::OperatorEvent::InviteUpdate {
                    operator: inv.operator,
                    invite: inv,
                    chat: None,
                });
        }
        if changed {
            app.hub
                .to_operators(crate::hub::OperatorEvent::VisitorsChanged);
        }
        if n % 2 == 0 {
            if let Ok(stats) = live_stats(&app).await {
                let text = stats.to_string();
                if text != last_stats {
                    app.hub
                        .to_operators(crate::hub::OperatorEvent::Stats(text.clone().into()));
                    last_stats = text;
                }
            }
        }
    }
}

/// Start of the current UTC day, in Unix milliseconds.
pub fn today_start_ms() -> i64 {
    let now = crate::storage::now_ms();
    now - now.rem_euclid(86_400_000)
}

/// The live stats object (`Stats` in docs/api.md).
pub async fn live_stats(app: &App) -> Result<serde_json::Value, String> {
    let now = crate::storage::now_ms();
    let (visitors, active, waiting, longest) = {
        let core = app.core();
        let live = core.live();
        let active = live
            .iter()
            .filter(|(_, s, ..)| matches!(s, crate::core::ChatState::Active { .. }))
            .count();
        let queue = core.queue();
        let longest = queue
            .iter()
            .map(|(_, since)| (now - since) / 1000)
            .max()
            .unwrap_or(0);
        (core.visitors.count(), active, queue.len(), longest)
    };
    let day = app
        .storage
        .day_counts(today_start_ms())
        .await
        .map_err(|e| e.0)?;
    Ok(serde_json::json!({
        "visitors_online": visitors,
        "chats_active": active,
        "chats_waiting": waiting,
        "longest_wait_secs": longest.max(0),
        "chats_today": day.chats_today,
        "missed_today": day.missed_today,
        "average_rating": day.average_rating.map(|a| (a * 10.0).round() / 10.0),
        "ratings_count": day.ratings_count,
    }))
}

/// End the sessions (and event streams) of accounts changed from the console while the
/// daemon runs: a new password, a disabled account, a new role.
async fn watch_accounts(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut since = crate::storage::now_ms();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Ok(changed) = app.storage.operators_changed_since(since).await else {
            continue;
        };
        for (op, changed_ms) in changed {
            since = since.max(changed_ms);
            app.names().remove(&op);
            // Sessions opened before the change end; a login after it stays.
            let ended = app.auth.end_sessions_before(op, changed_ms);
            if ended > 0 {
                app.hub
                    .to_operators(crate::hub::OperatorEvent::SessionsEnded {
                        operator: op,
                        session: None,
                    });
            }
            if ended > 0 {
                app.audit
                    .record(
                        ids::LOGOUT,
                        "logout",
                        format!("operator={} sessions={ended} reason=account_changed", op.0),
                    )
                    .await;
            }
        }
    }
}

/// Write the audit chain's head to the journal, so a rewritten chain disagrees with it.
pub async fn log_audit_head(app: &App) {
    match app.storage.audit_head().await {
        Ok(r) => tracing::info!(
            MESSAGE_ID = ids::AUDIT_HEAD,
            AUDIT_SEQ = r.head_seq,
            AUDIT_HASH = %r.head_hash,
            "audit_head: seq={} hash={}{}",
            r.head_seq,
            r.head_hash,
            r.broken.map(|b| format!(" BROKEN: {b}")).unwrap_or_default()
        ),
        Err(e) => tracing::error!(error = %e, "audit head not readable"),
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct Running {
    pub app: Arc<App>,
    pub visitor_addrs: Vec<SocketAddr>,
    pub operator_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// Record the stop, anchor the audit head in the journal, stop accepting. Open
    /// connections end with the runtime.
    pub async fn shutdown(&self, why: &str) {
        self.app
            .audit
            .record(ids::DAEMON_STOPPING, "daemon_stopping", why.to_string())
            .await;
        log_audit_head(&self.app).await;
        let _ = self.shutdown.send(true);
    }
}

async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, String> {
    let mut out = Vec::new();
    for a in addrs {
        let sock = if a.is_ipv6() {
            tokio::net::TcpSocket::new_v6()
        } else {
            tokio::net::TcpSocket::new_v4()
        }
        .map_err(|e| format!("{a}: {e}"))?;
        sock.set_reuseaddr(true).map_err(|e| format!("{a}: {e}"))?;
        if crate::policy::needs_ipv6_only(addrs, a) {
            // "[::]:443" beside "0.0.0.0:443": the IPv6 socket must not take IPv4 too.
            crate::sandbox::set_ipv6_only(&sock).map_err(|e| format!("{a}: {e}"))?;
        }
        sock.bind(*a).map_err(|e| format!("cannot bind {a}: {e}"))?;
        out.push(
            sock.listen(1024)
                .map_err(|e| format!("cannot listen on {a}: {e}"))?,
        );
    }
    Ok(out)
}

/// Start the daemon on verified inputs. `activated` holds socket-activated listeners by
/// name (`visitor`, `operator`); absent names are bound from policy.
pub async fn start(
    config: &Config,
    verified: Verified,
    mut activated: HashMap<String, Vec<std::net::TcpListener>>,
) -> Result<Running, StartError> {
    let fail = |e: String| StartError(vec![e]);
    crate::sandbox::ensure_private_dir(&config.state_dir).map_err(fail)?;
    crate::sandbox::check_state_dir(&config.state_dir).map_err(fail)?;
    let storage =
        Storage::open(&config.state_dir, Sealer::new(&verified.data_key)).map_err(|e| fail(e.0))?;
    let policy = Arc::new(verified.policy.clone());
    let auth = Auth::new(
        verified.auth_string_hash.clone(),
        &policy.accounts.argon2,
        policy.accounts.login.clone(),
        policy.accounts.session.clone(),
    )
    .map_err(fail)?;
    let live = build_live(&verified, policy.clone()).map_err(fail)?;

    // Rebuild the chat core from the chats still open on disk.
    let mut core = ChatCore::new();
    for chat in storage.open_chats().await.map_err(|e| fail(e.0))? {
        let mut token = [0u8; 32];
        if chat.token_hash.len() == 32 {
            token.copy_from_slice(&chat.token_hash);
        }
        match (chat.state.as_str(), chat.operator_id) {
            ("active", Some(op)) => {
                core.open_active(chat.id, token, op, chat.department.clone(), chat.created_ms)
            }
            _ => core.open_queued(chat.id, token, chat.created_ms, chat.department.clone()),
        }
        core.set_label(
            chat.id,
            chat.visitor.name.clone(),
            chat.visitor.question.clone(),
        );
    }

    let to_tokio = |v: Vec<std::net::TcpListener>| -> Result<Vec<TcpListener>, StartError> {
        v.into_iter()
            .map(|l| {
                TcpListener::from_std(l)
                    .map_err(|e| StartError(vec![format!("adopting a listener: {e}")]))
            })
            .collect()
    };
    let visitor_listeners = match activated.remove("visitor") {
        Some(v) => to_tokio(v)?,
        None => bind_all(&policy.network.visitor.listen)
            .await
            .map_err(fail)?,
    };
    let operator_listeners = match activated.remove("operator") {
        Some(v) => to_tokio(v)?,
        None => bind_all(&policy.network.operator.listen)
            .await
            .map_err(fail)?,
    };
    let visitor_addrs: Vec<SocketAddr> = visitor_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let operator_addrs: Vec<SocketAddr> = operator_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();

    let audit = Auditor::new(storage.clone());
    let app = Arc::new(App {
        live: RwLock::new(live.clone()),
        config: config.clone(),
        storage,
        audit,
        core: Mutex::new(core),
        hub: Hub::new(),
        auth,
        limits: Limits::default(),
        stats: Stats::default(),
        started: Instant::now(),
        names: Mutex::new(HashMap::new()),
    });
    announce_policy(&app, &live).await;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let visitor_slots = Arc::new(Semaphore::new(policy.visitor.max_connections));
    for l in visitor_listeners {
        tokio::spawn(visitor_accept_loop(
            l,
            app.clone(),
            visitor_slots.clone(),
            shutdown_rx.clone(),
        ));
    }
    let operator_slots = Arc::new(Semaphore::new(policy.network.operator.max_connections));
    for l in operator_listeners {
        tokio::spawn(operator_accept_loop(
            l,
            app.clone(),
            operator_slots.clone(),
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(refused_summary(app.clone(), shutdown_rx.clone()));
    tokio::spawn(housekeeping(app.clone(), shutdown_rx.clone()));
    tokio::spawn(live_updates(app.clone(), shutdown_rx.clone()));
    tokio::spawn(watch_accounts(app.clone(), shutdown_rx.clone()));
    Ok(Running {
        app,
        visitor_addrs,
        operator_addrs,
        shutdown,
    })
}

async fn visitor_accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "visitor accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = app.live().visitor_tls;
        let app = app.clone();
        app.stats
            .visitor_connections
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(crate::http::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    _ => return,
                };
            let source = peer.ip().to_canonical();
            let handed_off = crate::http::serve_connection_handing_off(tls, |slot| {
                hyper::service::service_fn(move |mut req| {
                    let app = app.clone();
                    req.extensions_mut().insert(slot.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            crate::visitor::handle(app, source, req).await,
                        )
                    }
                })
            })
            .await;
            // An event stream: hyper's connection state (and its buffers) is gone; a small
            // task of its own writes the events, still holding the connection slot.
            match handed_off {
                Some((tls, rx)) => {
                    tokio::spawn(crate::http::write_event_stream(tls, rx, permit));
                }
                None => drop(permit),
            }
        });
    }
}

async fn operator_accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "operator accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The allowlist decides before a single byte is read from the connection.
        let live = app.live();
        let allowed = match live.allowlist.admit(peer) {
            Ok(a) => a,
            Err(refused) => {
                drop(stream);
                app.stats.refused_sources.fetch_add(1, Ordering::Relaxed);
                note_refused(&app, refused.canonical);
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = live.operator_tls;
        let app = app.clone();
        app.stats
            .operator_connections
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(crate::http::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    _ => return,
                };
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        crate::operator::handle(app, allowed, req).await,
                    )
                }
            });
            crate::http::serve_connection(tls, svc).await;
        });
    }
}

static REFUSED: Mutex<Option<HashMap<IpAddr, u64>>> = Mutex::new(None);

/// Count a refused source; the first refusal of an address is logged at once, the rest
/// are summarised every 10 seconds (so a flood cannot flood the journal).
fn note_refused(app: &Arc<App>, addr: IpAddr) {
    let first = {
        let mut g = REFUSED.lock().unwrap_or_else(|p| p.into_inner());
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() >= 10_000 && !m.contains_key(&addr) {
            false
        } else {
            let c = m.entry(addr).or_insert(0);
            *c += 1;
            *c == 1
        }
    };
    if first {
        let app = app.clone();
        tokio::spawn(async move {
            app.audit
                .record(
                    ids::SOURCE_REFUSED,
                    "source_refused",
                    format!("source={addr} listener=operator"),
                )
                .await;
        });
    }
}

async fn refused_summary(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let drained: Vec<(IpAddr, u64)> = {
            let mut g = REFUSED.lock().unwrap_or_else(|p| p.into_inner());
            g.take()
                .map(|m| m.into_iter().collect())
                .unwrap_or_default()
        };
        for (addr, count) in drained {
            if count > 1 {
                app.audit
                    .record(
                        ids::SOURCE_REFUSED,
                        "source_refused",
                        format!("source={addr} listener=operator count={count} window=10s"),
                    )
                    .await;
            }
        }
    }
}
