//! Property tests of every parser of untrusted input, through the crate's public functions:
//! the token code, the MFA serial number, endpoints and the endpoint policy, durations, object
//! names, the source Secret, the output Secret (rendered and read back) and STS responses (fed
//! to the real client through a fake HTTP connector).
//!
//! proptest rather than cargo-fuzz: it runs inside plain `cargo test` on the stable toolchain,
//! with a bounded number of cases (seconds in all), and shrinks a failure to a minimal input.
//! `STS_TEST_LONG=1` runs ten times the cases.

#[path = "support/summary.rs"]
mod summary;

use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use sts_session_operator::Sensitive;
use sts_session_operator::crd::{OutputFormat, SessionToken, SourceSecretRef};
use sts_session_operator::plan::{is_object_name, parse_duration};
use sts_session_operator::secret::{self, Layout, SessionSecret};
use sts_session_operator::sts::{
    EndpointPolicy, SessionRequest, StsClient, StsError, StsSettings, TokenCode,
    normalize_endpoint, validate_serial_number,
};

/// Runs `test` on `cases` values of `strategy` (ten times as many with `STS_TEST_LONG=1`) and
/// records how many ran; a failure panics with the shrunk input.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = if summary::long() { cases * 10 } else { cases };
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = AtomicU64::new(0);
    let result = runner.run(&strategy, |v| {
        ran.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    summary::record(
        &format!("fuzz::{name}"),
        &[("fuzz_cases", ran.into_inner())],
    );
}

/// Strings that stress parsers: arbitrary Unicode, ASCII punctuation, digits of other
/// scripts, controls.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,40}",
        "[0-9０-９٠-٩ +\\-\t\n\r\u{0}]{0,10}",
        proptest::collection::vec(any::<char>(), 0..20).prop_map(|v| v.into_iter().collect()),
    ]
}

// ---- token code -----------------------------------------------------------------------------

#[test]
fn token_code_accepts_exactly_six_ascii_digits() {
    let strategy = prop_oneof![nasty_string(), "[0-9]{0,8}", "[0-9]{6}", "[0-9０-９]{6}"];
    let messages = [
        "it is empty",
        "it contains whitespace",
        "it contains characters other than the digits 0-9",
        "it does not have exactly six digits",
    ];
    check("token_code", 2000, strategy, |raw| {
        let six = raw.len() == 6 && raw.bytes().all(|b| b.is_ascii_digit());
        match TokenCode::parse(&raw) {
            Ok(code) => {
                prop_assert!(six, "accepted {raw:?}");
                prop_assert_eq!(code.expose(), raw.as_str());
                prop_assert_eq!(format!("{code:?}"), "TokenCode(<redacted>)");
            }
            Err(e) => {
                prop_assert!(!six, "refused {raw:?}");
                // The message is one of a fixed few: it cannot echo the input.
                let msg = e.to_string();
                prop_assert!(messages.iter().any(|m| msg.ends_with(m)), "{msg}");
            }
        }
        Ok(())
    });
}

// ---- serial number --------------------------------------------------------------------------

/// What the CRD schema admits: 9 to 256 characters matching `^[\w+=,.@:/-]+$` (RE2's `\w` is
/// ASCII).
fn schema_admits_serial(s: &str) -> bool {
    (9..=256).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c))
}

#[test]
fn serial_numbers_are_checked_as_the_schema_checks_them() {
    let strategy = prop_oneof![
        nasty_string(),
        "[A-Za-z0-9_+=,.@:/-]{0,300}",
        "arn:aws:iam::[0-9]{12}:mfa/[A-Za-z0-9_+=,.@-]{1,64}",
        "arn:aws:iam::[0-9]{12}:mfa/[a-z]{1,8}[ é\n?*%][a-z]{0,8}",
    ];
    check("serial_number", 2000, strategy, |s| {
        let ok = validate_serial_number(&s).is_ok();
        prop_assert_eq!(ok, schema_admits_serial(&s), "{:?}", s);
        Ok(())
    });
}

