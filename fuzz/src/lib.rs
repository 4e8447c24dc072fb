//! The properties the fuzz targets check, as plain functions (each panics when its
//! property is broken). `tests/adversarial_props.rs` in the main crate checks the same
//! properties with proptest.

use ipnet::IpNet;
use palisade::operator::allowlist::{naive_admits, Allowlist};
use palisade::policy::{load_policy, POLICY_FILES};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The shipped policy files, the starting point of every policy input.
pub const SHIPPED: [(&str, &str); 6] = [
    ("network.toml", include_str!("../../policy/network.toml")),
    ("tls.toml", include_str!("../../policy/tls.toml")),
    ("accounts.toml", include_str!("../../policy/accounts.toml")),
    ("visitor.toml", include_str!("../../policy/visitor.toml")),
    (
        "retention.toml",
        include_str!("../../policy/retention.toml"),
    ),
    ("chat.toml", include_str!("../../policy/chat.toml")),
];

/// A scratch policy directory for this process and thread.
fn policy_dir() -> PathBuf {
    thread_local! {
        static DIR: OnceLock<PathBuf> = const { OnceLock::new() };
    }
    DIR.with(|d| {
        d.get_or_init(|| {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let d = std::env::temp_dir()
                .join(format!("palisade-fuzz-policy-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&d).expect("policy dir");
            d
        })
        .clone()
    })
}

/// Remove this thread's scratch policy directory (the property tests call it when done).
pub fn remove_policy_dir() {
    let _ = std::fs::remove_dir_all(policy_dir());
}

/// Load the shipped policy with file `which` replaced by `text`: never panics; every error
/// names a policy file and a position inside it; an accepted policy keeps its invariants.
pub fn check_policy(which: usize, text: &[u8]) {
    let dir = policy_dir();
    std::fs::create_dir_all(&dir).expect("policy dir");
    for (i, (name, shipped)) in SHIPPED.iter().enumerate() {
        let body: &[u8] = if i == which % SHIPPED.len() {
            text
        } else {
            shipped.as_bytes()
        };
        std::fs::write(dir.join(name), body).expect("write policy file");
    }
    match load_policy(&dir) {
        Ok(p) => {
            let everyone = p.network.overrides.operator_allow_everyone;
            for net in &p.operator_allow {
                assert_eq!(net.trunc(), *net, "host bits in {net}");
                assert!(everyone || net.prefix_len() > 0, "catch-all {net}");
                if let IpNet::V6(v6) = net {
                    let mapped =
                        ipnet::Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
                            .unwrap();
                    // Neither all of IPv4 nor an IPv4-mapped entry (which never matches).
                    assert!(
                        !mapped.contains(&v6.network()),
                        "{net}: an IPv4-mapped entry"
                    );
                    assert!(
                        everyone || !v6.contains(&mapped),
                        "{net} admits all of IPv4"
                    );
                }
            }
            for net in &p.trusted_proxies {
                if let IpNet::V6(v6) = net {
                    assert!(
                        v6.network().to_ipv4_mapped().is_none(),
                        "{net}: an IPv4-mapped proxy entry"
                    );
                }
            }
            assert!(!p.operator_allow.is_empty());
            assert!(["1.2", "1.3"].contains(&p.tls.visitor.min_version.as_str()));
            assert!(p.accounts.argon2.memory_kib >= 19456);
            assert!(
                p.accounts.session.absolute_timeout_secs >= p.accounts.session.idle_timeout_secs
            );
            assert!(p.visitor.max_body_bytes >= 1024);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error list without errors");
            let lines = text.split(|b| *b == b'\n').count() + 1;
            for e in &errors.0 {
                assert!(
                    POLICY_FILES.contains(&e.file.as_str()),
                    "unknown file {:?}",
                    e.file
                );
                assert!(e.line >= 1 && e.column >= 1, "{e}");
                if e.file == SHIPPED[which % SHIPPED.len()].0 {
                    assert!(
                        e.line <= lines,
                        "line {} of a {lines}-line file: {e}",
                        e.line
                    );
                }
                assert!(!e.message.trim().is_empty(), "{e}");
                // One line per problem.
                assert!(!e.to_string().contains('\n'), "{e}");
            }
        }
    }
}

/// Every request body type, by the name of its route: (name, the generic property for it).
/// A body property: panics when the body type breaks it.
pub type BodyCheck = fn(&[u8]);
/// Does this body type accept these bytes?
pub type BodyParses = fn(&[u8]) -> bool;

pub const BODIES: &[(&str, BodyCheck, BodyParses)] = {
    use palisade::operator as o;
    use palisade::visitor as v;
    &[
        (
            "visitor/chats",
            redacted::<v::StartChat>,
            parses::<v::StartChat>,
        ),
        (
            "visitor/messages",
            redacted::<v::MessageBody>,
            parses::<v::MessageBody>,
        ),
        (
            "visitor/typing",
            plain::<v::TypingBody>,
            parses::<v::TypingBody>,
        ),
        (
            "operator/login",
            redacted::<o::LoginBody>,
            parses::<o::LoginBody>,
        ),
        ("visitor/read", plain::<v::ReadBody>, parses::<v::ReadBody>),
        (
            "visitor/hello+pageview",
            redacted::<v::PageBody>,
            parses::<v::PageBody>,
        ),
        (
            "visitor/invite",
            plain::<v::InviteAnswer>,
            parses::<v::InviteAnswer>,
        ),
        (
            "visitor/offline-message",
            redacted::<v::OfflineBody>,
            parses::<v::OfflineBody>,
        ),
        (
            "visitor/rating",
            redacted::<v::RatingBody>,
            parses::<v::RatingBody>,
        ),
        (
            "operator/presence",
            plain::<o::PresenceBody>,
            parses::<o::PresenceBody>,
        ),
        (
            "operator/transfer",
            redacted::<o::TransferBody>,
            parses::<o::TransferBody>,
        ),
        (
            "operator/wrapup",
            redacted::<o::WrapupBody>,
            parses::<o::WrapupBody>,
        ),
        (
            "operator/monitor",
            plain::<o::MonitorBody>,
            parses::<o::MonitorBody>,
        ),
        (
            "operator/invite",
            redacted::<o::InviteBody>,
            parses::<o::InviteBody>,
        ),
        (
            "operator/canned",
            redacted::<o::CannedBody>,
            parses::<o::CannedBody>,
        ),
        (
            "operator/totp-confirm",
            redacted::<o::ConfirmBody>,
            parses::<o::ConfirmBody>,
        ),
    ]
};

/// Parse an API body as the handlers do (`http::parse_body`), for every body type (the
/// first byte picks which): never panics; only a JSON object parses; an unknown field is
/// refused whatever else the object holds; `Debug` shows no field value; and the bodies
/// with extra invariants keep them.
pub fn check_api_body(kind: u8, data: &[u8]) {
    let (_, property, _) = BODIES[usize::from(kind) % BODIES.len()];
    property(data);
    match usize::from(kind) % BODIES.len() {
        0 => start_chat(data),
        1 => message(data),
        2 => typing(data),
        3 => login(data),
        _ => {}
    }
}

fn parses<T: serde::de::DeserializeOwned>(data: &[u8]) -> bool {
    palisade::http::parse_body::<T>(data).is_ok()
}

/// The property every body type keeps; the parsed body and its JSON object when it parses.
fn body<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<(T, serde_json::Value)> {
    let b = palisade::http::parse_body::<T>(data).ok()?;
    let v: serde_json::Value = serde_json::from_slice(data).expect("parsed, so JSON");
    let mut extended = v.clone();
    let o = extended.as_object_mut().expect("only an object parses");
    o.insert("x-unknown".into(), true.into());
    let again = palisade::http::parse_body::<T>(extended.to_string().as_bytes());
    assert!(
        again.as_ref().is_err_and(|e| e.contains("unknown field")),
        "an unknown field was accepted"
    );
    Some((b, v))
}

/// A body without visitor data or a secret: the common property only.
fn plain<T: serde::de::DeserializeOwned>(data: &[u8]) {
    body::<T>(data);
}

/// A body carrying visitor data or a secret: `Debug` does not depend on what the strings
/// say (at most on their lengths), so no value can reach a log through it.
fn redacted<T: serde::de::DeserializeOwned + std::fmt::Debug>(data: &[u8]) {
    let Some((b, mut v)) = body::<T>(data) else {
        return;
    };
    for x in v.as_object_mut().expect("an object").values_mut() {
        if let Some(s) = x.as_str() {
            *x = "#".repeat(s.chars().count()).into();
        }
    }
    let masked = palisade::http::parse_body::<T>(v.to_string().as_bytes())
        .expect("the same object with other strings of the same lengths");
    assert_eq!(
        format!("{b:?}"),
        format!("{masked:?}"),
        "Debug shows a value"
    );
}

fn start_chat(data: &[u8]) {
    use palisade::visitor::{clean_field, StartChat};
    if let Ok(b) = palisade::http::parse_body::<StartChat>(data) {
        for (v, max, required) in [
            (&b.name, 200, true),
            (&b.email, 254, false),
            (&b.question, 500, true),
        ] {
            if let Ok(clean) = clean_field(v, max, "field", required) {
                assert_eq!(clean.trim(), clean, "not trimmed");
                assert!(clean.chars().count() <= max, "too long");
                assert!(!required || !clean.is_empty(), "required but empty");
                assert!(
                    clean
                        .chars()
                        .all(|c| !c.is_control() || c == '\n' || c == '\t'),
                    "control character kept"
                );
            }
        }
    }
}

fn message(data: &[u8]) {
    use palisade::visitor::MessageBody;
    if let Ok(b) = palisade::http::parse_body::<MessageBody>(data) {
        let again: MessageBody =
            serde_json::from_value(serde_json::json!({"text": b.text})).unwrap();
        assert_eq!(again.text, b.text);
        assert_eq!(
            format!("{b:?}"),
            format!("MessageBody([{} chars redacted])", b.text.chars().count())
        );
    }
}

fn typing(data: &[u8]) {
    use palisade::visitor::TypingBody;
    if let Ok(b) = palisade::http::parse_body::<TypingBody>(data) {
        let v: serde_json::Value = serde_json::from_slice(data).unwrap();
        assert_eq!(v["typing"].as_bool(), Some(b.typing));
    }
}

fn login(data: &[u8]) {
    use palisade::operator::LoginBody;
    if let Ok(b) = palisade::http::parse_body::<LoginBody>(data) {
        let v: serde_json::Value = serde_json::from_slice(data).unwrap();
        assert_eq!(v["password"].as_str(), Some(b.password.expose()));
        assert_eq!(format!("{b:?}"), "LoginBody([redacted])");
    }
}

/// The event-stream resume id: exactly 1–18 ASCII digits, read as their decimal value.
pub fn check_event_id(data: &[u8]) {
    let got = palisade::http::parse_event_id(data);
    let well_formed = (1..=18).contains(&data.len()) && data.iter().all(u8::is_ascii_digit);
    assert_eq!(got.is_some(), well_formed, "{data:?} -> {got:?}");
    if let Some(n) = got {
        let mut v: i64 = 0;
        for d in data {
            v = v * 10 + i64::from(d - b'0');
        }
        assert_eq!(n, v);
    }
}

/// An event-stream frame, read back by a parser that follows the WHATWG rules, is one
/// event with the given name, id and data (line breaks normalised to \n).
pub fn check_sse_frame(id: Option<i64>, data: &str) {
    let frame = palisade::http::sse_frame("message", id, data);
    let text = std::str::from_utf8(&frame).expect("utf-8 frame");
    let mut events = vec![];
    let (mut ev_data, mut ev_name, mut ev_id, mut has_data): (
        Vec<String>,
        String,
        Option<String>,
        bool,
    ) = (vec![], String::new(), None, false);
    // Lines end at \r\n, \r or \n.
    let normal = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in normal.split('\n') {
        if line.is_empty() {
            if has_data {
                events.push((ev_name.clone(), ev_id.clone(), ev_data.join("\n")));
            }
            ev_data.clear();
            ev_name.clear();
            has_data = false;
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                ev_data.push(value.to_string());
                has_data = true;
            }
            "event" => ev_name = value.to_string(),
            "id" => ev_id = Some(value.to_string()),
            _ => {}
        }
    }
    let want = data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(events.len(), 1, "{text:?} is {} events", events.len());
    assert_eq!(events[0].0, "message", "{text:?}");
    assert_eq!(events[0].1, id.map(|i| i.to_string()), "{text:?}");
    assert_eq!(events[0].2, want, "{text:?}");
}

/// A network as raw parts: (is IPv6, address bits, prefix length).
pub fn net_of(v6: bool, bits: u128, prefix: u8) -> IpNet {
    if v6 {
        IpNet::V6(
            ipnet::Ipv6Net::new(Ipv6Addr::from(bits), prefix % 129)
                .unwrap()
                .trunc(),
        )
    } else {
        IpNet::V4(
            ipnet::Ipv4Net::new(Ipv4Addr::from(bits as u32), prefix % 33)
                .unwrap()
                .trunc(),
        )
    }
}

/// The most literal reference there is: compare the leading bits as strings of 0 and 1,
/// after reading `::ffff:a.b.c.d` as the IPv4 address it maps.
pub fn reference_admits(nets: &[IpNet], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(a) => {
            let bits = format!("{:0128b}", u128::from(a));
            if bits.starts_with(&format!("{}{}", "0".repeat(80), "1".repeat(16))) {
                IpAddr::V4(Ipv4Addr::from(u128::from(a) as u32))
            } else {
                IpAddr::V6(a)
            }
        }
        v4 => v4,
    };
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(a) => format!("4{:032b}", u32::from(a)),
        IpAddr::V6(a) => format!("6{:0128b}", u128::from(a)),
    };
    let p = bits(peer);
    nets.iter().any(|n| {
        let nb = bits(n.network());
        let len = 1 + n.prefix_len() as usize;
        nb[..1] == p[..1] && nb[..len] == p[..len]
    })
}

/// The allowlist decides exactly as both references, for any nets and any peer.
pub fn check_allowlist(nets: &[IpNet], peer: IpAddr) {
    let fast = Allowlist::new(nets.to_vec()).admit(SocketAddr::new(peer, 1));
    let r1 = naive_admits(nets, peer);
    let r2 = reference_admits(nets, peer);
    assert_eq!(
        fast.is_ok(),
        r2,
        "allowlist vs bit-string reference: {nets:?} {peer}"
    );
    assert_eq!(
        r1, r2,
        "naive_admits vs bit-string reference: {nets:?} {peer}"
    );
    if let Ok(a) = fast {
        assert_eq!(a.ip(), peer.to_canonical());
    }
}
