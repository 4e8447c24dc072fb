//! The fuzz targets' properties (fuzz/src/lib.rs, shared source) as proptests in the normal
//! test suite: the policy parser, every API body parser, the event-stream resume id and
//! frames, and the allowlist against two naive references.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod props;

use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A policy file as shipped, with a few edits (snippets of TOML-ish text, control
/// characters included) spliced in at arbitrary places.
fn mutated(which: usize, edits: &[(usize, String)]) -> Vec<u8> {
    let mut t = props::SHIPPED[which].1.to_string();
    for (pos, snippet) in edits {
        let mut p = pos % (t.len() + 1);
        while !t.is_char_boundary(p) {
            p -= 1;
        }
        t.insert_str(p, snippet);
    }
    t.into_bytes()
}

fn snippet() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~\t\n]{0,12}",
        "[\\x00-\\x1f\\x7f]{1,2}",
        Just("\n[operator]\n".to_string()),
        Just(" = \"0.0.0.0/0\"\n".to_string()),
        Just("allow = [\"::ffff:0:0/96\"]\n".to_string()),
        Just("\nunknown_key = 1\n".to_string()),
        Just("\"".to_string()),
        Just("]".to_string()),
        (0u64..u64::MAX).prop_map(|n| n.to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        "[\\x00-\\x1f ]{0,4}[a-z]{0,4}[\\x00-\\x1f ]{0,4}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            vec(
                (
                    prop_oneof![
                        Just("name".to_string()),
                        Just("email".to_string()),
                        Just("question".to_string()),
                        Just("text".to_string()),
                        Just("typing".to_string()),
                        Just("username".to_string()),
                        Just("password".to_string()),
                        Just("auth_string".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn peer() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_compatible())),
        // Peers inside or next to the networks below.
        (0u32..=255).prop_map(|x| IpAddr::V4(Ipv4Addr::new(192, 0, 2, x as u8))),
        (0u32..=255).prop_map(|x| IpAddr::V6(Ipv4Addr::new(192, 0, 2, x as u8).to_ipv6_mapped())),
    ]
}

fn nets() -> impl Strategy<Value = Vec<(bool, u128, u8)>> {
    vec(
        prop_oneof![
            (any::<bool>(), any::<u128>(), any::<u8>()),
            (Just(false), Just(0xc000_0200u128), 20u8..=32),
            (Just(true), Just(0xffff_c000_0200u128), 80u8..=128),
        ],
        0..8,
    )
}

/// 200 cases each; failures are not written to a regressions file (the inputs the fuzzers
/// found are pinned in `known_inputs_found_by_fuzzing` instead).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn api_bodies_hold_on_any_bytes(kind in any::<u8>(), data in vec(any::<u8>(), 0..300)) {
        props::check_api_body(kind, &data);
    }

    #[test]
    fn api_bodies_hold_on_any_json(kind in any::<u8>(), v in json_value()) {
        props::check_api_body(kind, v.to_string().as_bytes());
    }

    #[test]
    fn event_id_is_strict(data in prop_oneof![vec(any::<u8>(), 0..24), "[0-9]{0,20}".prop_map(String::into_bytes)]) {
        props::check_event_id(&data);
    }

    #[test]
    fn sse_frames_cannot_be_forged(id in proptest::option::of(any::<i64>()), data in "(.|\r|\n|\r\n|id: 1|event: x|data: y){0,12}") {
        props::check_sse_frame(id, &data);
    }

    #[test]
    fn allowlist_matches_two_naive_references(nets in nets(), peer in peer()) {
        let nets: Vec<_> = nets.into_iter().map(|(v6, bits, p)| props::net_of(v6, bits, p)).collect();
        props::check_allowlist(&nets, peer);
    }
}

/// Run a policy property with proptest's runner, then remove the scratch directory.
fn policy_property<S: Strategy>(strategy: S, f: impl Fn(S::Value) -> (usize, Vec<u8>)) {
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let result = runner.run(&strategy, |v| {
        let (which, text) = f(v);
        props::check_policy(which, &text);
        Ok(())
    });
    props::remove_policy_dir();
    result.unwrap();
}

#[test]
fn policy_parser_holds_on_any_bytes() {
    policy_property((0usize..5, vec(any::<u8>(), 0..600)), |v| v);
}

#[test]
fn policy_parser_holds_on_edited_policy_files() {
    policy_property(
        (0usize..5, vec((any::<usize>(), snippet()), 1..5)),
        |(which, edits)| (which, mutated(which, &edits)),
    );
}

#[test]
fn known_inputs_found_by_fuzzing() {
    // A control character in a comment once gave "retention.toml:1:7: : ".
    props::check_policy(4, b"# Days\x04 kept\ntranscripts_days = 365\n");
    // A multi-line toml message once split one problem over two lines.
    props::check_policy(4, b"transcripts_days = \"365\n");
    // A lone CR once let data start a field of its own.
    props::check_sse_frame(Some(1), "a\rid: 99\r\revent: x");
    props::remove_policy_dir();
}

/// Random JSON rarely makes a valid body: every body type, from a valid object (the same
/// seeds the fuzzer starts from), with each property checked, and as a positional array.
#[test]
fn every_body_type_from_a_valid_object() {
    let valid = [
        r#"{"name":"Ann","email":"a@b.example","question":"hi"}"#,
        r#"{"text":"hello"}"#,
        r#"{"typing":true}"#,
        r#"{"username":"demo","password":"pw","auth_string":"s"}"#,
        r#"{"up_to":12}"#,
        r#"{"url":"https://www.example.com/a","title":"A","referrer":""}"#,
        r#"{"invite_id":1}"#,
        r#"{"name":"Ann","email":"a@b.example","message":"call me"}"#,
        r#"{"rating":5,"comment":"thanks"}"#,
        r#"{"presence":"away"}"#,
        r#"{"to_operator":"bob","note":"n"}"#,
        r#"{"category":"Other","note":"n"}"#,
        r#"{"on":true}"#,
        r#"{"message":"hello"}"#,
        r#"{"shortcut":"hi","title":"Hi","text":"Hello!"}"#,
        r#"{"code":"123456"}"#,
    ];
    assert_eq!(
        valid.len(),
        props::BODIES.len(),
        "one valid object per body type"
    );
    for (kind, body) in valid.iter().enumerate() {
        let (name, _, parses) = props::BODIES[kind];
        assert!(parses(body.as_bytes()), "{name}: {body} does not parse");
        props::check_api_body(kind as u8, body.as_bytes());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let array: Vec<&serde_json::Value> = v.as_object().unwrap().values().collect();
        let array = serde_json::to_vec(&array).unwrap();
        assert!(!parses(&array), "{name}: a positional array parses");
        props::check_api_body(kind as u8, &array);
    }
}
