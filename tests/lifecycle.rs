//! Policy reload, the audit chain, retention, erasure, backup and the auditor report —
//! against the real binary and a real database.
#![allow(clippy::unwrap_used)]

mod support;

use nix::sys::signal::Signal;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(15);

fn laid_out_demo() -> Demo {
    let mut demo = Demo::start();
    demo.stop();
    demo
}

fn policy_file(demo: &Demo, f: &str) -> PathBuf {
    PathBuf::from(demo.s("policy_dir")).join(f)
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let s = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(s)).unwrap();
}

fn db(demo: &Demo) -> rusqlite::Connection {
    rusqlite::Connection::open(Path::new(&demo.s("state_dir")).join("palisade.db")).unwrap()
}

fn cfg(demo: &Demo) -> String {
    demo.s("config")
}

#[tokio::test]
async fn sighup_keeps_the_old_config_on_bad_input_and_applies_a_good_one_without_dropping_chats() {
    let demo = laid_out_demo();
    let serve = Serve::start(&demo.config(), demo.addr("visitor_url")).unwrap();
    let (v, o) = (demo.visitor(), demo.operator());
    let session = demo.login(&o).await;
    let _online = demo.operator_online().await;
    let (chat, token) = start_chat(&v, "Reload Rita", "still here?").await;
    let accepted = o
        .post_json(
            &format!("/api/v1/operator/chats/{chat}/accept"),
            &json!({}),
            &[cookie(&session)],
        )
        .await
        .unwrap();
    assert_eq!(accepted.status, 200);
    let mut visitor_stream = v
        .events("/api/v1/visitor/events", &[bearer(&token)])
        .await
        .unwrap();
    let mut operator_stream = o
        .events("/api/v1/operator/events", &[cookie(&session)])
        .await
        .unwrap();
    operator_stream.until("snapshot", T).await.unwrap();
    let demo_origin = demo.s("demo_page_url").trim_end_matches('/').to_string();
    let csp = || async {
        v.get("/chat", &[])
            .await
            .unwrap()
            .header("content-security-policy")
            .unwrap()
    };
    assert!(csp().await.contains(&demo_origin));

    // 1. A policy with an unknown key: refused, old policy keeps serving.
    let network = policy_file(&demo, "network.toml");
    let good_network = std::fs::read_to_string(&network).unwrap();
    edit(&network, |s| {
        s.replace(
            "max_connections = 256",
            "max_connections = 256\nbacklog = 5",
        )
    });
    serve.signal(Signal::SIGHUP);
    serve.wait_log("reload refused", 1, T).unwrap();
    assert!(
        serve.log().contains("unknown field `backlog`"),
        "{}",
        serve.log()
    );
    assert!(csp().await.contains(&demo_origin));
    std::fs::write(&network, &good_network).unwrap();

    // 2. A certificate whose key is not pinned: refused, the old certificate keeps serving.
    let tls = policy_file(&demo, "tls.toml");
    let good_tls = std::fs::read_to_string(&tls).unwrap();
    edit(&tls, |s| {
        s.replacen(&format!("\"{}\", ", demo.s("visitor_pin")), "", 1)
    });
    serve.signal(Signal::SIGHUP);
    serve.wait_log("reload refused", 2, T).unwrap();
    assert_eq!(
        v.get("/widget.js", &[]).await.unwrap().status,
        200,
        "old pinned key still served"
    );
    std::fs::write(&tls, &good_tls).unwrap();

    // 3. A good policy: new frame-ancestors and card masking apply; the chat goes on.
    edit(&policy_file(&demo, "visitor.toml"), |s| {
        s.replace(
            &format!("[{demo_origin:?}]"),
            "[\"https://shop.example.com\"]",
        ) + "mask_card_numbers = true\n"
    });
    let loaded_before = serve.log().matches("policy_loaded").count();
    serve.signal(Signal::SIGHUP);
    serve
        .wait_log("policy_loaded", loaded_before + 1, T)
        .unwrap();
    let now = csp().await;
    assert!(
        now.contains("frame-ancestors https://shop.example.com") && !now.contains(&demo_origin),
        "{now}"
    );
    let sent = v
        .post_json(
            "/api/v1/visitor/messages",
            &json!({"text": "my card is 4111 1111 1111 1111"}),
            &[bearer(&token)],
        )
        .await
        .unwrap();
    assert_eq!(sent.status, 200);
    let m = operator_stream
        .until("message", T)
        .await
        .expect("the established operator stream survives the reload");
    assert_eq!(m.data["text"], "my card is **** **** **** 1111");
    let m = visitor_stream
        .until("message", T)
        .await
        .expect("the established visitor stream survives the reload");
    assert_eq!(m.data["text"], "my card is **** **** **** 1111");
    assert_eq!(
        o.get("/api/v1/operator/me", &[cookie(&session)])
            .await
            .unwrap()
            .status,
        200,
        "sessions survive"
    );
    serve.stop();
}

