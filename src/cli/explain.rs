//! `palisade policy explain`: the effective policy and live checks, for auditors.
//!
//! Every check has a stable ID and is PASS or FAIL. Checks are independent: one failure
//! does not hide the others. The text form reads well in a terminal and pasted into a
//! report; `--json` gives the same content for tools.

use crate::policy::{render, Config, Policy, ARGON2_MIN_ITERATIONS, ARGON2_MIN_MEMORY_KIB};
use crate::tls::PinnedCertificate;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: &'static str,
    pub title: &'static str,
    pub detail: String,
}

fn check(id: &'static str, title: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            id,
            status: "PASS",
            title,
            detail,
        },
        Err(detail) => Check {
            id,
            status: "FAIL",
            title,
            detail,
        },
    }
}

/// Every check ID, in report order (stable: tools and auditors rely on them).
pub const CHECK_IDS: &[&str] = &[
    "POL-01", "NET-01", "NET-02", "NET-03", "NET-04", "TLS-01", "TLS-02", "TLS-03", "TLS-04",
    "TLS-05", "TLS-06", "TLS-07", "ACC-01", "VIS-01", "FS-01", "FS-02", "FS-03", "SYS-01",
    "SYS-02", "AUD-01", "OVR-01",
];

/// Civil UTC date and time of a Unix time: (year, month, day, hour, minute, second).
pub fn civil(secs: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS UTC` from the system clock.
pub fn utc_now() -> String {
    let (y, m, d, h, mi, s) = civil(unix_now());
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

fn pinned(cfg: &Config, p: &Policy, side: &str) -> Result<PinnedCertificate, String> {
    let (cert, key, pins) = if side == "visitor" {
        (
            &p.tls.visitor.certificate,
            &p.tls.visitor.key,
            &p.tls.visitor.pins,
        )
    } else {
        (
            &p.tls.operator.certificate,
            &p.tls.operator.key,
            &p.tls.operator.pins,
        )
    };
    let cert = crate::policy::resolve_location(&cfg.policy_dir, cert)?;
    let key = crate::policy::resolve_location(&cfg.policy_dir, key)?;
    crate::sandbox::check_secret_file(&key)?;
    crate::tls::load_pinned(&cert, &key, pins).map_err(|e| e.to_string())
}

fn backup_pin(pins: &[String], served: Option<&str>) -> Result<String, String> {
    let spare: Vec<&String> = pins.iter().filter(|p| Some(p.as_str()) != served).collect();
    match (served, spare.first()) {
        (None, _) => {
            Err("the served key could not be read, so its backup cannot be told apart".into())
        }
        (Some(_), Some(b)) => Ok(format!("{} backup pin(s), e.g. {b}", spare.len())),
        (Some(_), None) => {
            Err("no backup pin: renewing with a new key would stop the appliance".into())
        }
    }
}

fn validity(c: &Result<PinnedCertificate, String>) -> Result<String, String> {
    let c = c
        .as_ref()
        .map_err(|_| "the certificate could not be loaded (see the pin check)".to_string())?;
    match crate::tls::leaf_validity(c)? {
        (false, _) => Err("the certificate is not valid now (expired or not yet valid)".into()),
        (true, d) if d < 14 => Err(format!("the certificate expires in {d} days")),
        (true, d) => Ok(format!("valid for another {d} days")),
    }
}

/// Run every check. `policy` is `None` when the policy did not load.
pub fn run_checks(cfg: &Config) -> (Option<Policy>, Vec<Check>) {
    let policy = crate::policy::load_policy(&cfg.policy_dir);
    let mut out = Vec::new();
    let p = match policy {
        Ok(p) => {
            out.push(check(
                "POL-01",
                "policy files parse and every value is in range",
                Ok(format!("sha256 {}", p.sha256)),
            ));
            p
        }
        Err(e) => {
            out.push(check(
                "POL-01",
                "policy files parse and every value is in range",
                Err(e.to_string().replace('\n', "; ")),
            ));
            return (None, out);
        }
    };
    let net = &p.network;
    out.push(check(
        "NET-01",
        "operator listener is not on a wildcard address",
        match net.operator.listen.iter().find(|a| a.ip().is_unspecified()) {
            Some(a) => Err(format!("{a} listens on every interface")),
            None => Ok(join(&net.operator.listen)),
        },
    ));
    out.push(check(
        "NET-02",
        "operator listener is not on the visitor listener's address",
        {
            let clash = net.operator.listen.iter().find(|o| {
                net.visitor.listen.iter().any(|v| {
                    o.port() == v.port()
                        && (o.ip() == v.ip() || o.ip().is_unspecified() || v.ip().is_unspecified())
                })
            });
            match clash {
                Some(o) => Err(format!("{o} is reachable as the visitor listener")),
                None => Ok(format!(
                    "operator {} / visitor {}",
                    join(&net.operator.listen),
                    join(&net.visitor.listen)
                )),
            }
        },
    ));
    out.push(check(
        "NET-03",
        "operator allowlist admits only listed subnets",
        {
            let all = p.operator_allow.iter().find(|n| match n {
                ipnet::IpNet::V4(v4) => v4.prefix_len() == 0,
                ipnet::IpNet::V6(v6) => {
                    v6.prefix_len() == 0 || crate::policy::covers_all_mapped(v6)
                }
            });
            match all {
                Some(n) => Err(format!("{n} admits every address")),
                None => Ok(p
                    .operator_allow
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")),
            }
        },
    ));
    out.push(check(
        "NET-04",
        "forwarding headers are believed only from trusted proxies",
        Ok(if p.trusted_proxies.is_empty() {
            "no trusted proxies: forwarding headers are ignored".into()
        } else {
            format!(
                "trusted: {}",
                p.trusted_proxies
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
    ));
    let v = pinned(cfg, &p, "visitor");
    let o = pinned(cfg, &p, "operator");
    out.push(check(
        "TLS-01",
        "served visitor certificate is pinned and matches its key",
        v.as_ref()
            .map(|c| format!("serving {}", c.pin()))
            .map_err(Clone::clone),
    ));
    out.push(check(
        "TLS-02",
        "visitor backup pin present and not served",
        backup_pin(&p.tls.visitor.pins, v.as_ref().ok().map(|c| c.pin())),
    ));
    out.push(check(
        "TLS-03",
        "served operator certificate is pinned and matches its key",
        o.as_ref()
            .map(|c| format!("serving {}", c.pin()))
            .map_err(Clone::clone),
    ));
    out.push(check(
        "TLS-04",
        "operator backup pin present and not served",
        backup_pin(&p.tls.operator.pins, o.as_ref().ok().map(|c| c.pin())),
    ));
    out.push(check(
        "TLS-05",
        "visitor certificate valid now and for 14 days or more",
        validity(&v),
    ));
    out.push(check(
        "TLS-06",
        "operator certificate valid now and for 14 days or more",
        validity(&o),
    ));
    out.push(check(
        "TLS-07",
        "operator channel is TLS 1.3 with AES-256-GCM only (live handshakes)",
        o.as_ref()
            .map_err(|_| "the operator certificate could not be loaded".to_string())
            .and_then(crate::tls::operator_channel_proof),
    ));
    let a = &p.accounts.argon2;
    out.push(check(
        "ACC-01",
        "argon2id cost at or above the floor (m=19456 KiB, t=2, p=1)",
        if a.memory_kib >= ARGON2_MIN_MEMORY_KIB && a.iterations >= ARGON2_MIN_ITERATIONS {
            Ok(format!(
                "m={} KiB, t={}, p={}",
                a.memory_kib, a.iterations, a.parallelism
            ))
        } else {
            Err(format!(
                "m={} KiB, t={} is below the floor",
                a.memory_kib, a.iterations
            ))
        },
    ));
    out.push(check(
        "VIS-01",
        "only listed origins may embed the chat page",
        if p.visitor.frame_ancestors.iter().any(|o| o == "*") {
            Err("frame_ancestors contains *".into())
        } else if p.visitor.frame_ancestors.is_empty() {
            Ok("no site may embed the chat page".into())
        } else {
            Ok(p.visitor.frame_ancestors.join(" "))
        },
    ));
    out.push(check(
        "FS-01",
        "state directory is 0700 and owned by the service user",
        crate::sandbox::check_state_dir(&cfg.state_dir)
            .map(|_| cfg.state_dir.display().to_string()),
    ));
    out.push(check(
        "FS-02",
        "key files are readable by their owner only",
        {
            let mut problems = Vec::new();
            let mut n = 0;
            for spec in [&cfg.data_key, &cfg.auth_string_hash] {
                match cfg.resolve_secret_path(spec) {
                    Ok(path) => {
                        n += 1;
                        if let Err(e) = crate::sandbox::check_secret_file(&path) {
                            problems.push(e)
                        }
                    }
                    Err(e) => problems.push(e),
                }
            }
            for spec in [&p.tls.visitor.key, &p.tls.operator.key] {
                match crate::policy::resolve_location(&cfg.policy_dir, spec) {
                    Ok(path) => {
                        n += 1;
                        if let Err(e) = crate::sandbox::check_secret_file(&path) {
                            problems.push(e)
                        }
                    }
                    Err(e) => problems.push(e),
                }
            }
            if problems.is_empty() {
                Ok(format!("{n} key files checked"))
            } else {
                Err(problems.join("; "))
            }
        },
    ));
    out.push(check(
        "FS-03",
        "config and policy files are writable by their owner only",
        {
            let mut problems = Vec::new();
            let mut paths = vec![cfg.path.clone(), cfg.policy_dir.clone()];
            paths.extend(
                crate::policy::POLICY_FILES
                    .iter()
                    .map(|f| cfg.policy_dir.join(f)),
            );
            for path in &paths {
                if let Err(e) = crate::sandbox::check_policy_file(path) {
                    problems.push(e);
                }
            }
            if problems.is_empty() {
                Ok(format!("{} files checked", paths.len()))
            } else {
                Err(problems.join("; "))
            }
        },
    ));
    let (sys, nft) = render::compare_installed(
        &p,
        cfg.rendered_systemd_dir.as_deref(),
        cfg.rendered_nftables.as_deref(),
    );
    out.push(check(
        "SYS-01",
        "installed socket units (listen addresses, IPAddressAllow=) equal the policy",
        if sys.is_empty() {
            Ok(cfg
                .rendered_systemd_dir
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default())
        } else {
            Err(sys.join("; "))
        },
    ));
    out.push(check(
        "SYS-02",
        "installed firewall rules equal the policy",
        if nft.is_empty() {
            Ok(cfg
                .rendered_nftables
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default())
        } else {
            Err(nft.join("; "))
        },
    ));
    out.push(check("AUD-01", "audit chain is intact", audit_check(cfg)));
    out.push(check(
        "OVR-01",
        "no dangerous value is accepted by an override",
        if p.overrides_in_force.is_empty() {
            Ok("none in force".into())
        } else {
            Err(p.overrides_in_force.join("; "))
        },
    ));
    (Some(p), out)
}

fn audit_check(cfg: &Config) -> Result<String, String> {
    let key_path = cfg.resolve_secret_path(&cfg.data_key)?;
    let key = crate::app::read_data_key(&key_path)?;
    let sealer = crate::storage::crypto::Sealer::new(&key);
    if !cfg.state_dir.join(crate::storage::DB_FILE).exists() {
        return Ok("no database yet".into());
    }
    let r = crate::storage::verify_audit_chain(&cfg.state_dir, &sealer).map_err(|e| e.0)?;
    match r.broken {
        Some(b) => Err(b),
        None => Ok(format!(
            "{} records, head {} {}",
            r.records,
            r.head_seq,
            &r.head_hash[..r.head_hash.len().min(16)]
        )),
    }
}

fn join(a: &[std::net::SocketAddr]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The effective policy as a JSON value (canonical CIDRs, pins, limits, retention).
pub fn effective(p: &Policy) -> serde_json::Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["network"]["operator"]["allow"] = serde_json::json!(p
        .operator_allow
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>());
    v["network"]["proxies"]["trusted"] = serde_json::json!(p
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>());
    v["tls"]["operator"]["protocol"] = serde_json::json!("TLS 1.3, TLS13_AES_256_GCM_SHA384 only");
    v["policy_dir"] = serde_json::json!(p.dir);
    v
}

/// The human-readable report.
pub fn text_report(cfg: &Config, p: Option<&Policy>, checks: &[Check]) -> String {
    let mut s = String::new();
    s.push_str("Palisade policy report\n");
    s.push_str(&format!("  generated   {}\n", utc_now()));
    s.push_str(&format!("  config      {}\n", cfg.path.display()));
    s.push_str(&format!("  policy      {}\n", cfg.policy_dir.display()));
    if let Some(p) = p {
        s.push_str(&format!("  sha256      {}\n\nEffective policy\n", p.sha256));
        let row = |s: &mut String, area: &str, key: &str, val: String| {
            s.push_str(&format!("  {area:<10}{key:<20}{val}\n"));
        };
        let n = &p.network;
        row(&mut s, "network", "visitor listen", join(&n.visitor.listen));
        row(&mut s, "", "operator listen", join(&n.operator.listen));
        row(
            &mut s,
            "",
            "operator allow",
            p.operator_allow
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        row(
            &mut s,
            "",
            "trusted proxies",
            if p.trusted_proxies.is_empty() {
                "none".into()
            } else {
                p.trusted_proxies
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        row(
            &mut s,
            "tls",
            "visitor minimum",
            format!("TLS {}", p.tls.visitor.min_version),
        );
        row(
            &mut s,
            "",
            "visitor resumption",
            if p.tls.visitor.session_resumption {
                "on (one TLS 1.3 ticket per full handshake)"
            } else {
                "off (every connection a full handshake)"
            }
            .to_string(),
        );
        row(&mut s, "", "visitor pins", p.tls.visitor.pins.join(", "));
        row(
            &mut s,
            "",
            "operator protocol",
            "TLS 1.3, TLS13_AES_256_GCM_SHA384 only".into(),
        );
        row(&mut s, "", "operator pins", p.tls.operator.pins.join(", "));
        let a = &p.accounts;
        row(
            &mut s,
            "accounts",
            "argon2id",
            format!(
                "m={} KiB, t={}, p={}",
                a.argon2.memory_kib, a.argon2.iterations, a.argon2.parallelism
            ),
        );
        row(
            &mut s,
            "",
            "login backoff",
            format!(
                "after {} failures per account or {} per source; {} s doubling to {} s",
                a.login.max_failures_per_account,
                a.login.max_failures_per_source,
                a.login.backoff_base_secs,
                a.login.backoff_max_secs
            ),
        );
        row(
            &mut s,
            "",
            "hashing",
            format!(
                "{} at once, {} waiting at most",
                a.login.max_concurrent_hashes, a.login.max_waiting_logins
            ),
        );
        row(
            &mut s,
            "",
            "sessions",
            format!(
                "idle {} s, absolute {} s",
                a.session.idle_timeout_secs, a.session.absolute_timeout_secs
            ),
        );
        row(
            &mut s,
            "",
            "passwords",
            format!("at least {} characters", a.password_min_chars),
        );
        let v = &p.visitor;
        row(
            &mut s,
            "visitor",
            "frame ancestors",
            if v.frame_ancestors.is_empty() {
                "none".into()
            } else {
                v.frame_ancestors.join(" ")
            },
        );
        row(&mut s, "", "limits", format!(
            "body {} B, message {} chars, field {} chars, {} msgs/min, {} chats/h/source, {} connections",
            v.max_body_bytes, v.max_message_chars, v.max_field_chars, v.messages_per_minute, v.chats_per_hour_per_source, v.max_connections
        ));
        row(
            &mut s,
            "",
            "card masking",
            if v.mask_card_numbers {
                "on".into()
            } else {
                "off".into()
            },
        );
        let r = &p.retention;
        row(
            &mut s,
            "retention",
            "days kept",
            format!(
                "transcripts {}, visitor tracking {}, audit {}",
                r.transcripts_days, r.visitor_tracking_days, r.audit_days
            ),
        );
        row(
            &mut s,
            "overrides",
            "in force",
            if p.overrides_in_force.is_empty() {
                "none".into()
            } else {
                p.overrides_in_force.join("; ")
            },
        );
    }
    s.push_str("\nChecks\n");
    for c in checks {
        s.push_str(&format!("  {:<4}  {:<6}  {}\n", c.status, c.id, c.title));
        if !c.detail.is_empty() {
            s.push_str(&format!("                {}\n", c.detail));
        }
    }
    let fails = checks.iter().filter(|c| c.status == "FAIL").count();
    s.push_str(&format!(
        "\nResult: {} PASS, {} FAIL\n",
        checks.len() - fails,
        fails
    ));
    s
}
