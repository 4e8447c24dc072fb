//! Rendering the policy into the other two places that enforce it: systemd socket units
//! (kernel-level `IPAddressAllow=` on the operator socket, and the listen addresses) and
//! an nftables ruleset. Pure functions of the policy: the same policy always renders the
//! same bytes, so CI can regenerate and diff, and `check` can compare installed files.

use super::Policy;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One rendered file: its path relative to the output location, and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub relative: PathBuf,
    pub contents: String,
}

fn header(p: &Policy, comment: &str) -> String {
    let sha = p
        .file_sha256
        .get("network.toml")
        .map(String::as_str)
        .unwrap_or("-");
    format!(
        "{comment} Rendered by `palisade policy render` from network.toml; do not edit.\n{comment} network.toml sha256: {sha}\n"
    )
}

fn listen_lines(addrs: &[SocketAddr]) -> String {
    let mut s = String::from("ListenStream=\n");
    for a in addrs {
        s.push_str(&format!("ListenStream={a}\n"));
    }
    // The daemon's own rule for binding: IPv6-only only where "[::]" and "0.0.0.0" share a
    // port; elsewhere dual-stack (IPv4 clients arrive IPv4-mapped and are canonicalised).
    let v6only = addrs.iter().any(|a| super::needs_ipv6_only(addrs, a));
    s.push_str(if v6only {
        "BindIPv6Only=ipv6-only\n"
    } else {
        "BindIPv6Only=both\n"
    });
    s
}

/// The systemd drop-ins, relative to a unit directory such as `/etc/systemd/system`.
pub fn systemd_dropins(p: &Policy) -> Vec<Rendered> {
    let net = &p.network;
    let allow: Vec<String> = p.operator_allow.iter().map(IpNet::to_string).collect();
    vec![
        Rendered {
            relative: PathBuf::from("palisade-visitor.socket.d/40-listen.conf"),
            contents: format!(
                "{}[Socket]\n{}",
                header(p, "#"),
                listen_lines(&net.visitor.listen)
            ),
        },
        Rendered {
            relative: PathBuf::from("palisade-operator.socket.d/40-listen.conf"),
            contents: format!(
                "{}[Socket]\n{}",
                header(p, "#"),
                listen_lines(&net.operator.listen)
            ),
        },
        Rendered {
            relative: PathBuf::from("palisade-operator.socket.d/50-allowlist.conf"),
            contents: format!(
                "{}# Kernel-level source filter (cgroup BPF) on the operator socket.\n[Socket]\nIPAddressDeny=any\nIPAddressAllow={}\n",
                header(p, "#"),
                allow.join(" ")
            ),
        },
    ]
}

fn set(name: &str, kind: &str, nets: &[String]) -> String {
    let mut s = format!("\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval\n");
    if !nets.is_empty() {
        s.push_str(&format!("\t\telements = {{ {} }}\n", nets.join(", ")));
    }
    s.push_str("\t}\n");
    s
}

fn daddr(a: &SocketAddr) -> String {
    if a.ip().is_unspecified() {
        String::new()
    } else if a.is_ipv4() {
        format!("ip daddr {} ", a.ip())
    } else {
        format!("ip6 daddr {} ", a.ip())
    }
}