// ---- endpoints ------------------------------------------------------------------------------

fn allowed_host(host: &str) -> bool {
    let region = |l: &str| {
        let parts: Vec<&str> = l.split('-').collect();
        parts.len() >= 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    let labels: Vec<&str> = host.split('.').collect();
    host == "127.0.0.1"
        || host == "sts.amazonaws.com"
        || matches!(labels.as_slice(), ["sts", r, "amazonaws", "com"] if region(r))
        || matches!(labels.as_slice(), [v, "sts", r, "vpce", "amazonaws", "com"] if region(r) && !v.is_empty())
}

fn policy() -> EndpointPolicy {
    EndpointPolicy::from_patterns(&[
        "https://sts.amazonaws.com".into(),
        "https://sts.{region}.amazonaws.com".into(),
        "https://*.sts.{region}.vpce.amazonaws.com".into(),
        "http://127.0.0.1:*".into(),
    ])
    .expect("valid patterns")
}

/// URLs assembled from pieces that trip up URL parsers: userinfo, numeric and bracketed hosts,
/// look-alike suffixes, odd ports, paths, backslashes, percent-encoding, case.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "https",
        "http",
        "HTTPS",
        "hTtP",
        "ftp",
        "",
        "https:",
        "javascript",
        "file",
    ]);
    let sep = prop::sample::select(vec!["://", ":/", ":///", "//", ":\\\\", "://\\"]);
    let userinfo = prop::sample::select(vec![
        "",
        "",
        "",
        "user@",
        "user:pass@",
        "127.0.0.1@",
        "sts.amazonaws.com@",
        "a%40b@",
        "@",
        "sts.amazonaws.com:443@",
        "127.0.0.1:80@",
    ]);
    let host = prop_oneof![
        prop::sample::select(vec![
            "127.0.0.1",
            "127.1",
            "0x7f.0.0.1",
            "2130706433",
            "0177.0.0.1",
            "127.0.0.1.",
            "localhost",
            "sts.amazonaws.com",
            "STS.AMAZONAWS.COM",
            "sts.amazonaws.com.",
            "sts.us-east-1.amazonaws.com",
            "sts.us-east-1.amazonaws.com.evil.com",
            "evil.com",
            "sts.amazonaws.com.evil.com",
            "sts.evil.amazonaws.com",
            "vpce-1.sts.eu-west-1.vpce.amazonaws.com",
            "sts.amazonaws.com%2f",
            "sts.amazonaws。com",
            "xn--sts-9na.amazonaws.com",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[127.0.0.1]",
            "sts..amazonaws.com",
            "-sts.amazonaws.com",
            "sts.amazonaws.com\u{0}",
            "",
        ])
        .prop_map(str::to_string),
        "[a-z0-9.-]{1,30}",
        "[a-z]{1,5}\\.[a-z]{2}-[a-z]{4,9}-[0-9]\\.amazonaws\\.com",
    ];
    let port = prop::sample::select(vec![
        "", "", ":443", ":80", ":0", ":65535", ":65536", ":1234", ":", ":abc", ":-1", ":+80",
        ":08080", ":443:443", ":*",
    ]);
    let tail = prop::sample::select(vec![
        "",
        "",
        "/",
        "/path",
        "?q=1",
        "#f",
        "/..",
        "\\",
        "%00",
        " ",
        "/@evil.com",
        "#@evil.com",
        "?@evil.com",
        "\t",
        "/./",
    ]);
    (scheme, sep, userinfo, host, port, tail)
        .prop_map(|(s, sep, u, h, p, t)| format!("{s}{sep}{u}{h}{p}{t}"))
}