#[test]
fn overrides_are_logged_at_every_start_and_fail_the_audit_report() {
    let demo = laid_out_demo();
    edit(&policy_file(&demo, "visitor.toml"), |s| {
        let origin = demo.s("demo_page_url").trim_end_matches('/').to_string();
        s.replace(&format!("[{origin:?}]"), "[\"*\"]")
            + "\n[overrides]\nframe_ancestors_any = true\n"
    });
    let serve = Serve::start(&demo.config(), demo.addr("visitor_url")).unwrap();
    serve.wait_log("policy_override", 1, T).unwrap();
    assert!(serve.log().contains("frame_ancestors_any"));
    serve.stop();
    let (code, out, _) = run(&["policy", "explain", "--config", &cfg(&demo)], None);
    assert_ne!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.contains("FAIL") && l.contains("OVR-01")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("FAIL") && l.contains("VIS-01")),
        "{out}"
    );
}

#[test]
fn explain_lists_every_check_with_a_stable_id_and_fails_on_any_fail() {
    let demo = laid_out_demo();
    let (code, out, err) = run(
        &["policy", "explain", "--config", &cfg(&demo), "--json"],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, palisade::cli::explain::CHECK_IDS);
    assert!(
        j["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "PASS"),
        "{out}"
    );
    assert_eq!(
        j["policy"]["network"]["operator"]["allow"],
        json!(["127.0.0.1/32", "::1/128"])
    );
    assert_eq!(j["ok"], true);

    // No backup pin, and an installed firewall file that drifted from the policy.
    let tls = policy_file(&demo, "tls.toml");
    let vp = demo.s("visitor_pin");
    edit(&tls, |s| {
        let line = s
            .lines()
            .find(|l| l.starts_with("pins = ") && l.contains(&vp))
            .unwrap()
            .to_string();
        s.replacen(&line, &format!("pins = [\"{vp}\"]"), 1)
    });
    let nft = PathBuf::from(demo.s("config"))
        .parent()
        .unwrap()
        .join("rendered/palisade.nft");
    edit(&nft, |s| s.replace("policy drop", "policy accept"));
    let (code, out, _) = run(&["policy", "explain", "--config", &cfg(&demo)], None);
    assert_ne!(code, 0);
    let fail = |id: &str| {
        out.lines()
            .any(|l| l.trim_start().starts_with("FAIL") && l.contains(id))
    };
    assert!(fail("TLS-02") && fail("SYS-02"), "{out}");
    assert!(!fail("TLS-01") && !fail("SYS-01"), "{out}");
    assert!(out.contains("Result: 19 PASS, 2 FAIL"), "{out}");
    // `check` refuses the drifted firewall too.
    let (code, _, err) = run(&["check", "--config", &cfg(&demo)], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("palisade.nft: differs from the policy"),
        "{err}"
    );
}

#[test]
fn policy_files_owned_by_someone_else_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root to chown; CI runs as root");
        return;
    }
    let demo = laid_out_demo();
    let f = policy_file(&demo, "network.toml");
    std::os::unix::fs::chown(&f, Some(4242), None).unwrap();
    let (code, _, err) = run(&["check", "--config", &cfg(&demo)], None);
    assert_ne!(code, 0);
    assert!(err.contains("network.toml: owned by uid 4242"), "{err}");
}

