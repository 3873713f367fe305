//! Property test of the reconciler's decisions over hostile input: arbitrary SessionTokens
//! (annotations with timestamps at and beyond jiff's bounds and garbage, managedFields times at
//! the bounds, status with arbitrary times and counts, conditions by the hundred), arbitrary
//! Secret states, memories, clocks and STS outcomes, through the pure half of `observe`
//! (`reconcile::observe::facts`), `plan::decide` and `plan::settle`. Never a panic, and:
//! - no STS call with a code that was not claimed first (a claim that marks its use, and the
//!   status recording it);
//! - never a write to a Secret the SessionToken does not own (nor a create over an existing one);
//! - at most one STS call;
//! - no code sent again that this SessionToken spent within its validity;
//! - no AssumeRole with an MFA session for a spec it was not approved for (`approvedFor`);
//! - a next wake-up that is not in the past and within a week;
//! - no token code in status, Events or Secrets.

#[path = "support/summary.rs"]
mod summary;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use sts_session_operator::approval::{
    CLAIMED_AT_ANNOTATION, CodeDigest, SpentCode, TOKEN_CODE_ANNOTATION,
};
use sts_session_operator::crd::{
    APPROVED_BY_ANNOTATION, Approval, AssumeRoleSpec, Condition, Failure, MfaSpec,
    OutputSecretSpec, RENEW_ANNOTATION, RenewalSpec, RoleStatus, RolloutRestartTarget,
    SessionToken, SessionTokenSpec, SessionTokenStatus, SourceCredentials, SourceSecretRef,
    WorkloadKind, word,
};
use sts_session_operator::plan::{
    self, Call, Outcome, Remembered, TargetProblem, TargetSeen, Workload, WriteMode,
};
use sts_session_operator::reconcile::Settings;
use sts_session_operator::reconcile::observe::{Reads, facts};
use sts_session_operator::secret::{self, Layout, Ownership};
use sts_session_operator::sts::{AssumedRole, EndpointPolicy, StsError};
use sts_session_operator::{Credentials, Sensitive};

/// Codes the generator plants: digits that no generated time or number contains by chance.
const CODES: [&str; 3] = ["314159", "271828", "161803"];
const UID: &str = "8d1f2f3a-uid";

fn timestamp() -> impl Strategy<Value = Timestamp> {
    let min = Timestamp::MIN.as_second();
    let max = Timestamp::MAX.as_second();
    prop_oneof![
        Just(Timestamp::MIN),
        Just(Timestamp::MAX),
        (min..=max).prop_map(|s| Timestamp::from_second(s).unwrap()),
        (1_700_000_000i64..1_900_000_000).prop_map(|s| Timestamp::from_second(s).unwrap()),
    ]
}

/// A clock: mostly today's, sometimes at the ends of time.
fn clock() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        8 => (1_790_000_000i64..1_800_000_000).prop_map(|s| Timestamp::from_second(s).unwrap()),
        1 => Just(Timestamp::MIN),
        1 => Just(Timestamp::MAX),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("9999-12-30T21:59:59Z".to_string()),
        Just("9999-12-31T23:59:59Z".to_string()),
        Just("-009999-01-01T00:00:00Z".to_string()),
        Just("1970-01-01T00:00:00Z".to_string()),
        Just("2026-11-29T23:00:00Z".to_string()),
        Just("x".to_string()),
        Just("12345".to_string()),
        Just("1234567".to_string()),
        "[ -/:-~]{0,40}",
        "[a-zé€]{0,20}",
    ]
}

/// An annotation's value: any text, or one of the codes.
fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => text(),
        1 => prop::sample::select(CODES.to_vec()).prop_map(str::to_string),
    ]
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let keys = prop::sample::select(vec![
        TOKEN_CODE_ANNOTATION,
        TOKEN_CODE_ANNOTATION,
        APPROVED_BY_ANNOTATION,
        RENEW_ANNOTATION,
        CLAIMED_AT_ANNOTATION,
        CLAIMED_AT_ANNOTATION,
        "kubectl.kubernetes.io/last-applied-configuration",
        "other/annotation",
    ]);
    prop::collection::btree_map(keys.prop_map(str::to_string), annotation_value(), 0..6).prop_map(
        |mut a| {
            // Who approved is a user name, never a code.
            if let Some(by) = a.get_mut(APPROVED_BY_ANNOTATION) {
                *by = by.replace(|c: char| c.is_ascii_digit(), "u");
            }
            a
        },
    )
}

