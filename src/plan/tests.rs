//! Unit tests of the decisions' building blocks (timing, sessions, roles, names).

use super::*;
use crate::crd::{RenewalSpec, SessionTokenSpec};

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn no_jitter() -> Timing {
    Timing {
        renewal_jitter_max: Duration::ZERO,
        ..Timing::default()
    }
}

#[test]
fn renewal_defaults_to_a_third_of_the_returned_lifetime() {
    // Requested 12 h, but STS returned 1 h (account root): renew 33 % before that hour ends.
    let r = renewal_time(t(0), t(3600), None, &no_jitter(), "uid");
    assert_eq!(r, t(3600 - 1188));
}

#[test]
fn renewal_percentage_and_duration_windows() {
    let pct = RenewalSpec {
        renew_before_percentage: Some(10),
        renew_before: None,
    };
    assert_eq!(
        renewal_time(t(0), t(1000), Some(&pct), &no_jitter(), "x"),
        t(900)
    );
    let dur = RenewalSpec {
        renew_before_percentage: None,
        renew_before: Some("5m".into()),
    };
    assert_eq!(
        renewal_time(t(0), t(3600), Some(&dur), &no_jitter(), "x"),
        t(3300)
    );
}

#[test]
fn window_not_shorter_than_lifetime_falls_back_to_a_third() {
    let dur = RenewalSpec {
        renew_before_percentage: None,
        renew_before: Some("2h".into()),
    };
    assert_eq!(
        renewal_time(t(0), t(3600), Some(&dur), &no_jitter(), "x"),
        t(2400)
    );
    let dur = RenewalSpec {
        renew_before_percentage: None,
        renew_before: Some("1h".into()),
    };
    assert_eq!(
        renewal_time(t(0), t(3600), Some(&dur), &no_jitter(), "x"),
        t(2400)
    );
}

#[test]
fn jitter_only_advances_renewal_and_is_stable_and_spread() {
    let timing = Timing::default();
    let base = renewal_time(t(0), t(43200), None, &no_jitter(), "a");
    let mut distinct = std::collections::BTreeSet::new();
    for i in 0..50 {
        let seed = format!("uid-{i}");
        let r = renewal_time(t(0), t(43200), None, &timing, &seed);
        assert!(
            r <= base && r >= base - SignedDuration::from_secs(300),
            "{r} vs {base}"
        );
        assert_eq!(r, renewal_time(t(0), t(43200), None, &timing, &seed));
        distinct.insert(r);
    }
    assert!(
        distinct.len() > 40,
        "jitter does not spread: {}",
        distinct.len()
    );
}

#[test]
fn renewal_never_before_issue_for_tiny_lifetimes() {
    assert!(renewal_time(t(0), t(3), None, &Timing::default(), "s") >= t(0));
    assert_eq!(
        renewal_time(t(10), t(5), None, &Timing::default(), "s"),
        t(10)
    );
}

