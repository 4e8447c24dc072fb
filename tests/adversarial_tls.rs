//! Adversarial suite, category 2: TLS on both listeners.
//!
//! A real scanner (sslyze, installed by `scripts/adversarial` into a virtualenv; its path in
//! `PALISADE_SSLYZE`) lists what each listener offers; raw probes (SSLv2, SSLv3, TLS 1.0/1.1,
//! non-AEAD suites) must be refused; garbage, truncated and oversized hellos and plain HTTP
//! must leave the daemon serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

const CASE: Duration = Duration::from_secs(180);
const T: Duration = Duration::from_secs(5);

fn sslyze() -> String {
    std::env::var("PALISADE_SSLYZE").unwrap_or_else(|_| "target/adversarial/venv/bin/sslyze".into())
}

/// What a listener offers: each accepted protocol with its accepted suites.
type Offered = Vec<(String, Vec<String>)>;

/// Scan one listener; returns (accepted protocol → accepted suites, the whole result).
fn scan(target: std::net::SocketAddr, out: &std::path::Path) -> Result<(Offered, Value), String> {
    let status = std::process::Command::new(sslyze())
        .args([
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--compression",
            "--heartbleed",
            "--openssl_ccs",
            "--reneg",
            "--robot",
            "--quiet",
        ])
        .arg(format!("--json_out={}", out.display()))
        .arg(target.to_string())
        .output()
        .map_err(|e| format!("cannot run sslyze ({}): {e}", sslyze()))?;
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap_or_default())
        .map_err(|e| {
            format!(
                "sslyze wrote no JSON ({e}): {}",
                String::from_utf8_lossy(&status.stderr)
            )
        })?;
    let r = &json["server_scan_results"][0];
    if r["scan_status"] != "COMPLETED" {
        return Err(format!(
            "sslyze could not scan {target}: {}",
            r["connectivity_error_trace"]
        ));
    }
    let sr = &r["scan_result"];
    let mut protocols = vec![];
    for (key, name) in [
        ("ssl_2_0_cipher_suites", "SSLv2"),
        ("ssl_3_0_cipher_suites", "SSLv3"),
        ("tls_1_0_cipher_suites", "TLSv1.0"),
        ("tls_1_1_cipher_suites", "TLSv1.1"),
        ("tls_1_2_cipher_suites", "TLSv1.2"),
        ("tls_1_3_cipher_suites", "TLSv1.3"),
    ] {
        let res = &sr[key];
        if res["status"] != "COMPLETED" {
            return Err(format!("sslyze {key}: {}", res["error_reason"]));
        }
        if res["result"]["is_tls_version_supported"] == true {
            let suites = res["result"]["accepted_cipher_suites"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["cipher_suite"]["name"].as_str().unwrap().to_string())
                .collect();
            protocols.push((name.to_string(), suites));
        }
    }
    Ok((protocols, sr.clone()))
}

fn aead(suite: &str) -> bool {
    suite.contains("_GCM_")
        || suite.contains("CHACHA20_POLY1305")
        || suite.ends_with("_CCM")
        || suite.contains("_CCM_")
}

/// The scanner's verdicts on the classic weaknesses.
fn weaknesses(sr: &Value) -> Vec<String> {
    let mut w = vec![];
    if sr["tls_compression"]["result"]["supports_compression"] != false {
        w.push("compression".into());
    }
    if sr["heartbleed"]["result"]["is_vulnerable_to_heartbleed"] != false {
        w.push("heartbleed".into());
    }
    if sr["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"] != false {
        w.push("ccs-injection".into());
    }
    let reneg = &sr["session_renegotiation"]["result"];
    if reneg["is_vulnerable_to_client_renegotiation_dos"] != false {
        w.push("client-renegotiation".into());
    }
    let robot = sr["robot"]["result"]["robot_result"]
        .as_str()
        .unwrap_or("?");
    if !robot.starts_with("NOT_VULNERABLE") {
        w.push(format!("robot={robot}"));
    }
    w
}

fn summary(p: &[(String, Vec<String>)]) -> String {
    p.iter()
        .map(|(v, s)| format!("{v}:{}", s.len()))
        .collect::<Vec<_>>()
        .join(",")
}

