//! The policy files: their schema, strict parsing and semantic checks.

use super::{PolicyError, PolicyErrors};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The policy files, in the order they are read and hashed.
pub const POLICY_FILES: [&str; 6] = [
    "network.toml",
    "tls.toml",
    "accounts.toml",
    "visitor.toml",
    "retention.toml",
    "chat.toml",
];

/// argon2id floor (OWASP password storage cheat sheet).
pub const ARGON2_MIN_MEMORY_KIB: u32 = 19456;
pub const ARGON2_MIN_ITERATIONS: u32 = 2;

/// The whole checked policy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub network: NetworkPolicy,
    pub tls: TlsPolicy,
    pub accounts: AccountsPolicy,
    pub visitor: VisitorPolicy,
    pub retention: RetentionPolicy,
    pub chat: ChatPolicy,
    /// Operator allowlist, parsed and canonical.
    #[serde(skip)]
    pub operator_allow: Vec<IpNet>,
    /// Trusted proxies, parsed and canonical.
    #[serde(skip)]
    pub trusted_proxies: Vec<IpNet>,
    /// SHA-256 over the policy files (name and bytes, in `POLICY_FILES` order), hex.
    pub sha256: String,
    /// Dangerous values accepted because an override key says so (logged at every start).
    pub overrides_in_force: Vec<String>,
    /// SHA-256 of each policy file's bytes, hex, by file name.
    pub file_sha256: std::collections::BTreeMap<String, String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    pub visitor: VisitorNet,
    pub operator: OperatorNet,
    #[serde(default)]
    pub proxies: ProxyNet,
    #[serde(default)]
    pub overrides: NetworkOverrides,
}