#[test]
fn durations_parse_like_the_schema_admits() {
    assert_eq!(parse_duration("90m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    for bad in ["", "5", "h", "5d", "1h-5m", "1..5h", "99999999999h"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn backoff_grows_caps_and_is_stable() {
    let timing = Timing::default();
    let d1 = backoff(1, &timing, "u");
    let d2 = backoff(2, &timing, "u");
    let d5 = backoff(5, &timing, "u");
    assert!(
        d1 >= Duration::from_secs(4) && d1 <= Duration::from_secs(5),
        "{d1:?}"
    );
    assert!(
        d2 >= Duration::from_secs(8) && d2 <= Duration::from_secs(10),
        "{d2:?}"
    );
    assert!(
        d5 >= Duration::from_secs(64) && d5 <= Duration::from_secs(80),
        "{d5:?}"
    );
    for n in [10, 30, 1000, u32::MAX] {
        let d = backoff(n, &timing, "u");
        assert!(
            d <= timing.backoff_cap && d >= timing.backoff_cap.mul_f64(0.8),
            "{n}: {d:?}"
        );
    }
    assert_eq!(backoff(3, &timing, "u"), backoff(3, &timing, "u"));
    assert_ne!(backoff(3, &timing, "u"), backoff(3, &timing, "v"));
}

#[test]
fn code_states() {
    let timing = Timing::default();
    let now = t(1000);
    assert_eq!(
        code_state(None, true, None, now, timing.token_code_max_age),
        CodeState::Absent
    );
    assert_eq!(
        code_state(
            Some("123456"),
            true,
            Some(t(990)),
            now,
            timing.token_code_max_age
        ),
        CodeState::Usable
    );
    assert_eq!(
        code_state(Some("123456"), true, None, now, timing.token_code_max_age),
        CodeState::Usable
    );
    assert_eq!(
        code_state(
            Some("123456"),
            false,
            Some(t(990)),
            now,
            timing.token_code_max_age
        ),
        CodeState::NotNeeded
    );
    assert_eq!(
        code_state(
            Some("123456"),
            true,
            Some(t(900)),
            now,
            timing.token_code_max_age
        ),
        CodeState::Expired {
            age: Duration::from_secs(100)
        }
    );
    // exactly at the limit is still usable
    assert_eq!(
        code_state(
            Some("123456"),
            true,
            Some(t(910)),
            now,
            timing.token_code_max_age
        ),
        CodeState::Usable
    );
    for bad in [
        "12ab5",
        "12345",
        "1234567",
        " 123456",
        "123456 ",
        "+12345",
        "１２３４５６",
        "",
        "12 456",
        "-12345",
    ] {
        assert_eq!(
            code_state(
                Some(bad),
                true,
                Some(t(999)),
                now,
                timing.token_code_max_age
            ),
            CodeState::Invalid,
            "{bad:?}"
        );
    }
}

#[test]
fn session_states() {
    let now = t(100);
    assert_eq!(session_state(None, None, false, now), SessionState::None);
    assert_eq!(
        session_state(Some(t(200)), Some(t(150)), true, now),
        SessionState::Valid {
            expiration: t(200),
            renewal: t(150)
        }
    );
    assert_eq!(
        session_state(Some(t(200)), Some(t(100)), true, now),
        SessionState::RenewalDue { expiration: t(200) }
    );
    assert_eq!(
        session_state(Some(t(200)), None, true, now),
        SessionState::RenewalDue { expiration: t(200) }
    );
    assert_eq!(
        session_state(Some(t(100)), Some(t(50)), true, now),
        SessionState::Expired { expiration: t(100) }
    );
    assert_eq!(
        session_state(Some(t(200)), Some(t(150)), false, now),
        SessionState::SecretMissing { expiration: t(200) }
    );
    // an expired session is Expired even if the Secret is gone
    assert_eq!(
        session_state(Some(t(50)), Some(t(20)), false, now),
        SessionState::Expired { expiration: t(50) }
    );
}

#[test]
fn automatic_minting() {
    let valid = SessionState::Valid {
        expiration: t(2),
        renewal: t(1),
    };
    assert_eq!(automatic_mint_reason(&valid, true), None);
    assert_eq!(automatic_mint_reason(&valid, false), Some("spec changed"));
    assert!(automatic_mint_reason(&SessionState::None, true).is_some());
    assert!(automatic_mint_reason(&SessionState::RenewalDue { expiration: t(1) }, true).is_some());
    assert!(automatic_mint_reason(&SessionState::Expired { expiration: t(1) }, true).is_some());
    assert!(
        automatic_mint_reason(&SessionState::SecretMissing { expiration: t(1) }, true).is_some()
    );
}

#[test]
fn code_required_events_repeat_per_interval() {
    let interval = Duration::from_secs(1800);
    assert_eq!(code_required_period(t(0), t(0), interval), (0, t(1800)));
    assert_eq!(code_required_period(t(0), t(1799), interval), (0, t(1800)));
    assert_eq!(code_required_period(t(0), t(1800), interval), (1, t(3600)));
    assert_eq!(code_required_period(t(0), t(5000), interval), (2, t(5400)));
}

#[test]
fn requeue_picks_the_earliest_instant_and_never_zero() {
    assert_eq!(
        requeue_after(t(0), &[None, Some(t(30)), Some(t(10))]),
        Some(Duration::from_secs(10))
    );
    assert_eq!(requeue_after(t(0), &[None]), None);
    assert_eq!(
        requeue_after(t(10), &[Some(t(0))]),
        Some(Duration::from_millis(200))
    );
}

#[test]
fn session_hash_tracks_what_shapes_a_session() {
    let spec: SessionTokenSpec = serde_json::from_value(serde_json::json!({
        "sourceCredentials": {"secretRef": {"name": "keys"}}
    }))
    .unwrap();
    let h = session_hash(&spec, "us-east-1", None, "AKIA1");
    assert_eq!(h, session_hash(&spec, "us-east-1", None, "AKIA1"));
    assert_ne!(h, session_hash(&spec, "eu-west-1", None, "AKIA1"));
    assert_ne!(
        h,
        session_hash(&spec, "us-east-1", Some("https://x"), "AKIA1")
    );
    assert_ne!(h, session_hash(&spec, "us-east-1", None, "AKIA2"));
    let mut longer = spec.clone();
    longer.duration_seconds = 900;
    assert_ne!(h, session_hash(&longer, "us-east-1", None, "AKIA1"));
}

#[test]
fn object_names() {
    for ok in ["keys", "iam-keys", "a.b-c", "x", &"a".repeat(253)] {
        assert!(is_object_name(ok), "{ok}");
    }
    for bad in [
        "",
        "../other",
        "a/b",
        "Keys",
        "-a",
        "a-",
        "a..b",
        "a b",
        "ключ",
        &"a".repeat(254),
        "%2e%2e",
    ] {
        assert!(!is_object_name(bad), "{bad}");
    }
}

#[test]
fn unit_jitter_is_in_range() {
    for i in 0..1000 {
        let j = unit_jitter(&i.to_string());
        assert!((0.0..1.0).contains(&j));
    }
}

// ---- spec.assumeRole ------------------------------------------------------------------

use crate::crd::{Failure, RoleStatus, SessionTag};

fn role_spec() -> AssumeRoleSpec {
    AssumeRoleSpec::example()
}

/// Role credentials assumed at `at` with session `S1`, expiring at `exp`, renewed at `renew`.
fn held_role(at: i64, exp: i64, renew: i64) -> RoleStatus {
    RoleStatus {
        access_key_id: Some("ASIAROLE000000000001".into()),
        assumed_at: Some(t(at)),
        expiration: Some(t(exp)),
        renewal_time: Some(t(renew)),
        session_access_key_id: Some("S1".into()),
        hash: Some("h".into()),
        assumptions: 1,
        ..Default::default()
    }
}

fn inputs<'a>(session: Option<(Timestamp, &'a str)>, role: &'a RoleStatus) -> RoleInputs<'a> {
    RoleInputs {
        session,
        role,
        role_held: role.access_key_id.is_some(),
        hash: "h",
        duration_seconds: 3600,
        spec_changed: false,
    }
}

#[test]
fn the_role_is_assumed_at_once_with_a_session_and_never_without_one() {
    let none = RoleStatus::default();
    let timing = Timing::default();
    assert_eq!(
        role_action(inputs(None, &none), &timing, "u", t(0)),
        RoleAction::NoSession
    );
    assert_eq!(
        role_action(inputs(Some((t(-1), "S1")), &none), &timing, "u", t(0)),
        RoleAction::NoSession,
        "an expired session is no session"
    );
    assert_eq!(
        role_action(inputs(Some((t(43_200), "S1")), &none), &timing, "u", t(0)),
        RoleAction::Assume {
            duration_seconds: 3600,
            why: "no role credentials yet"
        }
    );
}

#[test]
fn role_credentials_are_held_until_renewal_then_renewed() {
    let role = held_role(0, 3600, 2400);
    let timing = Timing::default();
    let session = Some((t(43_200), "S1"));
    assert_eq!(
        role_action(inputs(session, &role), &timing, "u", t(2399)),
        RoleAction::Hold {
            renewal: Some(t(2400))
        }
    );
    assert_eq!(
        role_action(inputs(session, &role), &timing, "u", t(2400)),
        RoleAction::Assume {
            duration_seconds: 3600,
            why: "renewal time reached"
        }
    );
    // The Secret lost them: at once.
    let mut lost = inputs(session, &role);
    lost.role_held = false;
    assert!(matches!(
        role_action(lost, &timing, "u", t(10)),
        RoleAction::Assume {
            why: "role credentials expired or missing from the Secret",
            ..
        }
    ));
}

#[test]
fn a_new_session_or_a_changed_spec_assumes_again_at_once() {
    let role = held_role(0, 3600, 2400);
    let timing = Timing::default();
    assert!(matches!(
        role_action(inputs(Some((t(43_200), "S2")), &role), &timing, "u", t(10)),
        RoleAction::Assume {
            why: "new session",
            ..
        }
    ));
    let mut changed = inputs(Some((t(43_200), "S1")), &role);
    changed.hash = "other";
    assert!(matches!(
        role_action(changed, &timing, "u", t(10)),
        RoleAction::Assume {
            why: "spec.assumeRole changed",
            ..
        }
    ));
}

#[test]
fn role_credentials_never_outlive_the_session() {
    let timing = Timing::default();
    let none = RoleStatus::default();
    // 50 minutes left: ask for 50 minutes less the margin for the call (25 s by default),
    // not the hour the spec says.
    assert_eq!(timing.role_expiry_margin, Duration::from_secs(25));
    assert_eq!(
        role_action(inputs(Some((t(3000), "S1")), &none), &timing, "u", t(0)),
        RoleAction::Assume {
            duration_seconds: 2975,
            why: "no role credentials yet"
        }
    );
    // 15 minutes and the margin left: still (AssumeRole's minimum).
    assert!(matches!(
        role_action(inputs(Some((t(925), "S1")), &none), &timing, "u", t(0)),
        RoleAction::Assume {
            duration_seconds: 900,
            ..
        }
    ));
    // Less than that: no AssumeRole could end in time.
    assert_eq!(
        role_action(inputs(Some((t(924), "S1")), &none), &timing, "u", t(0)),
        RoleAction::SessionEnding {
            session_expiration: t(924)
        }
    );
    let due = held_role(0, 1200, 800);
    assert_eq!(
        role_action(inputs(Some((t(1200), "S1")), &due), &timing, "u", t(800)),
        RoleAction::SessionEnding {
            session_expiration: t(1200)
        },
        "the last set, assumed for the session's remainder, runs out with it"
    );
    // A lower minimum (tests with short lifetimes) moves the line.
    let short = Timing {
        role_min_session_remaining: Duration::from_secs(5),
        ..Timing::default()
    };
    assert!(matches!(
        role_action(inputs(Some((t(30), "S1")), &none), &short, "u", t(0)),
        RoleAction::Assume {
            duration_seconds: 900,
            ..
        }
    ));
}

#[test]
fn failed_assumptions_back_off_unless_the_spec_or_session_changes() {
    let timing = no_jitter();
    let mut role = held_role(0, 3600, 2400);
    role.failed_attempts = 3;
    role.last_failure = Some(Failure {
        time: t(2500),
        reason: "RoleAccessDenied".into(),
        message: "m".into(),
    });
    let session = Some((t(43_200), "S1"));
    let delay = backoff(3, &timing, "u").as_secs_f64();
    assert!((16.0..=20.0).contains(&delay), "{delay}");
    match role_action(inputs(session, &role), &timing, "u", t(2501)) {
        RoleAction::Backoff {
            retry_at,
            why: "renewal time reached",
        } => {
            // A second more: the failure time was rounded down.
            assert_eq!(retry_at.as_second(), t(2500).as_second() + 1 + delay as i64);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        role_action(inputs(session, &role), &timing, "u", t(2522)),
        RoleAction::Assume { .. }
    ));
    let mut changed = inputs(session, &role);
    changed.spec_changed = true;
    assert!(matches!(
        role_action(changed, &timing, "u", t(2501)),
        RoleAction::Assume { .. }
    ));
}

#[test]
fn default_role_session_names_fit_aws_limits() {
    assert_eq!(
        default_role_session_name("team-a", "deploy"),
        "team-a.deploy"
    );
    let long = default_role_session_name(&"n".repeat(63), &"x".repeat(253));
    assert_eq!(long.len(), 64);
    assert_ne!(
        long,
        default_role_session_name(&"n".repeat(63), &"y".repeat(253))
    );
    assert!(crate::sts::validate_role_session_name(&long).is_ok());
    assert!(crate::sts::validate_role_session_name("team-a.deploy").is_ok());
}

#[test]
fn session_secret_names_are_valid_and_distinct() {
    assert_eq!(session_secret_name("deploy"), "deploy-session");
    let a = session_secret_name(&"a".repeat(253));
    let b = session_secret_name(&format!("{}b", "a".repeat(252)));
    assert!(a.len() <= 253 && is_object_name(&a), "{a}");
    assert_ne!(a, b);
    let dotted = session_secret_name(&format!("{}.{}", "a".repeat(200), "b".repeat(52)));
    assert!(is_object_name(&dotted), "{dotted}");
}

#[test]
fn the_role_hash_covers_every_field() {
    let base = role_spec();
    let h = role_hash(&base, "s");
    assert_eq!(h, role_hash(&base.clone(), "s"));
    assert_ne!(h, role_hash(&base, "other"));
    let mut v = base.clone();
    v.duration_seconds = 900;
    assert_ne!(h, role_hash(&v, "s"));
    let mut v = base.clone();
    v.external_id = Some("ext".into());
    assert_ne!(h, role_hash(&v, "s"));
    let mut v = base.clone();
    v.role_arn.push('2');
    assert_ne!(h, role_hash(&v, "s"));
    let mut v = base;
    v.tags.push(SessionTag {
        key: "team".into(),
        value: "a".into(),
    });
    assert_ne!(h, role_hash(&v, "s"));
}

// Conditions (moved from the reconciler).

#[test]
fn conditions_keep_transition_time_when_status_is_unchanged() {
    let mut c = vec![];
    set_condition(
        &mut c,
        READY,
        ("False", "AwaitingTokenCode", "a".into()),
        Some(1),
        t(0),
    );
    set_condition(
        &mut c,
        READY,
        ("False", "Expired", "b".into()),
        Some(2),
        t(10),
    );
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].last_transition_time, t(0));
    assert_eq!(c[0].reason, "Expired");
    assert_eq!(c[0].observed_generation, Some(2));
    set_condition(
        &mut c,
        READY,
        ("True", "Issued", "c".into()),
        Some(2),
        t(20),
    );
    assert_eq!(c[0].last_transition_time, t(20));
    set_condition(
        &mut c,
        ISSUING,
        ("True", "Succeeded", "d".into()),
        Some(2),
        t(30),
    );
    assert_eq!(c.len(), 2);
}