#[test]
fn the_endpoint_policy_never_admits_another_host_or_userinfo() {
    let policy = policy();
    let strategy = prop_oneof![3 => url_like(), 1 => nasty_string()];
    check("endpoint_policy", 4000, strategy, |url| {
        let normalized = normalize_endpoint(&url);
        if let Err(why) = &normalized {
            // Messages name the problem, never the input (which may carry a password).
            if url.len() > 12 {
                prop_assert!(!why.contains(url.as_str()), "{why}");
            }
        }
        if let Ok(n) = &normalized {
            let again = normalize_endpoint(n);
            prop_assert_eq!(again.as_ref(), Ok(n), "not idempotent");
        }
        let checked = policy.check(&url);
        if checked.is_ok() {
            prop_assert!(!url.contains('@'), "userinfo admitted: {url:?}");
            let n = normalized
                .clone()
                .map_err(|e| TestCaseError::fail(format!("admitted but not normal: {e}")))?;
            // The host the SDK would connect to, as an independent parser reads the URL.
            let uri: hyper::Uri = n
                .parse()
                .map_err(|e| TestCaseError::fail(format!("{n}: {e}")))?;
            let host = uri.host().unwrap_or_default().to_ascii_lowercase();
            prop_assert!(
                allowed_host(&host),
                "{url:?} admitted, normalised to {n}, host {host}"
            );
            // The raw input, read by that parser, names the same host.
            if let Ok(raw) = url.parse::<hyper::Uri>() {
                prop_assert_eq!(
                    raw.host().unwrap_or_default().to_ascii_lowercase(),
                    host,
                    "{:?}",
                    url
                );
            }
            prop_assert!(policy.check(&n).is_ok());
        }
        Ok(())
    });
}

// ---- durations and names --------------------------------------------------------------------

