//! `palisade demo`: everything a first look needs, on loopback only.
//!
//! Generates a throwaway CA and certificates (with backup pins), a policy that admits only
//! loopback operators, a data key, an authentication string and a demo operator; binds the
//! visitor, operator and demo-page listeners on free loopback ports; starts the daemon; and
//! writes `DIR/demo.json` once all listeners accept connections.

use crate::app;
use crate::audit::ids;
use crate::http::{content, error, secure_headers, Resp};
use crate::policy::Config;
use crate::sandbox::{ensure_private_dir, write_private};
use crate::secret::Secret;
use crate::tls::pin_of_spki;
use hyper::{Method, StatusCode};
use rand::RngCore;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

const MARKER: &str = ".palisade-demo";

fn random_secret(bytes: usize) -> String {
    use base64::Engine;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn prepare_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(format!(
                "{}: exists, is not empty and is not a demo directory; choose another --dir",
                dir.display()
            ));
        }
        for sub in ["policy", "certs", "secrets", "state", "rendered"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
    }
    ensure_private_dir(dir)?;
    write_private(&dir.join(MARKER), b"palisade demo directory\n")?;
    for sub in ["policy", "certs", "secrets", "state"] {
        ensure_private_dir(&dir.join(sub))?;
    }
    Ok(())
}

struct DemoCert {
    cert_pem: String,
    key_pem: String,
    pin: String,
    backup_pin: String,
}

/// Throwaway certificates are valid from yesterday for 30 days.
fn short_validity(p: &mut CertificateParams) {
    let now = super::explain::unix_now();
    let day = |offset: i64| {
        let (y, m, d, ..) = super::explain::civil(now + offset * 86_400);
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    p.not_before = day(-1);
    p.not_after = day(30);
}

fn issue(ca: &rcgen::Certificate, ca_key: &KeyPair, name: &str) -> Result<DemoCert, String> {
    let e = |e: rcgen::Error| format!("generating demo certificates: {e}");
    let key = KeyPair::generate().map_err(e)?;
    let mut p = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(e)?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    short_validity(&mut p);
    let cert = p.signed_by(&key, ca, ca_key).map_err(e)?;
    // A spare key whose pin goes into the policy as the backup pin (never served).
    let spare = KeyPair::generate().map_err(e)?;
    Ok(DemoCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        pin: pin_of_spki(&key.public_key_der()),
        backup_pin: pin_of_spki(&spare.public_key_der()),
    })
}