fn managed_fields() -> impl Strategy<Value = Option<Vec<ManagedFieldsEntry>>> {
    prop::option::of(prop::collection::vec(
        (timestamp(), any::<bool>()).prop_map(|(t, code)| {
            let key = if code { TOKEN_CODE_ANNOTATION } else { "x/y" };
            ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                operation: Some("Update".into()),
                time: Some(Time(t)),
                fields_v1: Some(FieldsV1(serde_json::json!({
                    "f:metadata": {"f:annotations": {format!("f:{key}"): {}}}
                }))),
                ..Default::default()
            }
        }),
        0..3,
    ))
}

fn condition() -> impl Strategy<Value = Condition> {
    (
        prop::sample::select(vec![
            "Ready",
            "Issuing",
            "RoleAssumed",
            "RolloutRestart",
            "Other",
        ]),
        prop::sample::select(vec!["True", "False", "Unknown"]),
        prop::sample::select(vec![
            "Issued",
            "TokenCodeClaimed",
            "Expired",
            "AwaitingTokenCode",
        ]),
        timestamp(),
    )
        .prop_map(|(t, s, r, at)| Condition {
            type_: word(t),
            status: word(s),
            reason: word(r),
            message: "m".into(),
            last_transition_time: at,
            observed_generation: None,
        })
}

fn failure() -> impl Strategy<Value = Failure> {
    (timestamp(), text()).prop_map(|(time, reason)| Failure {
        time,
        reason,
        message: "m".into(),
    })
}

fn role_status() -> impl Strategy<Value = RoleStatus> {
    (
        prop::option::of(timestamp()),
        prop::option::of(timestamp()),
        prop::option::of(failure()),
        any::<i32>(),
        any::<i64>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![
            "arn:aws:iam::123456789012:role/deployer",
            "arn:aws:iam::123456789012:role/other",
        ])),
    )
        .prop_map(
            |(expiration, renewal_time, last_failure, failed_attempts, assumptions, keyed, arn)| {
                RoleStatus {
                    role_arn: arn.map(str::to_string),
                    access_key_id: keyed.then(|| "ASIAROLE000000000000".into()),
                    session_access_key_id: keyed.then(|| "ASIASESSION000000000".into()),
                    expiration,
                    renewal_time,
                    assumed_at: expiration,
                    last_failure,
                    failed_attempts,
                    assumptions,
                    ..Default::default()
                }
            },
        )
}

fn status() -> impl Strategy<Value = Option<SessionTokenStatus>> {
    let times = (
        prop::option::of(timestamp()),
        prop::option::of(timestamp()),
        prop::option::of(timestamp()),
        prop::option::of(timestamp()),
    );
    let counts = (any::<i32>(), any::<i64>(), prop::option::of(any::<i64>()));
    prop::option::of(
        (
            times,
            counts,
            prop::collection::vec(condition(), 0..40),
            prop::option::of(failure()),
            prop::option::of(role_status()),
            any::<bool>(),
        )
            .prop_map(
                |(
                    (exp, renew, issued, approved),
                    (failed, rotations, generation),
                    conditions,
                    last_failure,
                    role,
                    keyed,
                )| {
                    SessionTokenStatus {
                        observed_generation: generation,
                        conditions,
                        expiration: exp,
                        renewal_time: renew,
                        issued_at: issued,
                        access_key_id: keyed.then(|| "ASIASESSION000000000".into()),
                        secret_name: keyed.then(|| "old-out".into()),
                        session_hash: None,
                        approved_for: None,
                        last_approval: approved.map(|time| Approval {
                            approved_by: Some("alice".into()),
                            time,
                        }),
                        rotations,
                        last_failure,
                        failed_attempts: failed,
                        session_secret_name: keyed.then(|| "app-session".into()),
                        role: role.map(Box::new),
                    }
                },
            ),
    )
}