#[test]
fn durations_parse_to_their_sum_and_never_panic() {
    let unit = prop::sample::select(vec![("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]);
    let part = (0u64..100_000, proptest::option::of(0u32..1000), unit);
    let valid = proptest::collection::vec(part, 1..5).prop_map(|parts| {
        let mut text = String::new();
        let mut total = 0f64;
        for (n, frac, (u, mult)) in parts {
            let number = match frac {
                Some(f) => format!("{n}.{f}"),
                None => n.to_string(),
            };
            total += number.parse::<f64>().unwrap() * mult;
            text.push_str(&number);
            text.push_str(u);
        }
        (text, Some(total))
    });
    let arbitrary = prop_oneof![nasty_string(), "[0-9.]{0,400}[hms]{0,2}", "[0-9smh.]{0,20}"]
        .prop_map(|s| (s, None));
    check(
        "duration",
        3000,
        prop_oneof![valid, arbitrary],
        |(text, total)| {
            let parsed = parse_duration(&text);
            if let Some(d) = parsed {
                prop_assert!(d.as_secs_f64() < 1e9, "{text:?} -> {d:?}");
            }
            if let Some(total) = total
                && total < 1e9 * 0.999
            {
                let d = parsed.ok_or_else(|| TestCaseError::fail(format!("{text:?} refused")))?;
                prop_assert!(
                    (d.as_secs_f64() - total).abs() <= 1e-6 * total.max(1.0),
                    "{text:?}: {d:?} != {total}"
                );
            }
            Ok(())
        },
    );
}

#[test]
fn object_names_are_safe_path_segments() {
    let label = "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?";
    let dns = proptest::collection::vec(label, 1..5).prop_map(|l| l.join("."));
    let strategy = prop_oneof![
        dns.clone().prop_map(|n| (n, true)),
        nasty_string().prop_map(|n| (n, false)),
        "[a-z0-9./%-]{0,12}".prop_map(|n| (n, false)),
    ];
    check("object_name", 3000, strategy, |(name, subdomain)| {
        let ok = is_object_name(&name);
        if ok {
            prop_assert!(!name.is_empty() && name.len() <= 253);
            prop_assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.')
            );
            prop_assert!(!name.contains("..") && !name.contains('/') && !name.contains('%'));
            prop_assert!(!name.starts_with(['.', '-']) && !name.ends_with(['.', '-']));
        }
        if subdomain && name.len() <= 253 {
            prop_assert!(ok, "{name:?} refused");
        }
        Ok(())
    });
}

// ---- spec.assumeRole -----------------------------------------------------------------------

/// The CRD's role ARN pattern, as RE2 (the API server) reads it.
fn schema_admits_role_arn(s: &str) -> bool {
    let re = regex_lite::Regex::new(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$").unwrap();
    (20..=2048).contains(&s.len()) && re.is_match(s)
}

#[test]
fn role_arns_and_session_names_are_checked_as_the_schema_checks_them() {
    let arn = prop_oneof![
        "arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@/_-]{1,40}",
        "arn:aws:(iam|sts)::[0-9]{10,13}:(role|user|assumed-role)/[ -~]{0,20}",
        nasty_string(),
    ];
    check("role_arn", 3000, arn, |a| {
        let ours = sts_session_operator::sts::validate_role_arn(&a).is_ok();
        // ASCII only: the schema's \w is Unicode in RE2 only with flags; ours refuses
        // non-ASCII letters the schema might admit, never the reverse.
        if a.is_ascii() {
            prop_assert_eq!(ours, schema_admits_role_arn(&a), "{:?}", a);
        } else {
            prop_assert!(!ours || schema_admits_role_arn(&a), "{:?}", a);
        }
        Ok(())
    });
    let names = prop_oneof![
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
        "[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?",
    ]
    // What the API server admits as names.
    .prop_filter("an object name", |n| is_object_name(n));
    check(
        "default_role_session_name",
        2000,
        (names.clone(), names),
        |(ns, name)| {
            let n = sts_session_operator::plan::default_role_session_name(&ns, &name);
            prop_assert!(
                sts_session_operator::sts::validate_role_session_name(&n).is_ok(),
                "{:?}",
                n
            );
            let kept = sts_session_operator::plan::session_secret_name(&name);
            prop_assert!(is_object_name(&kept) && kept != name, "{:?}", kept);
            Ok(())
        },
    );
}

// ---- the source Secret ----------------------------------------------------------------------

/// A secret value with a marker no message text contains by accident, and the bytes around it
/// that make reading it hard (whitespace, controls, invalid UTF-8).
fn secret_value() -> impl Strategy<Value = Vec<u8>> {
    let core = "[A-Za-z0-9/+]{4,40}".prop_map(|s| format!("SeCrEtVaLuE{s}"));
    let pad = prop::sample::select(vec!["", " ", "\n", "\t", "\r\n", "\u{0}", "\u{a0}"]);
    (
        pad.clone(),
        core,
        pad,
        any::<bool>(),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(a, c, b, inner_space, junk)| {
            let mut v = format!("{a}{c}{}{b}", if inner_space { " x" } else { "" }).into_bytes();
            if let Some(j) = junk {
                v.push(j);
            }
            v
        })
}

fn access_key_id() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "AKIA[A-Z0-9]{16}".prop_map(String::into_bytes),
        "ASIA[A-Z0-9]{16}".prop_map(String::into_bytes),
        "[A-Za-z0-9 ]{0,24}".prop_map(String::into_bytes),
        any::<Vec<u8>>(),
        // swapped: the secret in the id's place
        secret_value(),
    ]
}

#[test]
fn source_secrets_never_panic_or_echo_the_secret() {
    let key_name = prop::sample::select(vec![
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "id",
        "secret",
        "AWS_SESSION_TOKEN",
        "aws_session_token",
        "SessionToken",
        "sessionToken",
        "other",
    ]);
    let extra = proptest::collection::btree_map(key_name, any::<Vec<u8>>(), 0..4);
    let refs = prop::sample::select(vec![
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ("id", "secret"),
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
    ]);
    let strategy = (
        refs,
        proptest::option::of(access_key_id()),
        proptest::option::of(secret_value()),
        extra,
        any::<bool>(),
    );
    check(
        "source_secret",
        3000,
        strategy,
        |((id_key, secret_key), id, secret, extra, absent)| {
            let mut data: BTreeMap<String, ByteString> = extra
                .into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v)))
                .collect();
            if let Some(id) = &id {
                data.insert(id_key.into(), ByteString(id.clone()));
            }
            if let Some(s) = &secret {
                data.insert(secret_key.into(), ByteString(s.clone()));
            }
            let source = Secret {
                data: Some(data.clone()),
                ..Default::default()
            };
            let r = SourceSecretRef {
                name: "iam-keys".into(),
                access_key_id_key: id_key.into(),
                secret_access_key_key: secret_key.into(),
            };
            let result = secret::read_long_term_keys((!absent).then_some(&source), &r);
            let stored_secret = data.get(secret_key).map(|v| v.0.clone());
            match &result {
                Ok(keys) => {
                    prop_assert!(!absent);
                    let text =
                        |k: &str| std::str::from_utf8(&data[k].0).map(|s| s.trim().to_string());
                    prop_assert_eq!(Ok(keys.access_key_id.clone()), text(id_key));
                    prop_assert_eq!(
                        Ok(keys.secret_access_key.expose().clone()),
                        text(secret_key)
                    );
                    let id = &keys.access_key_id;
                    prop_assert!(
                        (16..=128).contains(&id.len())
                            && id
                                .bytes()
                                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    );
                    prop_assert!(!id.starts_with("ASIA"));
                    prop_assert!(!keys.secret_access_key.expose().is_empty());
                    prop_assert!(
                        !keys
                            .secret_access_key
                            .expose()
                            .contains(char::is_whitespace)
                    );
                    prop_assert_eq!(format!("{:?}", keys.secret_access_key), "<redacted>");
                }
                Err(problem) => {
                    let msg = problem.to_string();
                    prop_assert!(!msg.contains("SeCrEtVaLuE"), "the secret in {msg:?}");
                    if let Some(s) = stored_secret.filter(|_| id_key != secret_key) {
                        let s = String::from_utf8_lossy(&s);
                        if s.trim().len() >= 8 {
                            prop_assert!(!msg.contains(s.trim()), "the secret in {msg:?}");
                        }
                    }
                    prop_assert!(
                        ["SourceCredentialsMissing", "SourceCredentialsInvalid"]
                            .contains(&problem.reason())
                    );
                }
            }
            Ok(())
        },
    );
}