async fn scan_visitor(min: &str) -> Result<String, String> {
    let l = Layout::new();
    l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.1/32"]);
    l.set_policy("tls.toml", "visitor", "min_version", &format!("{min:?}"));
    let d = l.serve(&[])?;
    let out = l.scratch("scan").join("visitor.json");
    let (protocols, sr) = tokio::task::spawn_blocking(move || scan(d.v(), &out).map(|r| (r, d)))
        .await
        .unwrap()
        .map(|(r, _d)| r)?;
    let want: &[&str] = if min == "1.3" {
        &["TLSv1.3"]
    } else {
        &["TLSv1.2", "TLSv1.3"]
    };
    let got: Vec<&str> = protocols.iter().map(|(v, _)| v.as_str()).collect();
    ensure(got == want, || {
        format!("visitor offers {got:?}, policy min_version {min} allows {want:?}")
    })?;
    let mut total = 0;
    for (v, suites) in &protocols {
        for s in suites {
            total += 1;
            ensure(aead(s), || {
                format!("visitor accepts non-AEAD suite {s} over {v}")
            })?;
        }
    }
    let w = weaknesses(&sr);
    ensure(w.is_empty(), || format!("visitor weaknesses: {w:?}"))?;
    Ok(format!(
        "protocols={} suites={total} aead={total} weaknesses=0",
        summary(&protocols)
    ))
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn scan_visitor_min_12() {
    case("tls/scan-visitor", CASE, scan_visitor("1.2")).await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn scan_visitor_min_13() {
    case("tls/scan-visitor-min13", CASE, scan_visitor("1.3")).await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn scan_operator() {
    case("tls/scan-operator", CASE, async {
        let l = Layout::new();
        l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.1/32"]);
        let d = l.serve(&[])?;
        let out = l.scratch("scan").join("operator.json");
        let (protocols, sr) =
            tokio::task::spawn_blocking(move || scan(d.o(), &out).map(|r| (r, d)))
                .await
                .unwrap()
                .map(|(r, _d)| r)?;
        let want = vec![(
            "TLSv1.3".to_string(),
            vec!["TLS_AES_256_GCM_SHA384".to_string()],
        )];
        ensure(protocols == want, || {
            format!("operator offers {protocols:?}, want exactly {want:?}")
        })?;
        let w = weaknesses(&sr);
        ensure(w.is_empty(), || format!("operator weaknesses: {w:?}"))?;
        Ok("protocols=TLSv1.3 suites=TLS_AES_256_GCM_SHA384 weaknesses=0".into())
    })
    .await;
}

/// An SSLv2-format CLIENT-HELLO with the classic SSLv2/export cipher specs.
fn sslv2_hello() -> Vec<u8> {
    let specs: [[u8; 3]; 7] = [
        [0x07, 0x00, 0xc0],
        [0x05, 0x00, 0x80],
        [0x03, 0x00, 0x80],
        [0x01, 0x00, 0x80],
        [0x06, 0x00, 0x40],
        [0x04, 0x00, 0x80],
        [0x02, 0x00, 0x80],
    ];
    let mut b = vec![
        0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    for s in specs {
        b.extend(s);
    }
    b.extend([0x5a; 16]);
    b
}

const LEGACY_SUITES: &[u16] = &[0x002f, 0x0035, 0x000a, 0xc009, 0xc013, 0x0005, 0x0004];
const CBC_SUITES_12: &[u16] = &[
    0xc023, 0xc024, 0xc009, 0xc00a, 0x003c, 0x002f, 0x0035, 0x000a,
];
const NULL_EXPORT_RC4: &[u16] = &[0x0000, 0x0001, 0x0002, 0x0003, 0x0005, 0xc006, 0xc007];

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn legacy_probes() {
    case("tls/legacy-probes", CASE, async {
        let l = Layout::new();
        l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.1/32"]);
        let d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let probes: Vec<(&str, Vec<u8>)> = vec![
            ("sslv2", sslv2_hello()),
            ("sslv3", client_hello(0x0300, 0x0300, LEGACY_SUITES, false)),
            ("tls1.0", client_hello(0x0301, 0x0301, LEGACY_SUITES, true)),
            ("tls1.1", client_hello(0x0301, 0x0302, LEGACY_SUITES, true)),
            (
                "tls1.2-cbc-only",
                client_hello(0x0301, 0x0303, CBC_SUITES_12, true),
            ),
            (
                "tls1.2-null-export-rc4",
                client_hello(0x0301, 0x0303, NULL_EXPORT_RC4, true),
            ),
        ];
        let mut answers = vec![];
        for (name, bytes) in &probes {
            for (side, c) in [("visitor", &v), ("operator", &o)] {
                let a = probe(c, bytes, T).await?;
                ensure(
                    matches!(a, ProbeAnswer::Alert(_) | ProbeAnswer::Silent),
                    || format!("{side} answered a {name} hello with {a:?}"),
                )?;
                answers.push(format!("{side}/{name}={a:?}"));
            }
        }
        // The operator side refuses TLS 1.2 even with an AEAD suite...
        let aead12 = client_hello(0x0301, 0x0303, &[0xc02b, 0xc02c], true);
        let a = probe(&o, &aead12, T).await?;
        ensure(
            matches!(a, ProbeAnswer::Alert(_) | ProbeAnswer::Silent),
            || format!("operator answered a TLS 1.2 AEAD hello with {a:?}"),
        )?;
        // ...while the same probe is accepted by the visitor side (policy minimum 1.2):
        // the probes are real hellos, so a refusal above means something.
        let control = probe(&v, &aead12, T).await?;
        ensure(control == ProbeAnswer::Handshake, || {
            format!("control: the visitor side should accept a TLS 1.2 AEAD hello, got {control:?}")
        })?;
        let ok = v.get("/widget.js", &[]).await?;
        ensure(ok.status == 200, || {
            format!("after the probes /widget.js {}", ok.status)
        })?;
        Ok(format!(
            "probes={} refused={} operator_tls12_aead=refused visitor_tls12_aead_control=accepted",
            probes.len() * 2 + 1,
            probes.len() * 2 + 1
        ))
    })
    .await;
}

/// Bytes that are not a usable ClientHello, each with the longest the daemon may take to
/// close the connection.
fn malformed() -> Vec<(&'static str, Vec<u8>, Duration)> {
    use rand::RngCore;
    let quick = Duration::from_secs(3);
    // The handshake timeout is 10 s; a client that stops half-way is cut off then.
    let stalled = Duration::from_secs(13);
    let mut garbage = vec![0u8; 1024];
    rand::rngs::OsRng.fill_bytes(&mut garbage);
    garbage[0] = 0x16; // looks like a handshake record at first glance
    let good = client_hello(0x0301, 0x0303, &[0x1302, 0x1301], true);
    let truncated = good[..good.len() / 2].to_vec();
    let mut oversized_record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    oversized_record.extend(vec![0x41; 65535]);
    // A ClientHello claiming 16 MiB, sent as many full-size records.
    let mut huge = Vec::new();
    let mut first = vec![0x01, 0xff, 0xff, 0xff, 0x03, 0x03];
    first.extend(vec![0x42; 16384 - first.len()]);
    for i in 0..16 {
        let chunk = if i == 0 {
            first.clone()
        } else {
            vec![0x42; 16384]
        };
        huge.extend([0x16, 0x03, 0x03, 0x40, 0x00]);
        huge.extend(chunk);
    }
    let mut bad_lengths = good.clone();
    bad_lengths[9] = 0x7f; // handshake length far beyond the record
    vec![
        ("garbage", garbage, quick),
        (
            "zero-length-record",
            vec![0x16, 0x03, 0x01, 0x00, 0x00],
            quick,
        ),
        ("bad-inner-length", bad_lengths, quick),
        ("oversized-record", oversized_record, quick),
        ("oversized-hello-16MiB", huge, quick),
        (
            "sslv2-framed-garbage",
            vec![0x80, 0xff, 0x01, 0x03, 0x03, 0, 0, 0, 0],
            quick,
        ),
        ("truncated", truncated, stalled),
        ("nothing", vec![], stalled),
    ]
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn malformed_hellos() {
    case("tls/malformed-hellos", CASE, async {
        let l = Layout::new();
        l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.1/32"]);
        let mut d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let session = l.login(&o).await?;
        // Healthy traffic all along: a visitor chat and operator requests.
        let (_, token) = try_start_chat(&v, "Healthy", "still served?").await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let healthy = {
            let (v, o, stop, token, session) = (v.clone(), o.clone(), stop.clone(), token.clone(), session.clone());
            tokio::spawn(async move {
                let mut lat = vec![];
                let mut failures = vec![];
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2000 {
                    i += 1;
                    let t0 = Instant::now();
                    let r = v
                        .post_json("/api/v1/visitor/messages", &serde_json::json!({"text": format!("m{i}")}), &[bearer(&token)])
                        .await;
                    match r {
                        Ok(r) if r.status == 200 => lat.push(t0.elapsed().as_secs_f64() * 1000.0),
                        Ok(r) if r.status == 429 => {}
                        other => failures.push(format!("visitor: {other:?}")),
                    }
                    match o.get("/api/v1/operator/me", &[cookie(&session)]).await {
                        Ok(r) if r.status == 200 => {}
                        other => failures.push(format!("operator: {other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (lat, failures)
            })
        };
        let mut closes = vec![];
        let mut attacks = vec![];
        for (name, bytes, limit) in malformed() {
            for (side, c) in [("visitor", v.clone()), ("operator", o.clone())] {
                let bytes = bytes.clone();
                attacks.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let a = probe(&c, &bytes, limit).await;
                    (name, side, a, t0.elapsed(), limit)
                }));
            }
        }
        // And a burst of garbage connections at once on the visitor side.
        for _ in 0..300 {
            let c = v.clone();
            attacks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let a = probe(&c, b"\x16\x03\x01\x00\x05hello garbage", Duration::from_secs(3)).await;
                ("burst-garbage", "visitor", a, t0.elapsed(), Duration::from_secs(3))
            }));
        }
        let mut worst_quick = Duration::ZERO;
        let mut worst_stalled = Duration::ZERO;
        for a in attacks {
            let (name, side, answer, took, limit) = a.await.unwrap();
            let answer = answer?;
            ensure(matches!(answer, ProbeAnswer::Alert(_) | ProbeAnswer::Silent), || {
                format!("{side} {name}: {answer:?} after {took:?} (must be closed within {limit:?})")
            })?;
            if limit > Duration::from_secs(5) {
                worst_stalled = worst_stalled.max(took);
            } else {
                worst_quick = worst_quick.max(took);
            }
            closes.push(took);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (lat, failures) = healthy.await.unwrap();
        ensure(failures.is_empty(), || format!("healthy traffic failed: {:?}", &failures[..failures.len().min(3)]))?;
        ensure(d.alive(), || "the daemon died".into())?;
        let p95 = percentile(&lat, 95.0);
        ensure(p95 < 1000.0, || format!("healthy visitor p95 {p95:.0} ms during the attack"))?;
        Ok(format!(
            "variants={} connections={} worst_close_ms={} stalled_cut_s={:.1} healthy_msgs={} healthy_p95_ms={p95:.0}",
            malformed().len() * 2,
            closes.len(),
            worst_quick.as_millis(),
            worst_stalled.as_secs_f64(),
            lat.len()
        ))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn plain_http() {
    case("tls/plain-http", CASE, async {
        let l = Layout::new();
        l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.1/32"]);
        let mut d = l.serve(&[])?;
        let (v, o) = (l.visitor_client(d.v()), l.operator_client(d.o()));
        let mut worst = Duration::ZERO;
        let requests: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /api/v1/operator/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            b"GET / HTTP/1.0\r\n\r\n",
        ];
        let mut answers = vec![];
        for req in requests {
            for (side, c) in [("visitor", &v), ("operator", &o)] {
                let t0 = Instant::now();
                let a = probe(c, req, T).await?;
                let took = t0.elapsed();
                ensure(
                    matches!(a, ProbeAnswer::Alert(_) | ProbeAnswer::Silent),
                    || format!("{side}: plain HTTP got {a:?} after {took:?}"),
                )?;
                worst = worst.max(took);
                answers.push(format!("{a:?}"));
            }
        }
        answers.dedup();
        let ok = v.get("/widget.js", &[]).await?;
        ensure(ok.status == 200 && d.alive(), || {
            "daemon no longer serves".into()
        })?;
        ensure(o.get("/", &[]).await?.status == 200, || {
            "operator console no longer served".into()
        })?;
        Ok(format!(
            "requests=6 http_answers=0 answers={} worst_close_ms={}",
            answers.join("/"),
            worst.as_millis()
        ))
    })
    .await;
}