fn spec() -> impl Strategy<Value = SessionTokenSpec> {
    (
        prop_oneof![Just(900i32), Just(43_200), Just(129_600), any::<i32>()],
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![
            "app",
            "app-session",
            "keys",
            "shared",
        ])),
        prop::option::of(prop_oneof![
            (any::<i32>()).prop_map(|p| RenewalSpec {
                renew_before_percentage: Some(p),
                renew_before: None
            }),
            text().prop_map(|t| RenewalSpec {
                renew_before_percentage: None,
                renew_before: Some(t)
            }),
        ]),
        prop::option::of(any::<i32>()),
        prop::collection::vec(any::<bool>(), 0..3),
        prop::option::of(prop::sample::select(vec![
            "http://127.0.0.1:4566",
            "https://evil.example.com",
            "not a url",
        ])),
        prop::option::of(prop::sample::select(vec!["us-east-1", "-us-east-1", ""])),
    )
        .prop_map(
            |(duration, mfa, out, renewal, role, targets, endpoint, region)| SessionTokenSpec {
                duration_seconds: duration,
                mfa: mfa.then(|| MfaSpec {
                    serial_number: "arn:aws:iam::123456789012:mfa/alice".into(),
                }),
                source_credentials: SourceCredentials {
                    secret_ref: SourceSecretRef {
                        name: "keys".into(),
                        access_key_id_key: "AWS_ACCESS_KEY_ID".into(),
                        secret_access_key_key: "AWS_SECRET_ACCESS_KEY".into(),
                    },
                },
                region: region.map(str::to_string),
                endpoint: endpoint.map(str::to_string),
                secret: out.map(|n| OutputSecretSpec {
                    name: Some(n.into()),
                    ..Default::default()
                }),
                renewal,
                rollout_restart_targets: targets
                    .iter()
                    .enumerate()
                    .map(|(i, _)| RolloutRestartTarget {
                        kind: WorkloadKind::Deployment,
                        name: format!("w{i}"),
                    })
                    .collect(),
                assume_role: role.map(|d| {
                    Box::new(AssumeRoleSpec {
                        role_arn: "arn:aws:iam::123456789012:role/deployer".into(),
                        role_session_name: None,
                        duration_seconds: d,
                        external_id: None,
                        tags: vec![],
                    })
                }),
                allowed_roles: vec![],
            },
        )
}

fn session_token() -> impl Strategy<Value = SessionToken> {
    (
        spec(),
        annotations(),
        managed_fields(),
        status(),
        prop::option::of(any::<i64>()),
        prop::sample::select(vec!["app".to_string(), "a".repeat(253)]),
        // status.approvedFor: none, another spec's, or this one's.
        0..3u8,
    )
        .prop_map(
            |(spec, annotations, managed, status, generation, name, approved_for)| {
                let scope = plan::approval_scope(
                    &spec,
                    spec.region.as_deref().unwrap_or("us-east-1"),
                    spec.endpoint.as_deref(),
                );
                let status = status.map(|mut s| {
                    s.approved_for = match approved_for {
                        0 => None,
                        1 => Some("0".repeat(64)),
                        _ => Some(scope),
                    };
                    s
                });
                let mut st = SessionToken::new(&name, spec);
                st.metadata.namespace = Some("team-a".into());
                st.metadata.uid = Some(UID.into());
                st.metadata.generation = generation;
                st.metadata.annotations = Some(annotations);
                st.metadata.managed_fields = managed;
                st.status = status;
                st
            },
        )
}

fn credentials() -> impl Strategy<Value = Credentials> {
    (timestamp(), "[A-Z0-9]{16,24}").prop_map(|(expiration, id)| Credentials {
        access_key_id: format!("ASIA{id}"),
        secret_access_key: Sensitive::new("secret-canary-S3CR3T".into()),
        session_token: Sensitive::new("token-canary-T0K3N".into()),
        expiration,
    })
}

