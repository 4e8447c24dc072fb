//! Policy files: golden errors over broken policies, dangerous values and overrides, and
//! the rendered artefacts shipped in the repo.
#![allow(clippy::unwrap_used)]

use palisade::policy::{load_policy, POLICY_FILES};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped policy with a case's files laid over it (`X.deleted` removes X).
fn overlay(case: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in POLICY_FILES {
        std::fs::copy(repo().join("policy").join(f), dir.path().join(f)).unwrap();
    }
    for entry in std::fs::read_dir(case).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(deleted) = name.strip_suffix(".deleted") {
            std::fs::remove_file(dir.path().join(deleted)).unwrap();
        } else if name.ends_with(".toml") {
            std::fs::copy(&p, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

#[test]
fn broken_policies_report_every_problem_with_file_line_column_and_key() {
    let root = repo().join("tests/data/broken-policy");
    let bless = std::env::var_os("PALISADE_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for case in cases {
        let dir = overlay(&case);
        let err =
            load_policy(dir.path()).expect_err(&format!("{} must be refused", case.display()));
        let got = format!("{err}\n");
        let expected_path = case.join("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "--- {}\nexpected:\n{expected}got:\n{got}",
                case.display()
            ));
        }
        // Every line names a file, a line, a column and a key.
        for line in got.lines() {
            let parts: Vec<&str> = line.splitn(5, ':').collect();
            assert!(POLICY_FILES.contains(&parts[0]), "{line}");
            assert!(
                parts[1].parse::<usize>().unwrap() >= 1 && parts[2].parse::<usize>().unwrap() >= 1,
                "{line}"
            );
            assert!(!parts[3].trim().is_empty(), "{line}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_shipped_policy_loads_and_has_no_override_in_force() {
    let p = load_policy(&repo().join("policy")).unwrap();
    assert!(p.overrides_in_force.is_empty());
    assert_eq!(
        p.operator_allow
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["192.0.2.0/24"]
    );
}

#[test]
fn every_policy_key_is_commented() {
    for f in POLICY_FILES {
        let text = std::fs::read_to_string(repo().join("policy").join(f)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with('[') {
                continue;
            }
            assert!(
                i > 0 && lines[i - 1].trim().starts_with('#'),
                "{f}:{}: key without a comment: {t}",
                i + 1
            );
        }
    }
}

#[test]
fn dangerous_values_load_only_with_overrides_and_are_listed() {
    let dir = overlay(&repo().join("tests/data/override-policy"));
    let p = load_policy(dir.path()).unwrap();
    let o = p.overrides_in_force.join("\n");
    for key in [
        "operator_allow_everyone",
        "operator_listen_wildcard",
        "frame_ancestors_any",
        "argon2_below_floor",
    ] {
        assert!(o.contains(key), "{key} missing from {o}");
    }
}

#[test]
fn shipped_rendered_units_and_firewall_equal_the_policy() {
    let p = load_policy(&repo().join("policy")).unwrap();
    let (sys, nft) = palisade::policy::render::compare_installed(
        &p,
        Some(&repo().join("systemd")),
        Some(&repo().join("image/nftables/palisade.nft")),
    );
    assert!(sys.is_empty() && nft.is_empty(), "{sys:?} {nft:?}; run `palisade policy render --policy policy --systemd systemd --nftables image/nftables/palisade.nft`");
    let allow = std::fs::read_to_string(
        repo().join("systemd/palisade-operator.socket.d/50-allowlist.conf"),
    )
    .unwrap();
    assert!(allow.contains("IPAddressDeny=any\nIPAddressAllow=192.0.2.0/24\n"));
}

#[test]
fn journal_catalog_covers_exactly_the_message_ids_in_the_code() {
    let catalog = std::fs::read_to_string(repo().join("systemd/palisade.catalog")).unwrap();
    let mut in_catalog: Vec<&str> = catalog
        .lines()
        .filter_map(|l| l.strip_prefix("-- "))
        .collect();
    in_catalog.sort();
    let mut in_code: Vec<&str> = palisade::audit::ids::ALL
        .iter()
        .map(|(id, _)| *id)
        .collect();
    in_code.sort();
    assert_eq!(in_catalog, in_code);
    // Every constant in the ids module is listed in ALL (so nothing is emitted uncatalogued).
    let src = std::fs::read_to_string(repo().join("src/audit/mod.rs")).unwrap();
    let consts = src.matches("pub const ").count() - 1; // minus ALL itself
    assert_eq!(consts, in_code.len());
    for id in in_code {
        assert!(
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
        let entry = catalog.split(&format!("-- {id}\n")).nth(1).unwrap();
        assert!(
            entry.starts_with("Subject: ") && entry.contains("What to do: "),
            "{id}"
        );
    }
}