// ---- the output Secret ----------------------------------------------------------------------

fn session_token_with(formats: Vec<OutputFormat>, mount_path: String) -> SessionToken {
    let mut st: SessionToken = serde_json::from_value(serde_json::json!({
        "apiVersion": "stssession.dev/v1alpha1", "kind": "SessionToken",
        "metadata": {"name": "app", "namespace": "ns", "uid": "0d4c5e8e-0000-4000-8000-000000000001"},
        "spec": {"sourceCredentials": {"secretRef": {"name": "iam-keys"}},
                 "secret": {"formats": formats, "mountPath": mount_path}},
    }))
    .expect("a valid SessionToken");
    st.metadata.generation = Some(1);
    st
}

fn session() -> impl Strategy<Value = SessionSecret> {
    (
        "ASIA[A-Z0-9]{16}",
        "[A-Za-z0-9/+]{40}",
        "[A-Za-z0-9/+]{100,600}={0,2}",
        1_600_000_000i64..4_000_000_000i64,
        prop_oneof![Just(0i32), 0i32..1_000_000_000],
    )
        .prop_map(|(id, key, token, secs, nanos)| SessionSecret {
            access_key_id: id,
            secret_access_key: Sensitive::new(key),
            session_token: Sensitive::new(token),
            expiration: jiff::Timestamp::new(secs, nanos).expect("in range"),
        })
}