/// A Secret at a name: absent, ours (holding some credentials), foreign, or ours with garbage.
fn secret_state(name: &'static str) -> impl Strategy<Value = Option<Secret>> {
    (0u8..5, credentials()).prop_map(move |(kind, creds)| {
        let owner = |uid: &str| OwnerReference {
            api_version: "stssession.dev/v1alpha1".into(),
            kind: "SessionToken".into(),
            name: "app".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        };
        let data = secret::render_data(&creds, &Layout::default());
        let secret = |owners: Vec<OwnerReference>, data| Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team-a".into()),
                uid: Some(format!("{name}-uid")),
                resource_version: Some("7".into()),
                owner_references: Some(owners),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        match kind {
            0 => None,
            1 => Some(secret(vec![owner(UID)], data)),
            2 => Some(secret(vec![owner("someone-else")], data)),
            3 => Some(secret(vec![], data)),
            _ => Some(secret(
                vec![owner(UID)],
                BTreeMap::from([("AWS_ACCESS_KEY_ID".into(), ByteString(vec![0xff, 0xfe]))]),
            )),
        }
    })
}

fn source() -> impl Strategy<Value = Option<Secret>> {
    prop::option::of(prop::sample::select(vec![
        (
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("ASIAIOSFODNN7EXAMPLE", "x"),
        ("", ""),
    ]))
    .prop_map(|keys| {
        keys.map(|(id, key)| Secret {
            metadata: ObjectMeta {
                name: Some("keys".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("AWS_ACCESS_KEY_ID".into(), ByteString(id.into())),
                ("AWS_SECRET_ACCESS_KEY".into(), ByteString(key.into())),
            ])),
            ..Default::default()
        })
    })
}

fn targets() -> impl Strategy<Value = Vec<TargetSeen>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::option::of(text()),
            prop::option::of(timestamp()),
        ),
        0..3,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (ok, restarted_for, created))| TargetSeen {
                target: RolloutRestartTarget {
                    kind: WorkloadKind::Deployment,
                    name: format!("w{i}"),
                },
                state: if ok {
                    Ok(Workload {
                        restarted_for,
                        created,
                    })
                } else {
                    Err(TargetProblem::of(
                        "Deployment w",
                        "get",
                        Some(403),
                        "Forbidden",
                    ))
                },
            })
            .collect()
    })
}

fn memory() -> impl Strategy<Value = Remembered> {
    (
        prop::option::of(credentials()),
        prop::option::of((timestamp(), any::<u64>())),
        prop::option::of(timestamp()),
        any::<u32>(),
        prop::option::of(timestamp()),
    )
        .prop_map(|(unsaved, sent, expired, misses, renewed)| Remembered {
            unsaved: unsaved.map(|c| (c, None)),
            code_required_sent: sent,
            expired_sent: expired,
            source_misses: misses,
            renewed_on_request: renewed,
            spent_code: None,
        })
}

