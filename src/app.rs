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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Shared state of a running daemon.
pub struct App {
    pub policy: Arc<Policy>,
    pub storage: Storage,
    pub audit: Auditor,
    pub core: Mutex<ChatCore>,
    pub hub: Hub,
    pub auth: Auth,
    pub limits: Limits,
    pub stats: Stats,
    /// Operators' display names, by id (for events authored by operators).
    pub started: Instant,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("policy", &self.policy.sha256)
            .finish_non_exhaustive()
    }
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
}

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

fn read_data_key(path: &Path) -> Result<SecretKey, String> {
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

/// A running daemon.
#[derive(Debug)]
pub struct Running {
    pub app: Arc<App>,
    pub visitor_addrs: Vec<SocketAddr>,
    pub operator_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// Stop accepting; open connections end with the runtime.
    pub fn shutdown(&self) {
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
    let Verified {
        policy,
        visitor_cert,
        operator_cert,
        data_key,
        auth_string_hash,
    } = verified;
    let fail = |e: String| StartError(vec![e]);
    crate::sandbox::ensure_private_dir(&config.state_dir).map_err(fail)?;
    crate::sandbox::check_state_dir(&config.state_dir).map_err(fail)?;
    let storage =
        Storage::open(&config.state_dir, Sealer::new(&data_key)).map_err(|e| fail(e.0))?;
    let auth = Auth::new(
        auth_string_hash,
        &policy.accounts.argon2,
        policy.accounts.login.clone(),
        policy.accounts.session.clone(),
    )
    .map_err(fail)?;
    let visitor_tls =
        crate::tls::visitor_server_config(&visitor_cert, &policy.tls.visitor.min_version)
            .map_err(fail)?;
    let operator_tls = crate::tls::operator_server_config(&operator_cert).map_err(fail)?;

    // Rebuild the chat core from the chats still open on disk.
    let mut core = ChatCore::new();
    for chat in storage.open_chats().await.map_err(|e| fail(e.0))? {
        let mut token = [0u8; 32];
        if chat.token_hash.len() == 32 {
            token.copy_from_slice(&chat.token_hash);
        }
        match (chat.state.as_str(), chat.operator_id) {
            ("active", Some(op)) => core.restore_active(chat.id, token, op),
            _ => core.open_queued(chat.id, token, chat.created_ms),
        }
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
    let allowlist = Allowlist::new(policy.operator_allow.clone());
    let policy = Arc::new(policy);
    let app = Arc::new(App {
        policy: policy.clone(),
        storage,
        audit,
        core: Mutex::new(core),
        hub: Hub::new(),
        auth,
        limits: Limits::default(),
        stats: Stats::default(),
        started: Instant::now(),
    });
    app.audit
        .record(
            ids::POLICY_LOADED,
            "policy_loaded",
            format!("dir={} sha256={}", policy.dir.display(), policy.sha256),
        )
        .await;
    app.audit
        .record(
            ids::PIN_VERIFIED,
            "pin_verified",
            format!("side=visitor pin={}", visitor_cert.pin()),
        )
        .await;
    app.audit
        .record(
            ids::PIN_VERIFIED,
            "pin_verified",
            format!("side=operator pin={}", operator_cert.pin()),
        )
        .await;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let visitor_slots = Arc::new(Semaphore::new(policy.visitor.max_connections));
    for l in visitor_listeners {
        tokio::spawn(visitor_accept_loop(
            l,
            TlsAcceptor::from(visitor_tls.clone()),
            app.clone(),
            visitor_slots.clone(),
            shutdown_rx.clone(),
        ));
    }
    let operator_slots = Arc::new(Semaphore::new(policy.network.operator.max_connections));
    let allowlist = Arc::new(allowlist);
    for l in operator_listeners {
        tokio::spawn(operator_accept_loop(
            l,
            TlsAcceptor::from(operator_tls.clone()),
            allowlist.clone(),
            app.clone(),
            operator_slots.clone(),
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(refused_summary(app.clone(), shutdown_rx.clone()));
    tokio::spawn(crate::operator::watch_accounts(
        app.clone(),
        shutdown_rx.clone(),
    ));
    Ok(Running {
        app,
        visitor_addrs,
        operator_addrs,
        shutdown,
    })
}

async fn visitor_accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
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
        let acceptor = acceptor.clone();
        let app = app.clone();
        app.stats
            .visitor_connections
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
            let source = peer.ip().to_canonical();
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        crate::visitor::handle(app, source, req).await,
                    )
                }
            });
            crate::http::serve_connection(tls, svc).await;
        });
    }
}

async fn operator_accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    allowlist: Arc<Allowlist>,
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
        let allowed = match allowlist.admit(peer) {
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
        let acceptor = acceptor.clone();
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