#[test]
fn the_output_secret_reads_back_as_the_session_it_was_rendered_from() {
    let formats = proptest::sample::subsequence(OutputFormat::ALL.to_vec(), 1..=3);
    let mount = "(/[A-Za-z0-9._-]{1,12}){1,4}";
    check(
        "output_secret_round_trip",
        1000,
        (session(), formats, mount),
        |(s, formats, mount)| {
            let st = session_token_with(formats.clone(), mount.clone());
            let desired = secret::desired_secret(&st, "app", &s);
            let layout = Layout::of(&st);
            prop_assert_eq!(
                secret::read_session(&desired, &layout),
                Some(s.clone()),
                "read_session"
            );
            prop_assert_eq!(
                secret::held_session(&desired, &st),
                Some(s.clone()),
                "held_session"
            );
            prop_assert_eq!(&desired.data, &Some(secret::render_data(&s, &layout)));
            // Another layout: read back all the same (the operator then rewrites it in place).
            prop_assert_eq!(
                secret::read_session_any_layout(&desired),
                Some(s.clone()),
                "any layout"
            );
            // One key altered: no longer the session.
            let mut data = desired.data.clone().unwrap();
            let key = data.keys().find(|k| *k != "config").cloned().unwrap();
            data.get_mut(&key).unwrap().0.push(b'x');
            let altered = Secret {
                data: Some(data),
                ..desired.clone()
            };
            // (It may still read as a session, its own, which status then does not name.)
            prop_assert_ne!(
                secret::read_session(&altered, &layout),
                Some(s.clone()),
                "{} altered",
                key
            );
            Ok(())
        },
    );
}

#[test]
fn arbitrary_output_secrets_never_panic() {
    let key = prop::sample::select(secret::ALL_KEYS.to_vec());
    let value = prop_oneof![
        any::<Vec<u8>>(),
        nasty_string().prop_map(String::into_bytes),
        "\\{\"Version\": ?[0-9], \"AccessKeyId\": \"[A-Z]{0,5}\", \"SecretAccessKey\": \"x\", \"SessionToken\": \"y\", \"Expiration\": \"[0-9TZ:-]{0,22}\"\\}".prop_map(String::into_bytes),
        "\\[default\\]\naws_access_key_id ?= ?[A-Z]{0,4}\naws_secret_access_key=[a-z=]{0,4}\naws_session_token =[=a]{0,3}\n?".prop_map(String::into_bytes),
    ];
    let data = proptest::collection::btree_map(key, value, 0..8);
    let annotation = proptest::option::of(nasty_string());
    check(
        "output_secret_arbitrary",
        2000,
        (data, annotation),
        |(data, annotation)| {
            let mut secret = Secret {
                data: Some(
                    data.into_iter()
                        .map(|(k, v)| (k.to_string(), ByteString(v)))
                        .collect(),
                ),
                ..Default::default()
            };
            if let Some(a) = annotation {
                secret.metadata.annotations = Some(BTreeMap::from([(
                    secret::EXPIRATION_ANNOTATION.to_string(),
                    a,
                )]));
            }
            let st = session_token_with(OutputFormat::ALL.to_vec(), "/var/run/x".into());
            let read = secret::read_session(&secret, &Layout::of(&st));
            let any = secret::read_session_any_layout(&secret);
            let held = secret::held_session(&secret, &st);
            // What is read back is a session that renders to exactly what is there.
            if let Some(s) = &read {
                let rendered = secret::render_data(s, &Layout::of(&st));
                for (k, v) in rendered {
                    prop_assert_eq!(secret.data.as_ref().unwrap().get(&k), Some(&v));
                }
            }
            prop_assert!(held.is_none() || held == read || held == any);
            Ok(())
        },
    );
}

// ---- STS responses --------------------------------------------------------------------------

/// Replies to every request with one canned response.
#[derive(Clone, Debug)]
struct Canned {
    status: u16,
    body: Vec<u8>,
}