fn example_role() -> AssumeRoleSpec {
    AssumeRoleSpec::example()
}

fn role_facts(assumed_now: bool, valid: bool) -> RoleFacts<'static> {
    RoleFacts {
        assumed_now,
        valid,
        blocker: None,
        approve_hint: Some("approve with `kubectl sts approve x -n y`".into()),
    }
}

#[test]
fn role_condition_says_why_there_are_no_role_credentials() {
    let spec = example_role();
    let mut role = RoleStatus {
        expiration: Some(t(3600)),
        renewal_time: Some(t(2400)),
        assumed_role_arn: Some("arn:aws:sts::123456789012:assumed-role/deployer/y.x".into()),
        ..Default::default()
    };
    let hold = RoleAction::Hold {
        renewal: Some(t(2400)),
    };
    let (s, r, m) = role_condition(&spec, &role, &hold, role_facts(false, true));
    assert_eq!((s, r), ("True", "Assumed"));
    assert!(
        m.contains("assumed-role/deployer") && m.contains("assumed again at"),
        "{m}"
    );

    let ending = RoleAction::SessionEnding {
        session_expiration: t(3600),
    };
    let (s, r, m) = role_condition(&spec, &role, &ending, role_facts(false, true));
    assert_eq!((s, r), ("True", "Assumed"));
    assert!(m.contains("last role credentials"), "{m}");
    let (s, r, m) = role_condition(&spec, &role, &ending, role_facts(false, false));
    assert_eq!((s, r), ("False", "SessionEnding"));
    assert!(m.contains("kubectl sts approve"), "{m}");

    let (s, r, m) = role_condition(
        &spec,
        &role,
        &RoleAction::NoSession,
        role_facts(false, false),
    );
    assert_eq!((s, r), ("False", "WaitingForSession"));
    assert!(m.contains("kubectl sts approve"), "{m}");

    role.failed_attempts = 2;
    role.last_failure = Some(Failure {
        time: t(2500),
        reason: "RoleAccessDenied".into(),
        message: "STS refused AssumeRole of arn:aws:iam::123456789012:role/deployer".into(),
    });
    let backoff = RoleAction::Backoff {
        retry_at: t(2520),
        why: "renewal time reached",
    };
    let (s, r, m) = role_condition(&spec, &role, &backoff, role_facts(false, true));
    assert_eq!(
        (s, r),
        ("True", "RoleAccessDenied"),
        "valid, but renewal failing"
    );
    assert!(m.contains("valid until"), "{m}");
    let (s, r, _) = role_condition(&spec, &role, &backoff, role_facts(false, false));
    assert_eq!((s, r), ("False", "RoleAccessDenied"));
    let blocked = RoleFacts {
        blocker: Some(("EndpointNotAllowed", "spec.endpoint is not allowed")),
        ..role_facts(false, false)
    };
    let (s, r, _) = role_condition(&spec, &role, &backoff, blocked);
    assert_eq!((s, r), ("False", "EndpointNotAllowed"));
}