fn write_public(path: &Path, data: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Render the demo policy from the shipped default policy, with the demo's addresses.
fn write_policy(
    dir: &Path,
    visitor: SocketAddr,
    operator: SocketAddr,
    demo_origin: &str,
    v: &DemoCert,
    o: &DemoCert,
) -> Result<(), String> {
    let p = dir.join("policy");
    write_public(
        &p.join("network.toml"),
        &format!(
            "# Demo network policy: loopback only.\n\n[visitor]\n# Addresses of the visitor listener.\nlisten = [\"{visitor}\"]\n\n[operator]\n# Address of the operator listener (never a wildcard, never the visitor address).\nlisten = [\"{operator}\"]\n# Source networks admitted to the operator listener.\nallow = [\"127.0.0.1/32\", \"::1/128\"]\n# Most operator connections at once.\nmax_connections = 256\n\n[proxies]\n# Proxies whose forwarding headers are believed: none.\ntrusted = []\n"
        ),
    )?;
    write_public(
        &p.join("tls.toml"),
        &format!(
            "# Demo TLS policy.\n\n[visitor]\ncertificate = \"../certs/visitor.pem\"\nkey = \"../certs/visitor.key\"\n# Served key's pin first, then the backup key's pin.\npins = {}\nmin_version = \"1.2\"\nsession_resumption = true\n\n[operator]\ncertificate = \"../certs/operator.pem\"\nkey = \"../certs/operator.key\"\npins = {}\n",
            toml_list(&[v.pin.clone(), v.backup_pin.clone()]),
            toml_list(&[o.pin.clone(), o.backup_pin.clone()]),
        ),
    )?;
    // The demo operator is an admin; TOTP enrolment stays optional in the demo.
    write_public(
        &p.join("accounts.toml"),
        &DEFAULT_ACCOUNTS.replace(
            "totp_required_roles = [\"supervisor\", \"admin\"]",
            "totp_required_roles = []",
        ),
    )?;
    write_public(&p.join("chat.toml"), DEFAULT_CHAT)?;
    write_public(
        &p.join("visitor.toml"),
        &format!(
            "# Demo visitor policy.\n\n# Origins allowed to embed the chat page: the demo page.\nframe_ancestors = [{demo_origin:?}]\nmax_body_bytes = 16384\nmax_message_chars = 4000\nmax_field_chars = 500\nmessages_per_minute = 120\nchats_per_hour_per_source = 1000\nmax_connections = 20000\n"
        ),
    )?;
    write_public(&p.join("retention.toml"), DEFAULT_RETENTION)?;
    Ok(())
}

/// The shipped default accounts policy (also used by the demo).
pub const DEFAULT_ACCOUNTS: &str = include_str!("../../policy/accounts.toml");
/// The shipped default retention policy (also used by the demo).
pub const DEFAULT_RETENTION: &str = include_str!("../../policy/retention.toml");
/// The shipped default chat policy (also used by the demo).
pub const DEFAULT_CHAT: &str = include_str!("../../policy/chat.toml");

pub async fn run(dir: Option<PathBuf>) -> Result<ExitCode, String> {
    crate::sandbox::harden_process()?;
    // As `serve` does: the visitor limit (max_connections) needs descriptors.
    crate::sandbox::raise_nofile();
    let signals = super::Signals::install()?;
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("palisade-demo-{}", std::process::id())),
    };
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(dir)
    };
    prepare_dir(&dir)?;

    // Listeners first, on free loopback ports, so the policy can name the real addresses.
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind loopback: {e}"))
    };
    let (vl, ol, dl) = (bind()?, bind()?, bind()?);
    for l in [&vl, &ol, &dl] {
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let (va, oa, da) = (
        vl.local_addr().map_err(|e| e.to_string())?,
        ol.local_addr().map_err(|e| e.to_string())?,
        dl.local_addr().map_err(|e| e.to_string())?,
    );
    let visitor_origin = format!("https://{va}");
    let operator_origin = format!("https://{oa}");
    let demo_origin = format!("https://{da}");

    let e = |e: rcgen::Error| format!("generating demo certificates: {e}");
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Palisade demo CA (throwaway)");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    short_validity(&mut ca_params);
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    let vc = issue(&ca, &ca_key, "Palisade demo visitor")?;
    let oc = issue(&ca, &ca_key, "Palisade demo operator")?;
    let certs = dir.join("certs");
    write_public(&certs.join("ca.pem"), &ca.pem())?;
    write_public(&certs.join("visitor.pem"), &vc.cert_pem)?;
    write_private(&certs.join("visitor.key"), vc.key_pem.as_bytes())?;
    write_public(&certs.join("operator.pem"), &oc.cert_pem)?;
    write_private(&certs.join("operator.key"), oc.key_pem.as_bytes())?;
    write_policy(&dir, va, oa, &demo_origin, &vc, &oc)?;

    let policy = crate::policy::load_policy(&dir.join("policy")).map_err(|e| e.to_string())?;
    crate::policy::render::write_all(
        &policy,
        Some(&dir.join("rendered/systemd")),
        Some(&dir.join("rendered/palisade.nft")),
    )?;
    let auth_string = Secret::new(random_secret(18));
    let password = Secret::new(random_secret(15));
    let secrets = dir.join("secrets");
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let key_hex: String = crate::policy::hex(&key);
    write_private(&secrets.join("data.key"), key_hex.as_bytes())?;
    let string_hash = crate::operator::auth::hash_secret(&policy.accounts.argon2, &auth_string)?;
    write_private(
        &secrets.join("auth-string.hash"),
        format!("{string_hash}\n").as_bytes(),
    )?;
    let config_path = dir.join("config.toml");
    write_private(
        &config_path,
        b"# Demo daemon configuration: where things are.\npolicy_dir = \"policy\"\nstate_dir = \"state\"\ndata_key = \"secrets/data.key\"\nauth_string_hash = \"secrets/auth-string.hash\"\n# Where the policy's rendered socket units and firewall rules are (compared by check).\nrendered_systemd_dir = \"rendered/systemd\"\nrendered_nftables = \"rendered/palisade.nft\"\n",
    )?;

    let cfg = Config::load(&config_path)?;
    let verified = app::verify(&cfg).map_err(|e| e.to_string())?;
    let mut activated = HashMap::new();
    activated.insert("visitor".to_string(), vec![vl]);
    activated.insert("operator".to_string(), vec![ol]);
    let running = app::start(&cfg, verified, activated)
        .await
        .map_err(|e| e.to_string())?;
    let pw_hash = crate::operator::auth::hash_secret(&policy.accounts.argon2, &password)?;
    running
        .app
        .storage
        .add_operator(
            "demo".into(),
            "Demo Operator".into(),
            pw_hash,
            "admin".into(),
            Vec::new(),
        )
        .await
        .map_err(|e| e.0)?;

    // The demo customer page, on its own origin, with the visitor certificate.
    let page_tls = crate::tls::visitor_server_config(
        &crate::tls::load_pinned(
            &certs.join("visitor.pem"),
            &certs.join("visitor.key"),
            std::slice::from_ref(&vc.pin),
        )
        .map_err(|e| e.to_string())?,
        "1.2",
        true,
    )?;
    let page = Arc::new(
        crate::assets::get("demo-page.html").replace("{{VISITOR_ORIGIN}}", &visitor_origin),
    );
    let page_csp = Arc::new(format!(
        "default-src 'none'; script-src {visitor_origin}; frame-src {visitor_origin}; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ));
    let dl = tokio::net::TcpListener::from_std(dl).map_err(|e| e.to_string())?;
    tokio::spawn(serve_demo_page(
        dl,
        tokio_rustls::TlsAcceptor::from(page_tls),
        page,
        page_csp,
    ));

    let info = serde_json::json!({
        "visitor_url": format!("{visitor_origin}/"),
        "operator_url": format!("{operator_origin}/"),
        "demo_page_url": format!("{demo_origin}/"),
        "operator_user": "demo",
        "operator_password": password.expose(),
        "auth_string": auth_string.expose(),
        "visitor_pin": vc.pin,
        "operator_pin": oc.pin,
        "ca_certificate": certs.join("ca.pem"),
        "config": config_path,
        "policy_dir": dir.join("policy"),
        "state_dir": dir.join("state"),
        "pid": std::process::id(),
    });
    let tmp = dir.join("demo.json.tmp");
    write_private(
        &tmp,
        serde_json::to_string_pretty(&info)
            .map_err(|e| e.to_string())?
            .as_bytes(),
    )?;
    std::fs::rename(&tmp, dir.join("demo.json")).map_err(|e| e.to_string())?;
    running
        .app
        .audit
        .record(
            ids::DAEMON_READY,
            "daemon_ready",
            format!("demo visitor={va} operator={oa}"),
        )
        .await;
    println!("Palisade demo is running (loopback only). Press Ctrl-C to stop.\n");
    println!("  Demo customer page:  {demo_origin}/");
    println!("  Operator console:    {operator_origin}/");
    println!("  Visitor endpoint:    {visitor_origin}/widget.js\n");
    println!("  Operator user:       demo");
    println!("  Password:            {}", password.expose());
    println!("  Authentication str.: {}\n", auth_string.expose());
    println!(
        "  Certificates are throwaway ones from a demo CA: {}",
        certs.join("ca.pem").display()
    );
    println!(
        "  Visitor pin:  {}",
        info["visitor_pin"].as_str().unwrap_or("")
    );
    println!(
        "  Operator pin: {}",
        info["operator_pin"].as_str().unwrap_or("")
    );
    println!(
        "  Everything (credentials too) is in {}",
        dir.join("demo.json").display()
    );
    signals.run_until_stopped(&running.app).await;
    running.shutdown("signal").await;
    Ok(ExitCode::SUCCESS)
}

async fn serve_demo_page(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    page: Arc<String>,
    csp: Arc<String>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, page, csp) = (acceptor.clone(), page.clone(), csp.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(crate::http::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (page, csp) = (page.clone(), csp.clone());
                    async move {
                        let mut r: Resp = match (req.method(), req.uri().path()) {
                            (&Method::GET, "/") => content(
                                StatusCode::OK,
                                "text/html; charset=utf-8",
                                page.as_bytes().to_vec(),
                            ),
                            _ => error(StatusCode::NOT_FOUND, "not found"),
                        };
                        secure_headers(&mut r, &csp);
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            crate::http::serve_connection(tls, svc).await;
        });
    }
}