impl HttpConnector for Canned {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let status = StatusCode::try_from(self.status).expect("a valid status");
        HttpConnectorFuture::ready(Ok(HttpResponse::new(
            status,
            SdkBody::from(self.body.clone()),
        )))
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[derive(Clone)]
struct Response {
    status: u16,
    body: Vec<u8>,
    /// The credentials in a success body, if it has all of them, and whether their elements
    /// are all closed (not cut short).
    complete: Option<(String, String, String, bool)>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("complete", &self.complete)
            .finish()
    }
}

fn sts_response() -> impl Strategy<Value = Response> {
    let field = |canary: &'static str| {
        prop_oneof![
            4 => "[A-Za-z0-9/+=]{8,60}".prop_map(move |s| Some(format!("{canary}{s}"))),
            1 => Just(None),
            1 => Just(Some(String::new())),
            1 => any::<String>().prop_map(move |s| Some(format!("{canary}{s}"))),
        ]
    };
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(12);
    let expiration = prop_oneof![
        4 => Just(Some(future.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())),
        1 => Just(Some("2001-01-01T00:00:00Z".to_string())),
        1 => Just(None),
        1 => nasty_string().prop_map(Some),
        1 => Just(Some("1e400".into())),
        1 => Just(Some("99999-12-31T23:59:59Z".into())),
    ];
    let id = prop_oneof![
        6 => "ASIA[A-Z0-9]{16}".prop_map(Some),
        1 => Just(None),
        1 => Just(Some(String::new())),
        1 => nasty_string().prop_map(Some),
    ];
    let success = (
        prop_oneof![6 => Just(200u16), 1 => 100u16..600],
        id,
        field("SECRETCANARY"),
        field("TOKENCANARY"),
        expiration,
        prop_oneof![4 => Just(None), 1 => (0usize..2000).prop_map(Some)],
    )
        .prop_map(|(status, id, secret, token, exp, cut)| {
            let tag = |name: &str, v: &Option<String>| {
                v.as_ref().map(|v| format!("<{name}>{}</{name}>", xml_escape(v))).unwrap_or_default()
            };
            let body = format!(
                r#"<GetSessionTokenResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetSessionTokenResult><Credentials>{}{}{}{}</Credentials></GetSessionTokenResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetSessionTokenResponse>"#,
                tag("SessionToken", &token),
                tag("SecretAccessKey", &secret),
                tag("Expiration", &exp),
                tag("AccessKeyId", &id),
            );
            let mut body = body.into_bytes();
            if let Some(c) = cut {
                body.truncate(c);
            }
            // All four there, and closed: a body cut short may still yield prefixes of them.
            let text = String::from_utf8_lossy(&body).into_owned();
            let closed = ["</SessionToken>", "</SecretAccessKey>", "</AccessKeyId>"].iter().all(|t| text.contains(t));
            let complete = match (id, secret, token) {
                (Some(i), Some(s), Some(t)) if !s.is_empty() && !t.is_empty() => Some((i, s, t, closed)),
                _ => None,
            };
            Response { status, body, complete }
        });
    let error = (
        prop::sample::select(vec![400u16, 403, 404, 429, 500, 502, 503, 200]),
        prop_oneof![
            prop::sample::select(vec![
                "Throttling", "AccessDenied", "InvalidClientTokenId", "SignatureDoesNotMatch",
                "ExpiredToken", "ServiceUnavailable", "RegionDisabledException", "ValidationError",
            ])
            .prop_map(str::to_string),
            nasty_string(),
        ],
        nasty_string(),
    )
        .prop_map(|(status, code, message)| Response {
            status,
            body: format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>r</RequestId></ErrorResponse>",
                xml_escape(&code),
                xml_escape(&message)
            )
            .into_bytes(),
            complete: None,
        });
    let garbage = (
        prop::sample::select(vec![200u16, 400, 500]),
        any::<Vec<u8>>(),
    )
        .prop_map(|(status, body)| Response {
            status,
            body,
            complete: None,
        });
    prop_oneof![4 => success, 2 => error, 1 => garbage]
}

