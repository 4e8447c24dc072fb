//! The `palisade` command line: the contract that scripts, tests and admins rely on.
#![forbid(unsafe_code)]

mod demo;
pub mod explain;
mod op;

use crate::app::{self, Verified};
use crate::audit::ids;
use crate::policy::Config;
use crate::secret::Secret;
use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "Live chat on a locked-down appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Loopback-only demo: throwaway certificates, policy, operator and customer page.
    Demo {
        /// Directory for the demo's files (a fresh temporary one by default).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the daemon.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check config, policy, certificates, pins and file permissions.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Certificate helpers.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Manage operator accounts (local console only).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Set the server-wide authentication string (read from standard input).
    AuthString {
        #[arg(long)]
        config: PathBuf,
    },
    /// Auditor commands: the effective policy and its rendered artefacts.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Data retention.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Visitor data (right to erasure).
    Visitor {
        #[command(subcommand)]
        command: VisitorCommand,
    },
    /// Terminal operator client: password and authentication string are read from
    /// standard input (never argv); then commands /queue /chats /accept ID /chat ID /end
    /// /quit, and any other line is a message to the current chat.
    Op {
        /// The operator listener, https://ADDRESS:PORT
        #[arg(long)]
        url: String,
        /// The operator certificate's pin (sha256/BASE64); the connection fails otherwise.
        #[arg(long)]
        pin: String,
        /// Username.
        #[arg(long)]
        user: String,
        /// Also read an authenticator (TOTP) or recovery code from standard input.
        #[arg(long)]
        totp: bool,
    },
    /// Write a consistent online copy of the database (still encrypted) to FILE.
    Backup {
        file: PathBuf,
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// The effective policy and live PASS/FAIL checks; exits non-zero on any FAIL.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Render the operator socket drop-ins and the nftables ruleset from the policy.
    Render {
        /// Take the policy directory from this config file.
        #[arg(long, conflicts_with = "policy")]
        config: Option<PathBuf>,
        /// Or read this policy directory directly.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Write the systemd drop-ins under this unit directory.
        #[arg(long)]
        systemd: Option<PathBuf>,
        /// Write the nftables ruleset to this file.
        #[arg(long)]
        nftables: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; report the first broken link and exit non-zero if any.
    Verify {
        #[arg(long)]
        config: PathBuf,
        /// A head the journal recorded (`SEQ:HEX`, from an audit_head event): the chain
        /// must still contain it.
        #[arg(long)]
        head: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Purge what retention.toml says has expired, now (the daemon also does it hourly).
    Purge {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum VisitorCommand {
    /// Erase one ended chat's visitor data and transcript.
    Erase {
        /// The chat id (as shown in the console and the audit log).
        id: i64,
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Print the SPKI pin (sha256/BASE64) of a PEM certificate's public key.
    Pin { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Add an operator; the password is read from standard input.
    Add {
        name: String,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long, default_value = "operator", value_parser = ["operator", "supervisor", "admin"])]
        role: String,
        /// Departments (comma-separated) the operator serves; none means all.
        #[arg(long, default_value = "")]
        departments: String,
    },
    /// Change an operator's password (read from standard input); ends their sessions.
    Passwd {
        name: String,
        #[arg(long)]
        config: PathBuf,
    },
    /// Disable an operator; ends their sessions.
    Disable {
        name: String,
        #[arg(long)]
        config: PathBuf,
    },
    /// List operators.
    List {
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(lines) => {
            for l in lines.lines() {
                eprintln!("palisade: {l}");
            }
            ExitCode::FAILURE
        }
    }
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "palisade panicked; exiting");
        default(info);
    }));
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Demo { dir } => demo::run(dir).await,
        Command::Serve { config } => serve(config).await,
        Command::Check { config } => check(config),
        Command::Cert {
            command: CertCommand::Pin { file },
        } => {
            let chain = crate::tls::read_chain(&file)?;
            println!("{}", crate::tls::pin_of_certificate(&chain[0])?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Operator { command } => operator(command).await,
        Command::AuthString { config } => auth_string(config),
        Command::Policy { command } => policy_cmd(command),
        Command::Op {
            url,
            pin,
            user,
            totp,
        } => op::run(url, pin, user, totp).await,
        Command::Audit {
            command: AuditCommand::Verify { config, head },
        } => audit_verify(config, head),
        Command::Retention {
            command: RetentionCommand::Purge { config },
        } => {
            let cfg = load_config(&config)?;
            let storage = open_storage(&cfg)?;
            let policy = crate::policy::load_policy(&cfg.policy_dir).map_err(|e| e.to_string())?;
            let c = crate::app::purge_expired(
                &storage,
                &crate::audit::Auditor::new(storage.clone()),
                &policy.retention,
                "console",
            )
            .await?;
            println!(
                "purged {} chats ({} events) and {} audit records",
                c.chats, c.events, c.audit_records
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Visitor {
            command: VisitorCommand::Erase { id, config },
        } => {
            let cfg = load_config(&config)?;
            let storage = open_storage(&cfg)?;
            let events = storage
                .erase_chat(crate::core::ChatId(id))
                .await
                .map_err(|e| e.0)?;
            crate::audit::Auditor::new(storage)
                .record(
                    ids::VISITOR_ERASED,
                    "visitor_erased",
                    format!("chat={id} events={events} by=console"),
                )
                .await;
            println!("erased chat {id}: visitor data and {events} events");
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { file, config } => {
            let cfg = load_config(&config)?;
            let storage = open_storage(&cfg)?;
            let pages = storage.backup_to(file.clone()).await.map_err(|e| e.0)?;
            crate::audit::Auditor::new(storage)
                .record(
                    ids::BACKUP_WRITTEN,
                    "backup_written",
                    format!("file={} pages={pages} by=console", file.display()),
                )
                .await;
            println!(
                "backup written to {} ({pages} pages, encrypted as stored)",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn policy_cmd(cmd: PolicyCommand) -> Result<ExitCode, String> {
    match cmd {
        PolicyCommand::Explain { config, json } => {
            let cfg = load_config(&config)?;
            let (policy, checks) = explain::run_checks(&cfg);
            let failed = checks.iter().any(|c| c.status == "FAIL");
            if json {
                let out = serde_json::json!({
                    "generated": explain::utc_now(),
                    "config": cfg.path,
                    "policy": policy.as_ref().map(explain::effective),
                    "checks": checks,
                    "ok": !failed,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", explain::text_report(&cfg, policy.as_ref(), &checks));
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Render {
            config,
            policy,
            systemd,
            nftables,
        } => {
            let dir = match (config, policy) {
                (Some(c), _) => load_config(&c)?.policy_dir,
                (None, Some(p)) => p,
                (None, None) => return Err("give --config FILE or --policy DIR".into()),
            };
            if systemd.is_none() && nftables.is_none() {
                return Err("give --systemd DIR and/or --nftables FILE".into());
            }
            let p = crate::policy::load_policy(&dir).map_err(|e| e.to_string())?;
            for path in
                crate::policy::render::write_all(&p, systemd.as_deref(), nftables.as_deref())?
            {
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn audit_verify(config: PathBuf, head: Option<String>) -> Result<ExitCode, String> {
    let cfg = load_config(&config)?;
    let key = crate::app::read_data_key(&cfg.resolve_secret_path(&cfg.data_key)?)?;
    let sealer = crate::storage::crypto::Sealer::new(&key);
    let r = crate::storage::verify_audit_chain(&cfg.state_dir, &sealer).map_err(|e| e.0)?;
    if let Some(b) = &r.broken {
        return Err(format!("audit chain broken: {b}"));
    }
    if let Some(h) = head {
        let (seq, hash) = h.split_once(':').ok_or("--head takes SEQ:HEX")?;
        let seq: i64 = seq.parse().map_err(|_| "--head takes SEQ:HEX")?;
        if seq > r.head_seq {
            return Err(format!(
                "audit chain ends at record {} but the journal recorded head {seq}: records were removed from the end",
                r.head_seq
            ));
        }
        if seq == r.head_seq && !r.head_hash.eq_ignore_ascii_case(hash) {
            return Err(format!(
                "audit record {seq} differs from the head the journal recorded"
            ));
        }
        if seq < r.head_seq {
            let key = crate::app::read_data_key(&cfg.resolve_secret_path(&cfg.data_key)?)?;
            let at = crate::storage::audit_hash_at(
                &cfg.state_dir,
                &crate::storage::crypto::Sealer::new(&key),
                seq,
            )
            .map_err(|e| e.0)?;
            match at {
                Some(at) if at.eq_ignore_ascii_case(hash) => {}
                Some(_) => {
                    return Err(format!(
                        "audit record {seq} differs from the head the journal recorded"
                    ))
                }
                None if seq <= r.anchor_seq => {}
                None => {
                    return Err(format!(
                        "audit record {seq} (recorded in the journal) is missing"
                    ))
                }
            }
        }
    }
    println!(
        "audit chain intact: {} records (after purged record {}), head {}:{}",
        r.records, r.anchor_seq, r.head_seq, r.head_hash
    );
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: &std::path::Path) -> Result<Config, String> {
    Config::load(path)
}

fn check(config: PathBuf) -> Result<ExitCode, String> {
    let cfg = load_config(&config)?;
    match app::verify(&cfg) {
        Ok(v) => {
            println!(
                "ok: policy {} (sha256 {})",
                v.policy.dir.display(),
                v.policy.sha256
            );
            println!("ok: visitor certificate pinned ({})", v.visitor_cert.pin());
            println!(
                "ok: operator certificate pinned ({})",
                v.operator_cert.pin()
            );
            println!("ok: data key, authentication-string hash and file permissions");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn serve(config: PathBuf) -> Result<ExitCode, String> {
    install_panic_hook();
    crate::sandbox::harden_process()?;
    crate::sandbox::raise_nofile();
    let cfg = load_config(&config)?;
    let activated = crate::sandbox::activation::take_listeners()?;
    let signals = Signals::install()?;
    let verified: Verified = app::verify(&cfg).map_err(|e| {
        for line in &e.0 {
            let id = if line.contains(" certificate ") {
                ids::PIN_REFUSED
            } else {
                ids::STARTUP_REFUSED
            };
            tracing::error!(MESSAGE_ID = id, "refusing to start: {line}");
        }
        e.to_string()
    })?;
    let running = app::start(&cfg, verified, activated).await.map_err(|e| {
        tracing::error!(MESSAGE_ID = ids::STARTUP_REFUSED, "refusing to start: {e}");
        e.to_string()
    })?;
    let status = format!(
        "serving visitors on {} and operators on {}",
        join(&running.visitor_addrs),
        join(&running.operator_addrs)
    );
    running
        .app
        .audit
        .record(ids::DAEMON_READY, "daemon_ready", status.clone())
        .await;
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
    );
    spawn_watchdog(running.app.clone());
    signals.run_until_stopped(&running.app).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    running.shutdown("signal").await;
    Ok(ExitCode::SUCCESS)
}

fn join(a: &[std::net::SocketAddr]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `WATCHDOG=1` only while the runtime schedules tasks and the database answers.
fn spawn_watchdog(app: std::sync::Arc<app::App>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = std::time::Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let healthy = tokio::time::timeout(period, app.storage.operators())
                .await
                .is_ok_and(|r| r.is_ok());
            if healthy {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("health check failed; withholding the watchdog ping");
            }
        }
    });
}

/// The signals the daemon acts on, installed before it announces readiness so that a
/// SIGHUP sent as soon as it is ready is never lost (or fatal).
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signals")
    }
}

impl Signals {
    pub(crate) fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let s =
            |k: SignalKind| signal(k).map_err(|e| format!("cannot install signal handlers: {e}"));
        Ok(Signals {
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
            hup: s(SignalKind::hangup())?,
        })
    }

    /// Serve until SIGTERM or SIGINT; SIGHUP reloads policy and certificates.
    pub(crate) async fn run_until_stopped(mut self, app: &std::sync::Arc<app::App>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                    let outcome = match app::reload(app).await {
                        Ok(()) => format!("policy {} in force", app.policy().sha256),
                        Err(p) => format!("reload refused ({} problems); previous policy kept", p.len()),
                    };
                    let _ = sd_notify::notify(
                        false,
                        &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&outcome)],
                    );
                }
            }
        }
    }
}

/// Read one secret line from standard input (never from argv).
fn read_secret_line(prompt: &str) -> Result<Secret, String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading standard input: {e}"))?;
    let s = Secret::new(line.trim_end_matches(['\n', '\r']).to_string());
    zeroize::Zeroize::zeroize(&mut line);
    Ok(s)
}

fn open_storage(cfg: &Config) -> Result<crate::storage::Storage, String> {
    let v = app::verify(cfg).map_err(|e| e.to_string())?;
    crate::sandbox::ensure_private_dir(&cfg.state_dir)?;
    crate::storage::Storage::open(
        &cfg.state_dir,
        crate::storage::crypto::Sealer::new(&v.data_key),
    )
    .map_err(|e| e.0)
}

async fn operator(cmd: OperatorCommand) -> Result<ExitCode, String> {
    match cmd {
        OperatorCommand::Add {
            name,
            config,
            display_name,
            role,
            departments,
        } => {
            let cfg = load_config(&config)?;
            let policy = crate::policy::load_policy(&cfg.policy_dir).map_err(|e| e.to_string())?;
            validate_username(&name)?;
            let pw = read_secret_line("password")?;
            check_password(&pw, policy.accounts.password_min_chars)?;
            let hash = crate::operator::auth::hash_secret(&policy.accounts.argon2, &pw)?;
            let departments: Vec<String> = departments
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(d) = departments
                .iter()
                .find(|d| !policy.chat.departments.contains(d))
            {
                return Err(format!("no department {d:?} in chat.toml"));
            }
            let storage = open_storage(&cfg)?;
            let display = display_name.unwrap_or_else(|| name.clone());
            storage
                .add_operator(name.clone(), display, hash, role.clone(), departments)
                .await
                .map_err(|e| e.0)?;
            crate::audit::Auditor::new(storage)
                .record(
                    ids::OPERATOR_CHANGED,
                    "operator_changed",
                    format!("action=add user={name} role={role} by=console"),
                )
                .await;
            println!("added operator {name} ({role})");
            Ok(ExitCode::SUCCESS)
        }
        OperatorCommand::Passwd { name, config } => {
            let cfg = load_config(&config)?;
            let policy = crate::policy::load_policy(&cfg.policy_dir).map_err(|e| e.to_string())?;
            let pw = read_secret_line("new password")?;
            check_password(&pw, policy.accounts.password_min_chars)?;
            let hash = crate::operator::auth::hash_secret(&policy.accounts.argon2, &pw)?;
            let storage = open_storage(&cfg)?;
            storage
                .set_password(name.clone(), hash)
                .await
                .map_err(|e| e.0)?;
            crate::audit::Auditor::new(storage)
                .record(
                    ids::OPERATOR_CHANGED,
                    "operator_changed",
                    format!("action=passwd user={name} by=console"),
                )
                .await;
            println!("password changed for {name}");
            Ok(ExitCode::SUCCESS)
        }
        OperatorCommand::Disable { name, config } => {
            let cfg = load_config(&config)?;
            let storage = open_storage(&cfg)?;
            storage
                .set_disabled(name.clone(), true)
                .await
                .map_err(|e| e.0)?;
            crate::audit::Auditor::new(storage)
                .record(
                    ids::OPERATOR_CHANGED,
                    "operator_changed",
                    format!("action=disable user={name} by=console"),
                )
                .await;
            println!("disabled {name}");
            Ok(ExitCode::SUCCESS)
        }
        OperatorCommand::List { config } => {
            let cfg = load_config(&config)?;
            let storage = open_storage(&cfg)?;
            for o in storage.operators().await.map_err(|e| e.0)? {
                println!(
                    "{}\t{}\t{}\t{}",
                    o.username,
                    o.role,
                    if o.disabled { "disabled" } else { "enabled" },
                    o.display_name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn validate_username(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid username {name:?}: use 1-64 of a-z, A-Z, 0-9, '.', '_', '-'"
        ))
    }
}

fn check_password(pw: &Secret, min: usize) -> Result<(), String> {
    if pw.expose().chars().count() < min {
        return Err(format!("the password must have at least {min} characters"));
    }
    Ok(())
}

fn auth_string(config: PathBuf) -> Result<ExitCode, String> {
    let cfg = load_config(&config)?;
    let policy = crate::policy::load_policy(&cfg.policy_dir).map_err(|e| e.to_string())?;
    let s = read_secret_line("new authentication string")?;
    if s.expose().chars().count() < 12 {
        return Err("the authentication string must have at least 12 characters".into());
    }
    let hash = crate::operator::auth::hash_secret(&policy.accounts.argon2, &s)?;
    let path = cfg.resolve_secret_path(&cfg.auth_string_hash)?;
    crate::sandbox::write_private(&path, format!("{hash}\n").as_bytes())?;
    println!("authentication string hash written to {}", path.display());
    Ok(ExitCode::SUCCESS)
}