/// The nftables ruleset: the visitor ports open, the operator port open only to the
/// allowlist (refusals counted in `operator_refused`), everything else inbound dropped,
/// nothing forwarded. Only nft keywords, no names from /etc/protocols or /etc/services
/// (a minimal appliance has neither).
pub fn nftables(p: &Policy) -> String {
    let nets = |v6: bool| -> Vec<String> {
        p.operator_allow
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .map(IpNet::to_string)
            .collect()
    };
    let mut s = String::from("#!/usr/sbin/nft -f\n");
    s.push_str(&header(p, "#"));
    s.push_str(
        "#\n# The appliance's inbound firewall: the visitor port for everyone, the operator port\n",
    );
    s.push_str(
        "# only from the operator allowlist (the third layer, after the kernel allowlist on\n",
    );
    s.push_str("# palisade-operator.socket and the daemon's own check), nothing else.\n");
    s.push_str("\ntable inet palisade\ndelete table inet palisade\n\ntable inet palisade {\n");
    s.push_str("\t# network.toml [operator] allow\n");
    s.push_str(&set("operator_allow_v4", "ipv4_addr", &nets(false)));
    s.push('\n');
    s.push_str(&set("operator_allow_v6", "ipv6_addr", &nets(true)));
    s.push_str("\n\tcounter operator_refused {\n\t}\n\n");
    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n");
    s.push_str("\t\tiif \"lo\" accept\n\t\tct state established,related accept\n\t\tct state invalid drop\n");
    s.push_str("\t\t# Network housekeeping: ICMP errors and echo, IPv6 neighbour discovery, DHCP replies.\n");
    s.push_str("\t\ticmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept\n");
    s.push_str("\t\ticmpv6 type { echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept\n");
    s.push_str("\t\tudp sport 67 udp dport 68 accept\n\t\tip6 saddr fe80::/10 udp sport 547 udp dport 546 accept\n");
    // "0.0.0.0:443" and "[::]:443" render the same rule in an inet table: keep one.
    let mut seen = std::collections::HashSet::new();
    let mut emit = |s: &mut String, rule: String| {
        if seen.insert(rule.clone()) {
            s.push_str(&rule);
        }
    };
    s.push_str("\t\t# network.toml [visitor] listen\n");
    for a in &p.network.visitor.listen {
        emit(
            &mut s,
            format!("\t\t{}tcp dport {} accept\n", daddr(a), a.port()),
        );
    }
    s.push_str("\t\t# network.toml [operator] listen and allow\n");
    for a in &p.network.operator.listen {
        let from = if a.is_ipv4() {
            "ip saddr @operator_allow_v4"
        } else {
            "ip6 saddr @operator_allow_v6"
        };
        emit(
            &mut s,
            format!("\t\t{}tcp dport {} {from} accept\n", daddr(a), a.port()),
        );
    }
    for a in &p.network.operator.listen {
        emit(
            &mut s,
            format!(
                "\t\ttcp dport {} counter name operator_refused drop\n",
                a.port()
            ),
        );
    }
    s.push_str("\t}\n\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n");
    s
}

/// Write the rendered files. Returns the paths written.
pub fn write_all(
    p: &Policy,
    systemd_dir: Option<&Path>,
    nft_file: Option<&Path>,
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let write = |path: &Path, contents: &str| -> Result<(), String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
    };
    if let Some(dir) = systemd_dir {
        for r in systemd_dropins(p) {
            let path = dir.join(&r.relative);
            write(&path, &r.contents)?;
            written.push(path);
        }
    }
    if let Some(f) = nft_file {
        write(f, &nftables(p))?;
        written.push(f.to_path_buf());
    }
    Ok(written)
}

/// Compare installed rendered files with what the policy renders now; one line per
/// difference (empty when they agree).
pub fn compare_installed(
    p: &Policy,
    systemd_dir: Option<&Path>,
    nft_file: Option<&Path>,
) -> (Vec<String>, Vec<String>) {
    let differs = |path: &Path, want: &str| -> Option<String> {
        match std::fs::read_to_string(path) {
            Ok(have) if have == want => None,
            Ok(_) => Some(format!(
                "{}: differs from the policy; run `palisade policy render`",
                path.display()
            )),
            Err(e) => Some(format!("{}: {e}", path.display())),
        }
    };
    let systemd = match systemd_dir {
        Some(dir) => systemd_dropins(p)
            .iter()
            .filter_map(|r| differs(&dir.join(&r.relative), &r.contents))
            .collect(),
        None => vec![
            "no rendered_systemd_dir in the config: the installed socket units cannot be compared"
                .into(),
        ],
    };
    let nft = match nft_file {
        Some(f) => differs(f, &nftables(p)).into_iter().collect(),
        None => vec![
            "no rendered_nftables in the config: the installed firewall rules cannot be compared"
                .into(),
        ],
    };
    (systemd, nft)
}