#[test]
fn ready_follows_the_role_credentials() {
    let status = SessionTokenStatus {
        role: Some(Box::new(RoleStatus {
            expiration: Some(t(3600)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let outcome = |valid: bool| RoleOutcome {
        valid,
        renewal: None,
        next: None,
        reason: "RoleAccessDenied",
        message: "refused".into(),
    };
    let session_ok = || ("True", "Issued", "session valid".to_string());
    let (s, r, m) = role_ready_condition(session_ok(), &outcome(true), &status);
    assert_eq!((s, r), ("True", "Issued"));
    assert!(m.starts_with("role credentials valid until"), "{m}");
    let (s, r, m) = role_ready_condition(session_ok(), &outcome(false), &status);
    assert_eq!((s, r, m.as_str()), ("False", "RoleAccessDenied", "refused"));
    let expired = ("False", "Expired", "the session expired".to_string());
    let (s, r, _) = role_ready_condition(expired, &outcome(false), &status);
    assert_eq!((s, r), ("False", "Expired"), "the session is the cause");
}

#[test]
fn long_messages_are_cut_on_a_char_boundary() {
    let s = "é".repeat(600);
    let cut = truncate(&s, 1000);
    assert!(cut.len() <= 1004 && cut.ends_with('…'));
    assert_eq!(truncate("short", 10), "short");
}