/// The chain as `audit verify` sees it: (exit code, output).
fn verify(demo: &Demo, head: Option<&str>) -> (i32, String) {
    let c = cfg(demo);
    let mut args = vec!["audit", "verify", "--config", &c];
    if let Some(h) = head {
        args.extend(["--head", h]);
    }
    let (code, out, err) = run(&args, None);
    (code, out + &err)
}

fn copy_state(demo: &Demo) -> tempfile::TempDir {
    let keep = tempfile::tempdir().unwrap();
    for f in ["palisade.db", "palisade.db-wal", "palisade.db-shm"] {
        let from = Path::new(&demo.s("state_dir")).join(f);
        if from.exists() {
            std::fs::copy(&from, keep.path().join(f)).unwrap();
        }
    }
    keep
}

fn restore_state(demo: &Demo, saved: &tempfile::TempDir) {
    for f in ["palisade.db", "palisade.db-wal", "palisade.db-shm"] {
        let to = Path::new(&demo.s("state_dir")).join(f);
        let _ = std::fs::remove_file(&to);
        let from = saved.path().join(f);
        if from.exists() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

#[test]
fn audit_chain_detects_changed_deleted_inserted_reordered_and_truncated_records() {
    let demo = laid_out_demo();
    let (code, out) = verify(&demo, None);
    assert_eq!(code, 0, "{out}");
    let head = out.trim().rsplit(' ').next().unwrap().to_string();
    let n: i64 = db(&demo)
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 5, "{n} audit records");
    assert!(
        demo.log().contains("audit_head: seq="),
        "the head goes to the journal"
    );
    let saved = copy_state(&demo);

    let cases: [(&str, &str, &str); 4] = [
        ("change", "UPDATE audit SET detail = detail || ' (edited)' WHERE seq = 3", "record 3 was changed"),
        ("delete", "DELETE FROM audit WHERE seq = 3", "record 4 follows record 2"),
        (
            "insert",
            "UPDATE audit SET seq = seq + 1000 WHERE seq >= 3; UPDATE audit SET seq = seq - 999 WHERE seq >= 1003; \
             INSERT INTO audit(seq, ts_ms, message_id, event, detail, prev_hash, hash) \
             SELECT 3, ts_ms, message_id, 'login_ok', 'user=mallory', hash, randomblob(32) FROM audit WHERE seq = 2",
            "record 3 was changed",
        ),
        (
            "reorder",
            "UPDATE audit SET seq = -1 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = -1",
            "record 3 does not link to record 2",
        ),
    ];
    for (name, sql, expect) in cases {
        restore_state(&demo, &saved);
        db(&demo).execute_batch(sql).unwrap();
        let (code, out) = verify(&demo, None);
        assert_ne!(code, 0, "{name}: tampering not detected");
        assert!(out.contains(expect), "{name}: {out}");
    }
    // Truncation keeps a consistent chain; the head recorded in the journal exposes it.
    restore_state(&demo, &saved);
    db(&demo)
        .execute_batch("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
        .unwrap();
    assert_eq!(verify(&demo, None).0, 0);
    let (code, out) = verify(&demo, Some(&head));
    assert_ne!(code, 0);
    assert!(out.contains("records were removed from the end"), "{out}");
    restore_state(&demo, &saved);
    assert_eq!(verify(&demo, Some(&head)).0, 0);
}

#[tokio::test]
async fn retention_erasure_and_backup_work_online() {
    let demo = laid_out_demo();
    let serve = Serve::start(&demo.config(), demo.addr("visitor_url")).unwrap();
    let v = demo.visitor();
    let _online = demo.operator_online().await;
    let (old_chat, old_token) = start_chat(&v, "Olga Oldchat", "old question").await;
    v.post_json(
        "/api/v1/visitor/messages",
        &json!({"text": "old-message-4c1e"}),
        &[bearer(&old_token)],
    )
    .await
    .unwrap();
    assert_eq!(
        v.post_json("/api/v1/visitor/end", &json!({}), &[bearer(&old_token)])
            .await
            .unwrap()
            .status,
        200
    );
    let (gone_chat, gone_token) = start_chat(&v, "Erin Erasable", "erase me").await;
    v.post_json(
        "/api/v1/visitor/messages",
        &json!({"text": "erase-message-9d2f"}),
        &[bearer(&gone_token)],
    )
    .await
    .unwrap();
    let (live_chat, live_token) = start_chat(&v, "Lena Live", "stays").await;
    v.post_json(
        "/api/v1/visitor/messages",
        &json!({"text": "live-message-77aa"}),
        &[bearer(&live_token)],
    )
    .await
    .unwrap();

    // Erasure refuses a live chat, then erases an ended one without leaving its bytes.
    let (code, _, err) = run(
        &[
            "visitor",
            "erase",
            &gone_chat.to_string(),
            "--config",
            &cfg(&demo),
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("still open"), "{err}");
    assert_eq!(
        v.post_json("/api/v1/visitor/end", &json!({}), &[bearer(&gone_token)])
            .await
            .unwrap()
            .status,
        200
    );
    let blobs: Vec<Vec<u8>> = {
        let c = db(&demo);
        let mut out: Vec<Vec<u8>> = vec![c
            .query_row("SELECT visitor FROM chats WHERE id=?1", [gone_chat], |r| {
                r.get(0)
            })
            .unwrap()];
        let mut st = c
            .prepare("SELECT body FROM events WHERE chat_id=?1")
            .unwrap();
        out.extend(
            st.query_map([gone_chat], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .map(Result::unwrap),
        );
        out
    };
    assert!(blobs.len() >= 3);
    let (code, out, err) = run(
        &[
            "visitor",
            "erase",
            &gone_chat.to_string(),
            "--config",
            &cfg(&demo),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let bytes = database_bytes(Path::new(&demo.s("state_dir")));
    for b in &blobs {
        let probe = &b[4..36]; // nonce and the start of the ciphertext: unique to this row
        assert!(
            !bytes.windows(probe.len()).any(|w| w == probe),
            "erased ciphertext still on disk"
        );
    }
    let erased: i64 = db(&demo)
        .query_row(
            "SELECT count(*) FROM audit WHERE event='visitor_erased'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(erased, 1);

    // Retention: pretend the old chat ended 400 days ago and early audit records are 800 days old.
    let day = 86_400_000i64;
    let now = palisade::storage::now_ms();
    db(&demo)
        .execute(
            "UPDATE chats SET ended_ms=?1 WHERE id=?2",
            rusqlite::params![now - 400 * day, old_chat],
        )
        .unwrap();
    db(&demo)
        .execute("UPDATE audit SET ts_ms=?1 WHERE seq<=3", [now - 800 * day])
        .unwrap();
    // (Those edits broke the links of records 1-3 — exactly the ones retention will drop.)
    let (code, out, err) = run(&["retention", "purge", "--config", &cfg(&demo)], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("purged 1 chats (3 events) and 3 audit records"),
        "{out}"
    );
    let (code, out) = verify(&demo, None);
    assert_eq!(code, 0, "the chain verifies from the sealed anchor: {out}");
    assert!(out.contains("after purged record 3"), "{out}");
    let purges: i64 = db(&demo).query_row("SELECT count(*) FROM audit WHERE event='retention_purge' AND detail LIKE '%by=console'", [], |r| r.get(0)).unwrap();
    assert_eq!(purges, 1);
    let left: Vec<i64> = {
        let c = db(&demo);
        let mut st = c.prepare("SELECT id FROM chats ORDER BY id").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(left, vec![live_chat]);

    // Backup while serving: consistent, encrypted, 0600, never overwrites.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy.db");
    let (code, out, err) = run(
        &["backup", file.to_str().unwrap(), "--config", &cfg(&demo)],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let copy = rusqlite::Connection::open(&file).unwrap();
    let ok: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let events: i64 = copy
        .query_row(
            "SELECT count(*) FROM events WHERE chat_id=?1",
            [live_chat],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(events, 2);
    let raw = std::fs::read(&file).unwrap();
    assert!(!contains(&raw, "live-message-77aa") && !contains(&raw, "Lena Live"));
    let (code, _, err) = run(
        &["backup", file.to_str().unwrap(), "--config", &cfg(&demo)],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    // The daemon kept serving the live chat throughout.
    let tr = v
        .get("/api/v1/visitor/transcript", &[bearer(&live_token)])
        .await
        .unwrap();
    assert_eq!(tr.status, 200);
    serve.stop();
}
