//! Adversarial suite, category 3: durability.
//!
//! `kill -9` at random moments under message load (every acknowledged message survives,
//! once, in order), a full disk (no false acknowledgement, recovery when space returns),
//! and bad database files (refused at start with a precise message, never modified).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const ROUNDS: usize = 20;
const SENDERS: usize = 8;

fn layout_for_load() -> Layout {
    let l = Layout::new();
    l.set_network(&["127.0.0.1:0"], &["127.0.0.1:0"], &["127.0.0.1/32"]);
    l.set_policy("visitor.toml", "", "messages_per_minute", "10000");
    l.set_policy("visitor.toml", "", "chats_per_hour_per_source", "100000");
    l
}

fn db_path(state: &Path) -> PathBuf {
    state.join("palisade.db")
}

/// `PRAGMA integrity_check` on a database no daemon has open.
fn integrity(state: &Path) -> Result<(), String> {
    let c = rusqlite::Connection::open(db_path(state)).map_err(|e| e.to_string())?;
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    ensure(ok == "ok", || format!("integrity_check: {ok}"))
}

/// The stored messages of a chat, as (id, text), in transcript order.
async fn stored(v: &Client, token: &str) -> Result<Vec<(i64, String)>, String> {
    let tr = v
        .get("/api/v1/visitor/transcript", &[bearer(token)])
        .await?;
    ensure(tr.status == 200, || {
        format!("transcript {}: {}", tr.status, tr.text())
    })?;
    Ok(tr.json()["events"]
        .as_array()
        .ok_or("no events")?
        .iter()
        .filter(|e| e["kind"] == "message")
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                e["text"].as_str().unwrap().to_string(),
            )
        })
        .collect())
}