#[test]
fn sts_responses_never_panic_and_no_error_carries_a_secret() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let long_term = Sensitive::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string());
    let (successes, failures) = (AtomicU64::new(0), AtomicU64::new(0));
    check(
        "sts_response",
        500,
        (sts_response(), any::<bool>()),
        |(response, mfa)| {
            let connector = Canned {
                status: response.status,
                body: response.body.clone(),
            };
            let http = http_client_fn(move |_, _| SharedHttpConnector::new(connector.clone()));
            let client = StsClient::with_http_client(
                StsSettings {
                    timeout: Duration::from_secs(5),
                    max_in_flight: 1,
                    non_mfa_attempts: 1,
                    default_endpoint: Some("https://sts.us-east-1.amazonaws.com".into()),
                },
                http,
            );
            let request = SessionRequest {
                region: "us-east-1",
                endpoint: None,
                access_key_id: "AKIAIOSFODNN7EXAMPLE",
                secret_access_key: &long_term,
                duration_seconds: 3600,
                mfa: mfa.then(|| {
                    (
                        "arn:aws:iam::123456789012:mfa/alice",
                        TokenCode::parse("123456").unwrap(),
                    )
                }),
            };
            let result = runtime.block_on(client.get_session_token(request));
            match &result {
                Ok(_) => successes.fetch_add(1, Ordering::Relaxed),
                Err(_) => failures.fetch_add(1, Ordering::Relaxed),
            };
            match &result {
                Ok(creds) => {
                    prop_assert!(
                        (200..300).contains(&response.status),
                        "success from HTTP {}",
                        response.status
                    );
                    let (id, secret, token, closed) =
                        response.complete.clone().ok_or_else(|| {
                            TestCaseError::fail("success from an incomplete response")
                        })?;
                    let got = [
                        &creds.access_key_id,
                        creds.secret_access_key.expose(),
                        creds.session_token.expose(),
                    ];
                    if closed {
                        prop_assert_eq!(got, [&id, &secret, &token]);
                    } else {
                        // Cut short: at best prefixes, never invented data.
                        for (g, want) in got.iter().zip([&id, &secret, &token]) {
                            prop_assert!(
                                want.starts_with(g.as_str()),
                                "{:?} is not from {:?}",
                                g,
                                want
                            );
                        }
                    }
                    let a = &creds.access_key_id;
                    prop_assert!(
                        (16..=128).contains(&a.len())
                            && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                        "key id {:?}",
                        a
                    );
                    prop_assert!(creds.expiration > jiff::Timestamp::now());
                    let shown = format!("{creds:?}");
                    prop_assert!(
                        !shown.contains("SECRETCANARY") && !shown.contains("TOKENCANARY"),
                        "Debug shows a secret: {}",
                        shown
                    );
                }
                Err(e) => {
                    let text = format!("{e} {e:?}");
                    prop_assert!(
                        !text.contains("SECRETCANARY"),
                        "the session secret in an error: {text}"
                    );
                    prop_assert!(
                        !text.contains("TOKENCANARY"),
                        "the session token in an error: {text}"
                    );
                    prop_assert!(
                        !text.contains("wJalrXUtnFEMI"),
                        "the long-term secret in an error: {text}"
                    );
                    if !String::from_utf8_lossy(&response.body).contains("123456") {
                        prop_assert!(
                            !text.contains("123456"),
                            "the token code in an error: {text}"
                        );
                    }
                    if mfa && matches!(e, StsError::AccessDenied { .. }) {
                        prop_assert!(
                            false,
                            "AccessDenied with MFA must read as TokenCodeRejected"
                        );
                    }
                    prop_assert!(
                        e.to_string().chars().count() < 2000,
                        "an error of {} characters",
                        e.to_string().len()
                    );
                }
            }
            Ok(())
        },
    );
    let (ok, err) = (successes.into_inner(), failures.into_inner());
    println!("sts_response: {ok} successes, {err} failures");
    assert!(
        ok >= 10 && err >= 10,
        "a lopsided sample: {ok} successes, {err} failures"
    );
}