fn sts_error() -> impl Strategy<Value = StsError> {
    prop_oneof![
        Just(StsError::Timeout),
        Just(StsError::TokenCodeRejected {
            code: "AccessDenied".into(),
            message: "m".into()
        }),
        Just(StsError::InvalidRequest {
            message: "m".into()
        }),
        Just(StsError::Throttled {
            code: "Throttling".into(),
            message: "m".into()
        }),
        Just(StsError::SourceCredentialsInvalid {
            code: None,
            message: "m".into()
        }),
        Just(StsError::Service {
            code: "x".into(),
            message: "m".into(),
            status: 500
        }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    st: SessionToken,
    out: Option<Secret>,
    old: Option<Secret>,
    kept: Option<Secret>,
    source: Option<Secret>,
    targets: Vec<TargetSeen>,
    memory: Remembered,
    now: Timestamp,
    result: Result<Credentials, StsError>,
    /// The code last claimed (one of [`CODES`]) and how many seconds before `now`.
    spent: Option<(usize, i64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        session_token(),
        (
            secret_state("app"),
            secret_state("old-out"),
            secret_state("app-session"),
            source(),
        ),
        targets(),
        memory(),
        clock(),
        prop_oneof![credentials().prop_map(Ok), sts_error().prop_map(Err)],
        prop::option::of((0..CODES.len(), -10i64..400)),
    )
        .prop_map(
            |(st, (out, old, kept, source), targets, memory, now, result, spent)| Case {
                st,
                out,
                old,
                kept,
                source,
                targets,
                memory,
                now,
                result,
                spent,
            },
        )
}

fn settings() -> Settings {
    Settings {
        default_region: "us-east-1".into(),
        endpoint_policy: EndpointPolicy::from_patterns(&["http://127.0.0.1:*".to_string()])
            .unwrap(),
        timing: plan::Timing::default(),
        instance: "test".into(),
    }
}

fn check(mut c: Case) -> Result<(), TestCaseError> {
    c.memory.spent_code = c.spent.and_then(|(i, ago)| {
        Some(SpentCode {
            digest: CodeDigest::of(CODES.get(i)?),
            claimed_at: c
                .now
                .checked_sub(jiff::SignedDuration::from_secs(ago))
                .ok()?,
        })
    });
    let f = facts(
        Arc::new(c.st.clone()),
        Reads {
            out: c.out,
            old: c.old,
            source: c.source,
            kept: c.kept,
            targets: c.targets,
        },
        &settings(),
        Duration::from_secs(10),
        c.memory,
        c.now,
    );
    let plan = plan::decide(&f);
    if plan.wait.is_some() {
        prop_assert!(plan.claims.is_empty() && plan.call.is_none());
        return Ok(());
    }
    let code_claimed = plan
        .claims
        .iter()
        .any(|cl| cl.key == TOKEN_CODE_ANNOTATION && cl.marks_use());
    let outcome = match &plan.call {
        None => Outcome::NoCall,
        Some(Call::GetSessionToken { code, .. }) => {
            if let Some(code) = code {
                prop_assert!(code_claimed, "a code used without a claim marking it");
                prop_assert!(
                    plan.record_claim.is_some(),
                    "a code used without its claim in status"
                );
                let annotated = f.approval.code.as_deref();
                prop_assert_eq!(Some(code.expose()), annotated);
                let spent = f
                    .memory
                    .spent_code
                    .filter(|s| s.current(f.now) && s.digest == CodeDigest::of(code.expose()));
                prop_assert!(spent.is_none(), "a spent code sent again");
            }
            Outcome::Session(c.result.clone())
        }
        Some(Call::AssumeRole { .. }) => {
            prop_assert!(
                f.approved_for_spec(&f.status),
                "the session used for a spec it was not approved for"
            );
            Outcome::Role(c.result.clone().map(|credentials| AssumedRole {
                credentials,
                assumed_role_arn: None,
            }))
        }
    };
    if !matches!(plan.call, Some(Call::GetSessionToken { code: Some(_), .. })) {
        prop_assert!(plan.record_claim.is_none());
    }
    let fx = plan::settle(&f, plan.draft, outcome);
    for w in &fx.writes {
        let seen = if w.name == f.out.name {
            &f.out
        } else if w.name == f.kept.name {
            &f.kept
        } else {
            return Err(TestCaseError::fail(format!("a write to {:?}", w.name)));
        };
        prop_assert!(
            !matches!(seen.ownership, Ownership::Foreign(_)),
            "a write to a foreign Secret"
        );
        if w.mode == WriteMode::Create {
            prop_assert!(seen.ownership == Ownership::Absent || seen.existing.is_none());
        }
    }
    for d in &fx.deletes {
        let ours = [f.out.ours(), f.kept.ours(), f.old.as_ref()]
            .into_iter()
            .flatten()
            .any(|s| s.metadata.uid == d.uid);
        prop_assert!(ours, "a delete of a Secret not ours: {:?}", d.name);
    }
    if let Some(wake) = fx.wake {
        prop_assert!(wake >= f.now, "a wake-up in the past");
    }
    let delay = plan::requeue_after(f.now, &[fx.wake]);
    prop_assert!(delay.is_none_or(|d| d <= plan::MAX_WAIT));
    let said = format!(
        "{} {:?} {:?}",
        serde_json::to_string(&fx.status).unwrap_or_default(),
        fx.events,
        fx.writes.iter().map(|w| &w.desired).collect::<Vec<_>>()
    );
    for code in CODES {
        prop_assert!(
            !contains_number(&said, code),
            "a token code in what is written"
        );
    }
    Ok(())
}

/// Whether `text` holds `number` as a whole number (not inside a longer one).
fn contains_number(text: &str, number: &str) -> bool {
    text.match_indices(number).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + number.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn decisions_are_total_and_keep_their_invariants() {
    let long = std::env::var_os("STS_TEST_LONG").is_some();
    let cases: u32 = if long { 200_000 } else { 20_000 };
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner.run(&case(), check).unwrap_or_else(|e| panic!("{e}"));
    summary::record("decide_property", &[("fuzz_cases", u64::from(cases))]);
}