/// Explicit acceptance of dangerous network values; each one in force is logged at start.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverrides {
    /// Accept an operator allowlist that admits every address (0.0.0.0/0, ::/0).
    #[serde(default)]
    pub operator_allow_everyone: bool,
    /// Accept an operator listener on a wildcard address.
    #[serde(default)]
    pub operator_listen_wildcard: bool,
    /// Accept an operator listener on the visitor listener's address and port.
    #[serde(default)]
    pub operator_listen_on_visitor_address: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorNet {
    /// Addresses the visitor listener binds when not socket-activated.
    pub listen: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorNet {
    /// Addresses the operator listener binds when not socket-activated.
    pub listen: Vec<SocketAddr>,
    /// Source networks admitted to the operator listener.
    pub allow: Vec<String>,
    /// Most operator connections open at once.
    #[serde(default = "default_operator_connections")]
    pub max_connections: usize,
}

fn default_operator_connections() -> usize {
    256
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyNet {
    /// Proxies whose forwarding headers are believed. None by default.
    #[serde(default)]
    pub trusted: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPolicy {
    pub visitor: VisitorTls,
    pub operator: OperatorTls,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorTls {
    /// PEM certificate chain (leaf first): path relative to the policy dir, or absolute.
    pub certificate: String,
    /// PEM private key: path or `credential:NAME`.
    pub key: String,
    /// Allowed SPKI pins of the served leaf, `sha256/BASE64`; include a backup pin.
    pub pins: Vec<String>,
    /// Lowest TLS version offered to visitors: "1.2" or "1.3".
    #[serde(default = "default_min_version")]
    pub min_version: String,
    /// Let returning visitors resume a TLS session (one TLS 1.3 ticket per full handshake,
    /// the TLS 1.2 session cache). `false`: every visitor connection does a full handshake.
    #[serde(default = "default_true")]
    pub session_resumption: bool,
}

fn default_true() -> bool {
    true
}

fn default_min_version() -> String {
    "1.2".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorTls {
    pub certificate: String,
    pub key: String,
    pub pins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsPolicy {
    pub argon2: Argon2Policy,
    pub login: LoginPolicy,
    pub session: SessionPolicy,
    /// Shortest password `palisade operator add/passwd` accepts.
    pub password_min_chars: usize,
    /// Roles that must log in with a TOTP second factor.
    #[serde(default)]
    pub totp_required_roles: Vec<String>,
    #[serde(default)]
    pub overrides: AccountsOverrides,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsOverrides {
    /// Accept argon2 parameters below the OWASP floor.
    #[serde(default)]
    pub argon2_below_floor: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Policy {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoginPolicy {
    /// Failures for one username before backoff starts.
    pub max_failures_per_account: u32,
    /// Failures from one source address before backoff starts.
    pub max_failures_per_source: u32,
    /// First backoff delay in seconds; doubles with every further failure.
    pub backoff_base_secs: u64,
    /// Longest backoff delay in seconds.
    pub backoff_max_secs: u64,
    /// argon2 hashes computed at once (each costs `memory_kib`).
    pub max_concurrent_hashes: usize,
    /// Logins allowed to wait for a hashing slot; more are refused at once (429).
    pub max_waiting_logins: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPolicy {
    pub idle_timeout_secs: u64,
    pub absolute_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorPolicy {
    /// Origins allowed to embed the chat page (CSP frame-ancestors).
    pub frame_ancestors: Vec<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Longest chat message, in characters.
    pub max_message_chars: usize,
    /// Longest name / email / question, in characters.
    pub max_field_chars: usize,
    /// Messages one visitor may send per minute.
    pub messages_per_minute: u32,
    /// Chats one source address may start per hour.
    pub chats_per_hour_per_source: u32,
    /// Most visitor connections open at once.
    pub max_connections: usize,
    /// Mask Luhn-valid payment card numbers in messages before they are stored.
    #[serde(default)]
    pub mask_card_numbers: bool,
    /// How much of a visitor's IP address is kept: "none", "truncated" (/24, /48), "full".
    #[serde(default = "default_visitor_ip")]
    pub visitor_ip: String,
    #[serde(default)]
    pub overrides: VisitorOverrides,
}

fn default_visitor_ip() -> String {
    "truncated".into()
}

/// How a pre-chat field is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldMode {
    Required,
    Optional,
    Hidden,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrechatPolicy {
    pub email: FieldMode,
    pub department: FieldMode,
    pub question: FieldMode,
}

/// chat.toml: departments, routing, pre-chat form, wrap-up, live visitor list.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChatPolicy {
    /// Departments visitors can choose and chats can be transferred to.
    pub departments: Vec<String>,
    /// "auto": queued chats go to the least-busy online operator; "manual": operators pick.
    pub routing: String,
    /// Most chats one operator handles at once.
    pub max_chats_per_operator: usize,
    /// Wrap-up categories offered when a chat ends.
    pub wrapup_categories: Vec<String>,
    /// Seconds without a page view or heartbeat before a visitor leaves the live list.
    pub visitor_idle_secs: u64,
    /// Seconds an unanswered invitation stays open.
    pub invite_timeout_secs: u64,
    /// Let visitors start a chat and wait in the queue while no operator is online
    /// (otherwise they are offered to leave a message).
    #[serde(default)]
    pub queue_when_offline: bool,
    pub prechat: PrechatPolicy,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorOverrides {
    /// Accept `*` in frame_ancestors (any site may embed the chat page).
    #[serde(default)]
    pub frame_ancestors_any: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub transcripts_days: u32,
    pub visitor_tracking_days: u32,
    pub audit_days: u32,
}

struct Source {
    name: &'static str,
    text: String,
    unreadable: bool,
}

impl Source {
    fn err(&self, section: &str, key: &str, message: impl Into<String>) -> PolicyError {
        let (line, column) = locate(&self.text, section, key);
        let full = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        PolicyError {
            file: self.name.to_string(),
            line,
            column,
            key: full,
            message: message.into(),
        }
    }
}

/// Find the line and column of `key` inside `[section]` (1-based); (1, 1) if absent.
fn locate(text: &str, section: &str, key: &str) -> (usize, usize) {
    let mut current = String::new();
    let mut section_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if let Some(rest) = line.strip_prefix('[') {
            current = rest.trim_end().trim_end_matches(']').trim().to_string();
            if current == section {
                section_line = Some(i + 1);
            }
            continue;
        }
        if current == section {
            if let Some(after) = line.strip_prefix(key) {
                if after.trim_start().starts_with('=') {
                    return (i + 1, raw.len() - line.len() + 1);
                }
            }
        }
    }
    (section_line.unwrap_or(1), 1)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
    (line, col)
}

fn parse<T: DeserializeOwned>(src: &Source, errors: &mut Vec<PolicyError>) -> Option<T> {
    if src.unreadable {
        return None;
    }
    match toml::from_str::<T>(&src.text) {
        Ok(v) => Some(v),
        Err(e) => {
            let (line, column) = e
                .span()
                .map(|s| line_col(&src.text, s.start))
                .unwrap_or((1, 1));
            // One line per problem: toml's message may span several.
            let mut message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            if message.is_empty() {
                // toml gives no text for some errors, e.g. a control character in a comment.
                let at = e
                    .span()
                    .and_then(|s| src.text.get(s.start..)?.chars().next());
                message = match at {
                    Some(c) if c.is_control() => {
                        format!("control character U+{:04X} is not allowed", c as u32)
                    }
                    _ => "invalid TOML".into(),
                };
            }
            // serde names the offending key inside the message for unknown/missing fields.
            let key = key_at(&src.text, e.span().map(|s| s.start))
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| "-".into());
            errors.push(PolicyError {
                file: src.name.to_string(),
                line,
                column,
                key,
                message,
            });
            None
        }
    }
}

/// The dotted key at a byte offset: `[section]` above plus the `key =` on that line.
fn key_at(text: &str, offset: Option<usize>) -> Option<String> {
    let offset = offset?;
    let mut section = String::new();
    let mut pos = 0;
    for raw in text.split_inclusive('\n') {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            section = rest.trim_end_matches(']').trim().to_string();
        }
        if offset < pos + raw.len() {
            let key = line
                .split('=')
                .next()
                .map(str::trim)
                .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'));
            return Some(match (section.is_empty(), key) {
                (_, None) => section,
                (true, Some(k)) => k.to_string(),
                (false, Some(k)) => format!("{section}.{k}"),
            });
        }
        pos += raw.len();
    }
    None
}

/// Parse a CIDR strictly: host bits must be clear, and the address is kept canonical.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = IpNet::from_str(s.trim()).map_err(|_| format!("{s:?} is not a CIDR network"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Is this pin well-formed (`sha256/` + base64 of 32 bytes)?
pub fn pin_is_well_formed(pin: &str) -> bool {
    use base64::Engine;
    pin.strip_prefix("sha256/")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|d| d.len() == 32)
}

fn read_sources(dir: &Path, errors: &mut Vec<PolicyError>) -> Vec<Source> {
    let mut out = Vec::new();
    for name in POLICY_FILES {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push(Source {
                name,
                text,
                unreadable: false,
            }),
            Err(e) => {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "the file is missing".to_string(),
                    _ => format!("cannot read the file: {e}"),
                };
                errors.push(PolicyError {
                    file: name.to_string(),
                    line: 1,
                    column: 1,
                    key: "-".into(),
                    message: why,
                });
                out.push(Source {
                    name,
                    text: String::new(),
                    unreadable: true,
                });
            }
        }
    }
    out
}

/// Load and check every policy file in `dir`; all problems are reported together.
pub fn load_policy(dir: &Path) -> Result<Policy, PolicyErrors> {
    let mut errors = Vec::new();
    let sources = read_sources(dir, &mut errors);
    let mut hasher = Sha256::new();
    for s in &sources {
        hasher.update(s.name.as_bytes());
        hasher.update([0u8]);
        hasher.update((s.text.len() as u64).to_be_bytes());
        hasher.update(s.text.as_bytes());
    }
    let sha256 = hex(&hasher.finalize());
    let file_sha256 = sources
        .iter()
        .map(|s| (s.name.to_string(), hex(&Sha256::digest(s.text.as_bytes()))))
        .collect();
    let [net_src, tls_src, acc_src, vis_src, ret_src, chat_src] = &sources[..] else {
        unreachable!("six policy files")
    };
    let network: Option<NetworkPolicy> = parse(net_src, &mut errors);
    let tls: Option<TlsPolicy> = parse(tls_src, &mut errors);
    let accounts: Option<AccountsPolicy> = parse(acc_src, &mut errors);
    let visitor: Option<VisitorPolicy> = parse(vis_src, &mut errors);
    let retention: Option<RetentionPolicy> = parse(ret_src, &mut errors);
    let chat: Option<ChatPolicy> = parse(chat_src, &mut errors);
    if let Some(c) = &chat {
        check_chat(chat_src, c, &mut errors);
    }

    let mut operator_allow = Vec::new();
    let mut trusted_proxies = Vec::new();
    let mut overrides = Vec::new();
    if let Some(n) = &network {
        check_network(
            net_src,
            n,
            &mut operator_allow,
            &mut trusted_proxies,
            &mut overrides,
            &mut errors,
        );
    }
    if let Some(t) = &tls {
        check_tls(tls_src, t, &mut errors);
    }
    if let Some(a) = &accounts {
        check_accounts(acc_src, a, &mut overrides, &mut errors);
    }
    if let Some(v) = &visitor {
        check_visitor(vis_src, v, &mut overrides, &mut errors);
    }
    if let Some(r) = &retention {
        for (key, v) in [
            ("transcripts_days", r.transcripts_days),
            ("visitor_tracking_days", r.visitor_tracking_days),
            ("audit_days", r.audit_days),
        ] {
            if !(1..=3650).contains(&v) {
                errors.push(ret_src.err("", key, format!("{v} is outside 1..=3650")));
            }
        }
    }
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    match (network, tls, accounts, visitor, retention, chat) {
        (Some(network), Some(tls), Some(accounts), Some(visitor), Some(retention), Some(chat)) => {
            Ok(Policy {
                network,
                tls,
                accounts,
                visitor,
                retention,
                chat,
                operator_allow,
                trusted_proxies,
                sha256,
                overrides_in_force: overrides,
                file_sha256,
                dir: dir.to_path_buf(),
            })
        }
        _ => Err(PolicyErrors(errors)),
    }
}

/// An IPv6 network inside ::ffff:0:0/96, as the IPv4 network it stands for. Sources are
/// compared in their canonical form (an IPv4-mapped client is an IPv4 client), so an entry
/// written this way would never match anyone.
fn mapped_as_v4(net: &IpNet) -> Option<ipnet::Ipv4Net> {
    let IpNet::V6(v6) = net else { return None };
    if v6.prefix_len() < 96 {
        return None;
    }
    let v4 = v6.network().to_ipv4_mapped()?;
    ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok()
}

fn mapped_problem(entry: &str, v4: &ipnet::Ipv4Net) -> String {
    format!(
        "{entry:?} is an IPv4-mapped IPv6 network, which never matches (clients are compared as IPv4); write {:?}",
        v4.to_string()
    )
}

/// Does this network cover every IPv4 address as IPv4-mapped IPv6?
pub fn covers_all_mapped(v6: &ipnet::Ipv6Net) -> bool {
    let first = std::net::Ipv4Addr::UNSPECIFIED.to_ipv6_mapped();
    let last = std::net::Ipv4Addr::BROADCAST.to_ipv6_mapped();
    v6.contains(&first) && v6.contains(&last)
}

fn check_network(
    src: &Source,
    n: &NetworkPolicy,
    allow: &mut Vec<IpNet>,
    proxies: &mut Vec<IpNet>,
    overrides: &mut Vec<String>,
    errors: &mut Vec<PolicyError>,
) {
    let ov = &n.overrides;
    if n.visitor.listen.is_empty() {
        errors.push(src.err("visitor", "listen", "at least one address is required"));
    }
    if n.operator.listen.is_empty() {
        errors.push(src.err("operator", "listen", "at least one address is required"));
    }
    if n.operator.allow.is_empty() {
        errors.push(src.err(
            "operator",
            "allow",
            "the operator allowlist is empty: no operator could log in",
        ));
    }
    for a in &n.operator.allow {
        let net = match parse_cidr(a) {
            Ok(net) => net,
            Err(e) => {
                errors.push(src.err("operator", "allow", e));
                continue;
            }
        };
        let everyone = match net {
            IpNet::V4(v4) => (v4.prefix_len() == 0).then_some("every address"),
            IpNet::V6(v6) if v6.prefix_len() == 0 => Some("every address"),
            IpNet::V6(v6) if covers_all_mapped(&v6) => {
                Some("every IPv4 address (as IPv4-mapped IPv6)")
            }
            IpNet::V6(_) => None,
        };
        if let Some(v4) = mapped_as_v4(&net) {
            errors.push(src.err("operator", "allow", mapped_problem(a, &v4)));
            continue;
        }
        if let Some(what) = everyone {
            if ov.operator_allow_everyone {
                overrides.push(format!(
                    "network.toml: overrides.operator_allow_everyone: operator allowlist admits {a}"
                ));
            } else {
                errors.push(src.err(
                    "operator",
                    "allow",
                    format!(
                        "{a:?} admits {what}; list the operators' subnets (or set overrides.operator_allow_everyone = true)"
                    ),
                ));
                continue;
            }
        }
        allow.push(net);
    }
    for p in &n.proxies.trusted {
        match parse_cidr(p) {
            Ok(net) => match mapped_as_v4(&net) {
                Some(v4) => errors.push(src.err("proxies", "trusted", mapped_problem(p, &v4))),
                None => proxies.push(net),
            },
            Err(e) => errors.push(src.err("proxies", "trusted", e)),
        }
    }
    for o in &n.operator.listen {
        if o.ip().is_unspecified() {
            if ov.operator_listen_wildcard {
                overrides.push(format!(
                    "network.toml: overrides.operator_listen_wildcard: operator listener on {o}"
                ));
            } else {
                errors.push(src.err(
                    "operator",
                    "listen",
                    format!("{o} is a wildcard address; bind the internal interface's address (or set overrides.operator_listen_wildcard = true)"),
                ));
            }
        }
        for v in &n.visitor.listen {
            let same_ip = o.ip() == v.ip() || o.ip().is_unspecified() || v.ip().is_unspecified();
            if same_ip && o.port() == v.port() && o.port() != 0 {
                if ov.operator_listen_on_visitor_address {
                    overrides.push(format!(
                        "network.toml: overrides.operator_listen_on_visitor_address: operator listener {o} shares the visitor address {v}"
                    ));
                } else {
                    errors.push(src.err(
                        "operator",
                        "listen",
                        format!("{o} is also the visitor listener's address ({v}); give the operator listener its own port"),
                    ));
                }
            }
        }
    }
    if n.operator.max_connections == 0 || n.operator.max_connections > 10_000 {
        errors.push(src.err("operator", "max_connections", "must be within 1..=10000"));
    }
}

fn check_pins(src: &Source, section: &str, pins: &[String], errors: &mut Vec<PolicyError>) {
    if pins.is_empty() {
        errors.push(src.err(section, "pins", "at least one pin is required"));
    }
    for p in pins {
        if !pin_is_well_formed(p) {
            errors.push(src.err(
                section,
                "pins",
                format!("{p:?} is not a pin of the form sha256/BASE64 (32 bytes)"),
            ));
        }
    }
}

fn check_tls(src: &Source, t: &TlsPolicy, errors: &mut Vec<PolicyError>) {
    check_pins(src, "visitor", &t.visitor.pins, errors);
    check_pins(src, "operator", &t.operator.pins, errors);
    match t.visitor.min_version.as_str() {
        "1.2" | "1.3" => {}
        "1.0" | "1.1" => errors.push(src.err(
            "visitor",
            "min_version",
            format!(
                "TLS {} is below the floor of 1.2 (and not implemented): use \"1.2\" or \"1.3\"",
                t.visitor.min_version
            ),
        )),
        other => errors.push(src.err(
            "visitor",
            "min_version",
            format!("{other:?} is not \"1.2\" or \"1.3\""),
        )),
    }
}

fn check_accounts(
    src: &Source,
    a: &AccountsPolicy,
    overrides: &mut Vec<String>,
    errors: &mut Vec<PolicyError>,
) {
    let below =
        a.argon2.memory_kib < ARGON2_MIN_MEMORY_KIB || a.argon2.iterations < ARGON2_MIN_ITERATIONS;
    let (min_mem, min_it) = if below && a.overrides.argon2_below_floor {
        overrides.push(format!(
            "accounts.toml: overrides.argon2_below_floor: argon2 m={} KiB t={} is below the floor m={ARGON2_MIN_MEMORY_KIB} t={ARGON2_MIN_ITERATIONS}",
            a.argon2.memory_kib, a.argon2.iterations
        ));
        (8, 1)
    } else {
        (ARGON2_MIN_MEMORY_KIB, ARGON2_MIN_ITERATIONS)
    };
    let hint = if min_mem == ARGON2_MIN_MEMORY_KIB {
        " (the OWASP floor; or set overrides.argon2_below_floor = true)"
    } else {
        ""
    };
    if a.argon2.memory_kib < min_mem || a.argon2.memory_kib > 4 * 1024 * 1024 {
        errors.push(src.err(
            "argon2",
            "memory_kib",
            format!(
                "{} is outside {min_mem}..=4194304{hint}",
                a.argon2.memory_kib
            ),
        ));
    }
    if a.argon2.iterations < min_it || a.argon2.iterations > 100 {
        errors.push(src.err(
            "argon2",
            "iterations",
            format!("{} is outside {min_it}..=100{hint}", a.argon2.iterations),
        ));
    }
    if !(1..=16).contains(&a.argon2.parallelism) {
        errors.push(src.err("argon2", "parallelism", "must be within 1..=16"));
    }
    let l = &a.login;
    if !(1..=100).contains(&l.max_failures_per_account) {
        errors.push(src.err(
            "login",
            "max_failures_per_account",
            "must be within 1..=100",
        ));
    }
    if !(1..=10_000).contains(&l.max_failures_per_source) {
        errors.push(src.err(
            "login",
            "max_failures_per_source",
            "must be within 1..=10000",
        ));
    }
    if !(1..=3600).contains(&l.backoff_base_secs) {
        errors.push(src.err("login", "backoff_base_secs", "must be within 1..=3600"));
    }
    if l.backoff_max_secs < l.backoff_base_secs || l.backoff_max_secs > 86_400 {
        errors.push(src.err(
            "login",
            "backoff_max_secs",
            "must be within backoff_base_secs..=86400",
        ));
    }
    if !(1..=64).contains(&l.max_concurrent_hashes) {
        errors.push(src.err("login", "max_concurrent_hashes", "must be within 1..=64"));
    }
    if l.max_waiting_logins > 10_000 {
        errors.push(src.err("login", "max_waiting_logins", "must be within 0..=10000"));
    }
    let s = &a.session;
    if !(60..=86_400).contains(&s.idle_timeout_secs) {
        errors.push(src.err("session", "idle_timeout_secs", "must be within 60..=86400"));
    }
    if s.absolute_timeout_secs < s.idle_timeout_secs || s.absolute_timeout_secs > 7 * 86_400 {
        errors.push(src.err(
            "session",
            "absolute_timeout_secs",
            "must be within idle_timeout_secs..=604800",
        ));
    }
    for r in &a.totp_required_roles {
        if !["operator", "supervisor", "admin"].contains(&r.as_str()) {
            errors.push(src.err(
                "",
                "totp_required_roles",
                format!("{r:?} is not a role (operator, supervisor, admin)"),
            ));
        }
    }
    if !(8..=1024).contains(&a.password_min_chars) {
        errors.push(src.err("", "password_min_chars", "must be within 8..=1024"));
    }
}

fn check_chat(src: &Source, c: &ChatPolicy, errors: &mut Vec<PolicyError>) {
    let mut seen = std::collections::HashSet::new();
    for d in &c.departments {
        let ok = !d.trim().is_empty()
            && d.len() <= 64
            && d == d.trim()
            && !d.chars().any(char::is_control);
        if !ok {
            errors.push(src.err(
                "",
                "departments",
                format!("{d:?} is not a department name (1-64 printable characters)"),
            ));
        }
        if !seen.insert(d) {
            errors.push(src.err("", "departments", format!("{d:?} is listed twice")));
        }
    }
    if c.departments.len() > 100 {
        errors.push(src.err("", "departments", "at most 100 departments"));
    }
    if !["auto", "manual"].contains(&c.routing.as_str()) {
        errors.push(src.err(
            "",
            "routing",
            format!("{:?} is not \"auto\" or \"manual\"", c.routing),
        ));
    }
    if !(1..=50).contains(&c.max_chats_per_operator) {
        errors.push(src.err("", "max_chats_per_operator", "must be within 1..=50"));
    }
    for w in &c.wrapup_categories {
        if w.trim().is_empty() || w.len() > 64 {
            errors.push(src.err(
                "",
                "wrapup_categories",
                format!("{w:?} is not a category name (1-64 characters)"),
            ));
        }
    }
    if !(10..=86_400).contains(&c.visitor_idle_secs) {
        errors.push(src.err("", "visitor_idle_secs", "must be within 10..=86400"));
    }
    if !(10..=3600).contains(&c.invite_timeout_secs) {
        errors.push(src.err("", "invite_timeout_secs", "must be within 10..=3600"));
    }
    if c.departments.is_empty() && c.prechat.department == FieldMode::Required {
        errors.push(src.err(
            "prechat",
            "department",
            "required, but no departments are listed",
        ));
    }
}

fn check_visitor(
    src: &Source,
    v: &VisitorPolicy,
    overrides: &mut Vec<String>,
    errors: &mut Vec<PolicyError>,
) {
    for o in &v.frame_ancestors {
        if o == "*" {
            if v.overrides.frame_ancestors_any {
                overrides.push(
                    "visitor.toml: overrides.frame_ancestors_any: any site may embed the chat page"
                        .into(),
                );
            } else {
                errors.push(src.err(
                    "",
                    "frame_ancestors",
                    "\"*\" lets any site embed the chat page; list the customer's origins (or set overrides.frame_ancestors_any = true)",
                ));
            }
            continue;
        }
        let ok = (o.starts_with("https://") || o.starts_with("http://"))
            && !o.contains('*')
            && !o.contains(char::is_whitespace)
            && !o.contains(';')
            && !o.contains(',')
            && !o.contains('\'')
            && o.matches('/').count() == 2;
        if !ok {
            errors.push(src.err(
                "",
                "frame_ancestors",
                format!(
                    "{o:?} is not an origin like https://www.example.com (no wildcards, no path)"
                ),
            ));
        }
    }
    if !(1024..=1_048_576).contains(&v.max_body_bytes) {
        errors.push(src.err("", "max_body_bytes", "must be within 1024..=1048576"));
    }
    if !(1..=100_000).contains(&v.max_message_chars) {
        errors.push(src.err("", "max_message_chars", "must be within 1..=100000"));
    }
    if !(1..=10_000).contains(&v.max_field_chars) {
        errors.push(src.err("", "max_field_chars", "must be within 1..=10000"));
    }
    if !(1..=10_000).contains(&v.messages_per_minute) {
        errors.push(src.err("", "messages_per_minute", "must be within 1..=10000"));
    }
    if !(1..=100_000).contains(&v.chats_per_hour_per_source) {
        errors.push(src.err("", "chats_per_hour_per_source", "must be within 1..=100000"));
    }
    if !(1..=100_000).contains(&v.max_connections) {
        errors.push(src.err("", "max_connections", "must be within 1..=100000"));
    }
    if !["none", "truncated", "full"].contains(&v.visitor_ip.as_str()) {
        errors.push(src.err(
            "",
            "visitor_ip",
            format!(
                "{:?} is not \"none\", \"truncated\" or \"full\"",
                v.visitor_ip
            ),
        ));
    }
}

/// Must this IPv6 listen address be IPv6-only? Only a `[::]` that shares its port with a
/// `0.0.0.0` in the same list (the two would clash); otherwise IPv6 sockets stay
/// dual-stack and IPv4 clients arrive as IPv4-mapped addresses, which every check
/// canonicalises first.
pub fn needs_ipv6_only(addrs: &[SocketAddr], a: &SocketAddr) -> bool {
    a.is_ipv6()
        && a.ip().is_unspecified()
        && addrs
            .iter()
            .any(|o| o.is_ipv4() && o.ip().is_unspecified() && o.port() == a.port())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_with_host_bits_is_refused() {
        assert!(parse_cidr("10.20.3.4/16")
            .unwrap_err()
            .contains("10.20.0.0/16"));
        assert!(parse_cidr("10.20.0.0/16").is_ok());
        assert!(parse_cidr("2001:db8::1/32").is_err());
    }

    #[test]
    fn toml_errors_without_text_still_get_a_message() {
        let src = Source {
            name: "retention.toml",
            text: "# Days\u{4} kept\ntranscripts_days = 365\n".into(),
            unreadable: false,
        };
        let mut errors = Vec::new();
        assert!(parse::<RetentionPolicy>(&src, &mut errors).is_none());
        assert_eq!(
            errors[0].to_string(),
            "retention.toml:1:7: -: control character U+0004 is not allowed"
        );
        let src = Source {
            name: "retention.toml",
            text: "transcripts_days = \"365\n".into(),
            unreadable: false,
        };
        let mut errors = Vec::new();
        assert!(parse::<RetentionPolicy>(&src, &mut errors).is_none());
        assert!(!errors[0].to_string().contains('\n'), "{}", errors[0]);
    }

    #[test]
    fn locate_finds_keys_inside_sections() {
        let t = "# c\n[a]\nx = 1\n[b]\n  x = 2\n";
        assert_eq!(locate(t, "b", "x"), (5, 3));
        assert_eq!(locate(t, "a", "x"), (3, 1));
        assert_eq!(locate(t, "b", "y"), (4, 1));
    }

    #[test]
    fn pins_are_checked_for_form() {
        assert!(pin_is_well_formed(
            "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        ));
        assert!(!pin_is_well_formed("sha256/AAAA"));
        assert!(!pin_is_well_formed("md5/AAAA"));
    }
}