/// Every acknowledged message is stored exactly once, with its acknowledged id, in order;
/// a stored message nobody saw acknowledged must be one that was in flight (`maybe`).
fn check_chat(
    label: &str,
    stored: &[(i64, String)],
    acked: &[(i64, String)],
    maybe: &HashSet<String>,
) -> Result<usize, String> {
    let mut seen = HashSet::new();
    for w in stored.windows(2) {
        ensure(w[0].0 < w[1].0, || {
            format!("{label}: ids out of order: {:?} then {:?}", w[0], w[1])
        })?;
    }
    for (_, t) in stored {
        ensure(seen.insert(t.clone()), || {
            format!("{label}: {t:?} stored twice")
        })?;
    }
    let by_text: HashMap<&str, i64> = stored.iter().map(|(i, t)| (t.as_str(), *i)).collect();
    for (id, t) in acked {
        match by_text.get(t.as_str()) {
            None => {
                return Err(format!(
                    "{label}: acknowledged message {t:?} (id {id}) is lost"
                ))
            }
            Some(sid) if sid != id => {
                return Err(format!(
                    "{label}: {t:?} acknowledged as id {id}, stored as {sid}"
                ))
            }
            _ => {}
        }
    }
    let acked_texts: HashSet<&str> = acked.iter().map(|(_, t)| t.as_str()).collect();
    let mut inflight = 0;
    for (_, t) in stored {
        if !acked_texts.contains(t.as_str()) {
            ensure(maybe.contains(t), || {
                format!("{label}: {t:?} stored but never sent or acknowledged")
            })?;
            inflight += 1;
        }
    }
    Ok(inflight)
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn kill9_rounds() {
    case("durability/kill9", Duration::from_secs(300), async {
        let l = layout_for_load();
        let mut d = l.serve(&[])?;
        let v = l.visitor_client(d.v());
        let mut chats = vec![];
        for i in 0..SENDERS {
            chats.push(try_start_chat(&v, &format!("Durable {i}"), "kill -9?").await?.1);
        }
        let mut acked: Vec<Vec<(i64, String)>> = vec![vec![]; SENDERS];
        let mut maybe: Vec<HashSet<String>> = vec![HashSet::new(); SENDERS];
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut kill_ms = vec![];
        for round in 0..ROUNDS {
            if round > 0 {
                d = l.serve(&[]).map_err(|e| format!("round {round}: restart after kill -9: {e}"))?;
                // Everything acknowledged so far is there, once, in order.
                let v = l.visitor_client(d.v());
                for (i, token) in chats.iter().enumerate() {
                    let s = stored(&v, token).await?;
                    check_chat(&format!("round {round} chat {i}"), &s, &acked[i], &maybe[i])?;
                }
            }
            let v = l.visitor_client(d.v());
            let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = vec![];
            for (i, token) in chats.iter().enumerate() {
                let (v, token, total) = (v.clone(), token.clone(), total.clone());
                tasks.push(tokio::spawn(async move {
                    let mut mine = vec![];
                    let mut attempted = None;
                    let Ok(mut conn) = v.connect().await else { return (mine, attempted) };
                    for n in 0..50_000 {
                        let text = format!("c{i} r{round} m{n}");
                        attempted = Some(text.clone());
                        match conn
                            .post_json("/api/v1/visitor/messages", &json!({"text": text}), &[bearer(&token)])
                            .await
                        {
                            Ok(r) if r.status == 200 => {
                                mine.push((r.json()["id"].as_i64().unwrap(), text));
                                attempted = None;
                                total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            _ => break,
                        }
                    }
                    (mine, attempted)
                }));
            }
            // Kill at a random moment once the load runs.
            let t0 = Instant::now();
            while total.load(std::sync::atomic::Ordering::Relaxed) < SENDERS && t0.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let wait = 50 + next() % 1500;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            kill_ms.push(wait);
            d.kill9();
            for (i, t) in tasks.into_iter().enumerate() {
                let (mine, attempted) = t.await.unwrap();
                acked[i].extend(mine);
                if let Some(a) = attempted {
                    maybe[i].insert(a);
                }
            }
            integrity(&l.state_dir()).map_err(|e| format!("round {round}: {e}"))?;
        }
        let d = l.serve(&[])?;
        let v = l.visitor_client(d.v());
        let mut lost = 0;
        let mut inflight_saved = 0;
        for (i, token) in chats.iter().enumerate() {
            let s = stored(&v, token).await?;
            inflight_saved += check_chat(&format!("final chat {i}"), &s, &acked[i], &maybe[i]).inspect_err(|_| lost += 1)?;
        }
        drop(d);
        integrity(&l.state_dir())?;
        let n: usize = acked.iter().map(Vec::len).sum();
        ensure(n >= ROUNDS * SENDERS, || format!("only {n} messages acknowledged in {ROUNDS} rounds"))?;
        Ok(format!(
            "rounds={ROUNDS} senders={SENDERS} acked={n} lost={lost} duplicates=0 inflight_saved={inflight_saved} integrity=ok seed={seed} kill_after_ms={}..{}",
            kill_ms.iter().min().unwrap(),
            kill_ms.iter().max().unwrap()
        ))
    })
    .await;
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.success(), || {
            format!("mount tmpfs: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

/// Fill a filesystem: write a file until the device is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    for block in [256 * 1024, 4096, 512] {
        let buf = vec![0x5au8; block];
        while f.write_all(&buf).and_then(|_| f.flush()).is_ok() {}
    }
    let _ = f.sync_all();
    p
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn disk_full() {
    case("durability/disk-full", Duration::from_secs(180), async {
        ensure(is_root(), || "needs root to mount a tmpfs".into())?;
        let l = layout_for_load();
        let mnt = l.scratch("tmpfs-state");
        let _fs = Tmpfs::mount(&mnt, "8m")?;
        for e in std::fs::read_dir(l.state_dir()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), mnt.join(e.file_name())).unwrap();
        }
        let cfg = l.config();
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(
            &cfg,
            text.replace(
                "state_dir = \"state\"",
                &format!("state_dir = {:?}", mnt.display().to_string()),
            ),
        )
        .unwrap();
        let mut d = l.serve(&[])?;
        let v = l.visitor_client(d.v());
        let (_, token) = try_start_chat(&v, "Disk", "full?").await?;
        let mut conn = v.connect().await?;
        let mut acked: Vec<(i64, String)> = vec![];
        let mut refused: Vec<String> = vec![];
        let pad = "x".repeat(3000);
        for n in 0..5 {
            let t = format!("before-full {n} {pad}");
            let r = conn
                .post_json(
                    "/api/v1/visitor/messages",
                    &json!({"text": t}),
                    &[bearer(&token)],
                )
                .await?;
            ensure(r.status == 200, || {
                format!("before the disk filled: {}", r.status)
            })?;
            acked.push((r.json()["id"].as_i64().unwrap(), t));
        }
        let filler = fill(&mnt);
        let t0 = Instant::now();
        let mut n = 0;
        let mut wrong_status = vec![];
        while refused.len() < 5 && n < 3000 && t0.elapsed() < Duration::from_secs(60) {
            n += 1;
            let t = format!("while-full {n} {pad}");
            let r = conn
                .post_json(
                    "/api/v1/visitor/messages",
                    &json!({"text": t}),
                    &[bearer(&token)],
                )
                .await?;
            match r.status {
                200 => acked.push((r.json()["id"].as_i64().unwrap(), t)),
                503 => {
                    let e = r.json()["error"].as_str().unwrap_or("").to_string();
                    ensure(e.contains("not saved"), || {
                        format!("503 without a clear message: {e:?}")
                    })?;
                    refused.push(t);
                }
                s => wrong_status.push(s),
            }
        }
        ensure(wrong_status.is_empty(), || {
            format!("unexpected answers while full: {wrong_status:?}")
        })?;
        ensure(!refused.is_empty(), || {
            format!("the disk never filled up after {n} messages")
        })?;
        ensure(d.alive(), || "the daemon died on a full disk".into())?;
        // Space returns: the very same daemon saves messages again.
        std::fs::remove_file(&filler).unwrap();
        let t1 = Instant::now();
        let mut recovered = None;
        for k in 0..100 {
            let t = format!("after-space {k}");
            let r = conn
                .post_json(
                    "/api/v1/visitor/messages",
                    &json!({"text": t}),
                    &[bearer(&token)],
                )
                .await?;
            if r.status == 200 {
                acked.push((r.json()["id"].as_i64().unwrap(), t));
                recovered = Some(t1.elapsed());
                break;
            }
            refused.push(t);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let recovered = recovered.ok_or("no recovery after space returned")?;
        let none = HashSet::new();
        let s = stored(&v, &token).await?;
        check_chat("after recovery", &s, &acked, &none)?;
        let texts: HashSet<&str> = s.iter().map(|(_, t)| t.as_str()).collect();
        for t in &refused {
            ensure(!texts.contains(t.as_str()), || {
                format!("a message answered 503 was stored after all: {}", &t[..20])
            })?;
        }
        // And after a restart (no kill): the same, and the file is sound.
        d.stop();
        integrity(&mnt)?;
        let d = l.serve(&[])?;
        let v = l.visitor_client(d.v());
        let s = stored(&v, &token).await?;
        check_chat("after restart", &s, &acked, &none)?;
        drop(d);
        Ok(format!(
            "acked={} refused_503={} false_acks=0 saved_after_503=0 recovered_ms={} integrity=ok",
            acked.len(),
            refused.len(),
            recovered.as_millis()
        ))
    })
    .await;
}

fn sha(path: &Path) -> String {
    use sha2::Digest;
    palisade::policy::hex(&sha2::Sha256::digest(
        std::fs::read(path).unwrap_or_default(),
    ))
}

/// Replace the database (no WAL beside it) and expect `serve` to refuse with every
/// `expect` string on one line, leaving the file as it was.
fn refuses(l: &Layout, expect: &[&str]) -> Result<String, String> {
    let db = db_path(&l.state_dir());
    let before = sha(&db);
    let t0 = Instant::now();
    let err = match l.serve(&[]) {
        Ok(_) => return Err("the daemon started on it".into()),
        Err(e) => e,
    };
    ensure(err.contains("exited before ready (exit status: 1)"), || {
        format!("not a clean refusal: {err}")
    })?;
    let line = err
        .lines()
        .find(|l| expect.iter().all(|x| l.contains(x)))
        .ok_or_else(|| format!("no line with {expect:?} in: {err}"))?;
    ensure(line.contains(&db.display().to_string()), || {
        format!("the message does not name the file: {line}")
    })?;
    ensure(sha(&db) == before, || "the file was modified".into())?;
    ensure(!err.contains("daemon_ready"), || "it got ready".into())?;
    let msg = line.split("refusing to start: ").last().unwrap_or(line);
    let msg = msg.split(" MESSAGE_ID=").next().unwrap_or(msg);
    Ok(format!(
        "{:.1}s {:?}",
        t0.elapsed().as_secs_f64(),
        msg.trim().replace(&db.display().to_string(), "DB")
    ))
}

fn checkpointed(l: &Layout) -> PathBuf {
    let db = db_path(&l.state_dir());
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        c.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
    }
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    db
}

/// Give a file the database's required mode (0600), as an admin restoring it would.
fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn corrupt_database() {
    case("durability/corrupt-db", Duration::from_secs(120), async {
        let mut out = vec![];
        // A damaged b-tree page (the header still says SQLite).
        let l = Layout::new();
        let db = checkpointed(&l);
        let size = std::fs::metadata(&db).unwrap().len();
        ensure(size >= 4 * 4096, || format!("database only {size} bytes"))?;
        overwrite(&db, 2 * 4096, &[0xa5; 4096]);
        out.push(format!(
            "btree={}",
            refuses(&l, &["database is corrupt", "restore from backup"])?
        ));
        // A damaged file header.
        let l = Layout::new();
        let db = checkpointed(&l);
        overwrite(&db, 0, b"SQLite format 9\0garbage-garbage!");
        out.push(format!(
            "header={}",
            refuses(&l, &["not a usable SQLite database", "refusing to start"])?
        ));
        // A truncated file.
        let l = Layout::new();
        let db = checkpointed(&l);
        let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.set_len(4096 + 100).unwrap();
        out.push(format!(
            "truncated={}",
            refuses(&l, &["refusing to start"])?
        ));
        Ok(out.join(" "))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn foreign_file() {
    case("durability/foreign-file", Duration::from_secs(120), async {
        let mut out = vec![];
        let l = Layout::new();
        let db = checkpointed(&l);
        std::fs::write(&db, "these are my notes, not a database\n".repeat(200)).unwrap();
        out.push(format!("text={}", refuses(&l, &["not a usable SQLite database", "refusing to start"])?));

        let l = Layout::new();
        let db = checkpointed(&l);
        std::fs::remove_file(&db).unwrap();
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes(body) VALUES('someone else''s data');").unwrap();
        }
        private(&db);
        out.push(format!("other-sqlite={}", refuses(&l, &["not a Palisade database", "refusing to start"])?));

        let l = Layout::new();
        let db = checkpointed(&l);
        std::fs::remove_file(&db).unwrap();
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("PRAGMA application_id=252006673; CREATE TABLE blob(x);").unwrap();
        }
        private(&db);
        out.push(format!("other-app-id={}", refuses(&l, &["not a Palisade database (application_id 0xf055111)", "refusing to start"])?));
        Ok(out.join(" "))
    })
    .await;
}

#[tokio::test]
#[ignore = "adversarial suite: run by scripts/adversarial"]
async fn newer_schema() {
    case("durability/newer-schema", Duration::from_secs(60), async {
        let l = Layout::new();
        let db = checkpointed(&l);
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch("PRAGMA user_version=99").unwrap();
        }
        let r = refuses(
            &l,
            &[
                &format!(
                    "database schema version 99 is newer than this palisade supports ({})",
                    palisade::storage::CURRENT_VERSION
                ),
                "refusing to start",
            ],
        )?;
        Ok(format!(
            "version=99 supported={} {r}",
            palisade::storage::CURRENT_VERSION
        ))
    })
    .await;
}
