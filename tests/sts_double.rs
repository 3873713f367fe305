//! Tests of the STS test double (tests/testkit/src/sts_double), driven by aws-sdk-sts itself so
//! that the wire format, SigV4 and error mapping are checked against the real client.

use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::result::CreateUnhandledError;
use jiff::Timestamp;
use testkit::sts_double::{
    CodePolicy, Fault, FaultKind, HoldFilter, MSG_INVALID_MFA_CODE, MSG_INVALID_MFA_SERIAL,
    MSG_MFA_INCOMPLETE, MSG_SESSION_CREDENTIALS, NewUser, Outcome, RoleSpec, StsDouble,
    StsDoubleConfig, TestUser, UserKind, sigv4, totp,
};

// ---------------------------------------------------------------------------------------------
// helpers

/// The SDK configured the way the operator will configure it (no aws-config): explicit region,
/// endpoint, credentials and a rustls/ring HTTP client (plain HTTP works through it).
fn sts_client_in(
    double: &StsDouble,
    region: &str,
    creds: Credentials,
    retry: RetryConfig,
) -> aws_sdk_sts::Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(double.endpoint())
        .credentials_provider(creds)
        .retry_config(retry)
        .http_client(http_client)
        .build();
    aws_sdk_sts::Client::from_conf(config)
}

/// Retries disabled, so each SDK call is exactly one request.
fn sts_client(double: &StsDouble, creds: Credentials) -> aws_sdk_sts::Client {
    sts_client_in(double, "us-east-1", creds, RetryConfig::disabled())
}

fn start() -> StsDouble {
    StsDouble::start(StsDoubleConfig::default()).expect("start STS test double")
}

/// If the current TOTP window ends within 3 s, waits for the next one, so a code computed now is
/// still current when the double checks it.
async fn avoid_window_edge() {
    let now = Timestamp::now();
    let into_window = now.as_millisecond().rem_euclid(30_000);
    if into_window > 27_000 {
        tokio::time::sleep(Duration::from_millis((30_000 - into_window + 200) as u64)).await;
    }
}

type GstResult = Result<
    aws_sdk_sts::operation::get_session_token::GetSessionTokenOutput,
    SdkError<aws_sdk_sts::operation::get_session_token::GetSessionTokenError>,
>;

async fn get_session_token(
    client: &aws_sdk_sts::Client,
    user: &TestUser,
    code: &str,
    duration: Option<i32>,
) -> GstResult {
    client
        .get_session_token()
        .set_duration_seconds(duration)
        .serial_number(user.serial_number().expect("user has MFA"))
        .token_code(code)
        .send()
        .await
}

/// The HTTP status and the error code the SDK read from the response.
fn status_and_code<E>(
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> (Option<u16>, Option<String>, Option<String>)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + CreateUnhandledError + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let service_error = err.into_service_error();
    let code = service_error.meta().code().map(str::to_owned);
    let message = service_error.message().map(str::to_owned);
    (status, code, message)
}

fn expires_in_secs(expiration: &aws_sdk_sts::primitives::DateTime) -> i64 {
    expiration.secs() - Timestamp::now().as_second()
}

/// One raw HTTP/1.1 request to the double (`Connection: close`); returns status and body.
async fn raw_post(double: &StsDouble, headers: &[(&str, String)], body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", double.port()))
        .await
        .unwrap();
    let mut request = String::from("POST / HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// TOTP

#[test]
fn totp_matches_rfc_6238_sha1_vectors() {
    let seed = b"12345678901234567890";
    for (t, expected) in [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ] {
        assert_eq!(totp::hotp(seed, totp::counter_at(t), 8), expected, "t={t}");
        assert_eq!(totp::code_at_unix(seed, t), expected[2..], "t={t}");
    }
    assert_eq!(
        totp::base32_encode(seed),
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    );
    assert_eq!(
        totp::base32_decode("gezd gnbv-gy3tqojqgezdgnbvgy3tqojq").unwrap(),
        seed
    );
    let t = Timestamp::from_second(1_111_111_111).unwrap();
    assert!(totp::verify(seed, "050471", t));
    assert!(totp::verify(
        seed,
        &totp::code_at_unix(seed, 1_111_111_111 - 30),
        t
    ));
    assert!(totp::verify(
        seed,
        &totp::code_at_unix(seed, 1_111_111_111 + 30),
        t
    ));
    assert!(!totp::verify(
        seed,
        &totp::code_at_unix(seed, 1_111_111_111 - 60),
        t
    ));
}

// ---------------------------------------------------------------------------------------------
// GetSessionToken

#[tokio::test]
async fn right_code_returns_session_credentials() {
    let double = start();
    let user = double.default_user();
    assert!(user.access_key_id.starts_with("AKIA") && user.access_key_id.len() == 20);
    assert_eq!(
        user.serial_number(),
        Some("arn:aws:iam::123456789012:mfa/test-user")
    );
    let client = sts_client(&double, user.sdk_credentials());
    avoid_window_edge().await;
    let code = user.totp_code_now();

    let out = get_session_token(&client, &user, &code, None)
        .await
        .expect("GetSessionToken");
    let creds = out.credentials().expect("credentials");
    assert!(
        creds.access_key_id().starts_with("ASIA"),
        "{}",
        creds.access_key_id()
    );
    assert_eq!(creds.secret_access_key().len(), 40);
    assert!(creds.session_token().len() > 100);
    let remaining = expires_in_secs(creds.expiration());
    assert!(
        (43_195..=43_200).contains(&remaining),
        "default 12 h, got {remaining}"
    );

    let issued = double
        .issued_session(creds.access_key_id())
        .expect("session remembered");
    assert_eq!(issued.secret_access_key, creds.secret_access_key());
    assert_eq!(issued.session_token, creds.session_token());
    assert_eq!(issued.expiration.as_second(), creds.expiration().secs());
    assert_eq!(issued.user_access_key_id, user.access_key_id);
    assert!(issued.mfa_authenticated);

    let calls = double.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.action, "GetSessionToken");
    assert_eq!(
        call.access_key_id.as_deref(),
        Some(user.access_key_id.as_str())
    );
    assert_eq!(call.region.as_deref(), Some("us-east-1"));
    assert_eq!(call.serial_number.as_deref(), user.serial_number());
    assert_eq!(call.token_code_used.as_deref(), Some(code.as_str()));
    assert_eq!(call.code_accepted, Some(true));
    assert_eq!(call.duration_seconds, None);
    assert_eq!(call.outcome, Outcome::Ok);
    assert_eq!(
        call.issued_access_key_id.as_deref(),
        Some(creds.access_key_id())
    );
    assert_eq!(double.uses_of_code(&code), 1);

    // The session credentials really work against the double.
    let session_client = sts_client(&double, issued.sdk_credentials());
    let identity = session_client
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    assert_eq!(identity.arn(), Some(user.arn.as_str()));
    assert_eq!(identity.account(), Some("123456789012"));
}

#[tokio::test]
async fn two_calls_return_different_credentials_and_a_code_is_accepted_once() {
    let double = start();
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());
    avoid_window_edge().await;
    let code = user.totp_code_now();
    // The next window's code is accepted too (one step either side).
    let next = user.totp_code_at(Timestamp::now() + Duration::from_secs(30));
    let a = get_session_token(&client, &user, &code, Some(900))
        .await
        .unwrap();
    let b = get_session_token(&client, &user, &next, Some(900))
        .await
        .unwrap();
    let (a, b) = (a.credentials().unwrap(), b.credentials().unwrap());
    assert_ne!(a.access_key_id(), b.access_key_id());
    assert_ne!(a.secret_access_key(), b.secret_access_key());
    assert_ne!(a.session_token(), b.session_token());
    // Like AWS: a code is good once per device; sent again, it is refused like a wrong one.
    let err = get_session_token(&client, &user, &code, Some(900))
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(err).2.as_deref(),
        Some(MSG_INVALID_MFA_CODE)
    );
    assert_eq!(double.uses_of_code(&code), 2, "uses are counted");
    assert_eq!(double.accepted_uses_of_code(&code), 1);
    assert_eq!(double.calls_by_key(&user.access_key_id).len(), 3);
    assert_eq!(double.calls()[0].duration_seconds, Some(900));
    assert_eq!(double.issued_sessions().len(), 2);
    // Another device's code for the same window is its own.
    let other = double.add_user(UserKind::IamUser);
    let other_client = sts_client(&double, other.sdk_credentials());
    get_session_token(&other_client, &other, &other.totp_code_now(), None)
        .await
        .expect("another device");
    double.reset_counters();
    assert_eq!(double.call_count(), 0);
    assert_eq!(double.uses_of_code(&code), 0);
    assert_eq!(
        double.issued_sessions().len(),
        3,
        "sessions survive reset_counters"
    );
}

#[tokio::test]
async fn returned_lifetime_override_is_honoured_and_enforced() {
    let double = start();
    double.set_returned_lifetime(Some(Duration::from_secs(2)));
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());
    avoid_window_edge().await;
    let out = get_session_token(&client, &user, &user.totp_code_now(), Some(3600))
        .await
        .unwrap();
    let creds = out.credentials().unwrap();
    let remaining = expires_in_secs(creds.expiration());
    assert!(
        (1..=2).contains(&remaining),
        "expected ~2 s, got {remaining}"
    );
    let issued = double.issued_session(creds.access_key_id()).unwrap();
    assert_eq!(issued.granted_duration_seconds, 3600);

    let session_client = sts_client(&double, issued.sdk_credentials());
    session_client
        .get_caller_identity()
        .send()
        .await
        .expect("valid before expiry");
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let err = session_client
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("ExpiredToken"));

    double.set_returned_lifetime(None);
    // (The current window's code was used: the next one's.)
    let next = user.totp_code_at(Timestamp::now() + Duration::from_secs(30));
    let out = get_session_token(&client, &user, &next, Some(3600))
        .await
        .unwrap();
    let remaining = expires_in_secs(out.credentials().unwrap().expiration());
    assert!((3595..=3600).contains(&remaining), "got {remaining}");
    // expire_session forces ExpiredToken without waiting.
    let key = out.credentials().unwrap().access_key_id().to_owned();
    let session_client = sts_client(
        &double,
        double.issued_session(&key).unwrap().sdk_credentials(),
    );
    session_client.get_caller_identity().send().await.unwrap();
    assert!(double.expire_session(&key));
    let err = session_client
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("ExpiredToken"));
}

#[tokio::test]
async fn wrong_code_or_serial_is_access_denied() {
    let double = start();
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());
    avoid_window_edge().await;
    let right = user.totp_code_now();
    let wrong = if right == "000000" {
        "000001".to_owned()
    } else {
        "000000".to_owned()
    };

    let err = get_session_token(&client, &user, &wrong, None)
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(err),
        (
            Some(403),
            Some("AccessDenied".to_owned()),
            Some(MSG_INVALID_MFA_CODE.to_owned())
        )
    );
    // A code from three windows ago is not accepted either.
    let stale = user.totp_code_at(Timestamp::now() - Duration::from_secs(90));
    if stale != right {
        let err = get_session_token(&client, &user, &stale, None)
            .await
            .unwrap_err();
        assert_eq!(status_and_code(err).1.as_deref(), Some("AccessDenied"));
    }
    // Wrong serial (another user's device) with the right code.
    let other = double.add_user(UserKind::IamUser);
    let err = client
        .get_session_token()
        .serial_number(other.serial_number().unwrap())
        .token_code(&right)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(err),
        (
            Some(403),
            Some("AccessDenied".to_owned()),
            Some(MSG_INVALID_MFA_SERIAL.to_owned())
        )
    );
    // Serial without code.
    let err = client
        .get_session_token()
        .serial_number(user.serial_number().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(err).2.as_deref(), Some(MSG_MFA_INCOMPLETE));
    // Malformed code.
    let err = get_session_token(&client, &user, "12345", None)
        .await
        .unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("ValidationError"));

    assert_eq!(double.uses_of_code(&wrong), 1);
    assert_eq!(double.accepted_uses_of_code(&wrong), 0);
    assert_eq!(double.calls()[0].code_accepted, Some(false));
    assert!(double.issued_sessions().is_empty());
    // The previous window's code is still accepted (clock drift tolerance).
    let previous = user.totp_code_at(Timestamp::now() - Duration::from_secs(30));
    get_session_token(&client, &user, &previous, None)
        .await
        .expect("previous window accepted");
}

#[tokio::test]
async fn code_policies_and_reject_list() {
    let double = start();
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());

    double.set_code_policy(CodePolicy::AcceptAny);
    double.set_rejected_codes(["111111"]);
    for code in ["123456", "654321", "000000"] {
        get_session_token(&client, &user, code, None)
            .await
            .expect("AcceptAny");
    }
    let err = get_session_token(&client, &user, "111111", None)
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(err).2.as_deref(),
        Some(MSG_INVALID_MFA_CODE)
    );
    // The serial is still checked under AcceptAny.
    let err = client
        .get_session_token()
        .serial_number("arn:aws:iam::123456789012:mfa/nobody")
        .token_code("123456")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(err).2.as_deref(),
        Some(MSG_INVALID_MFA_SERIAL)
    );

    double.set_code_policy(CodePolicy::RejectAll);
    avoid_window_edge().await;
    let err = get_session_token(&client, &user, &user.totp_code_now(), None)
        .await
        .unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("AccessDenied"));

    double.set_code_policy(CodePolicy::Totp);
    double.set_rejected_codes(Vec::<String>::new());
    get_session_token(&client, &user, &user.totp_code_now(), None)
        .await
        .expect("Totp again");
    assert_eq!(double.issued_sessions().len(), 4);
}

#[tokio::test]
async fn mfa_is_optional_unless_required() {
    let double = start();
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());
    let out = client
        .get_session_token()
        .send()
        .await
        .expect("no MFA, not required");
    let key = out.credentials().unwrap().access_key_id().to_owned();
    assert!(!double.issued_session(&key).unwrap().mfa_authenticated);
    double.set_require_mfa(true);
    let err = client.get_session_token().send().await.unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("AccessDenied"));
}

#[tokio::test]
async fn session_credentials_cannot_call_get_session_token() {
    let double = start();
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());
    let out = client.get_session_token().send().await.unwrap();
    let session = double
        .issued_session(out.credentials().unwrap().access_key_id())
        .unwrap();
    let session_client = sts_client(&double, session.sdk_credentials());
    let err = session_client.get_session_token().send().await.unwrap_err();
    assert_eq!(
        status_and_code(err),
        (
            Some(403),
            Some("AccessDenied".to_owned()),
            Some(MSG_SESSION_CREDENTIALS.to_owned())
        )
    );
}

#[tokio::test]
async fn iam_user_duration_is_validated() {
    let double = start();
    double.set_code_policy(CodePolicy::AcceptAny);
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());
    for bad in [899, 129_601] {
        let err = get_session_token(&client, &user, "123456", Some(bad))
            .await
            .unwrap_err();
        let (status, code, message) = status_and_code(err);
        assert_eq!(
            (status, code.as_deref()),
            (Some(400), Some("ValidationError")),
            "{bad}"
        );
        assert!(message.unwrap().contains("durationSeconds"));
    }
    for good in [900, 129_600] {
        let out = get_session_token(&client, &user, "123456", Some(good))
            .await
            .unwrap();
        let remaining = expires_in_secs(out.credentials().unwrap().expiration());
        assert!(
            (i64::from(good) - 5..=i64::from(good)).contains(&remaining),
            "{good}: {remaining}"
        );
    }
}

#[tokio::test]
async fn account_root_duration_is_clamped_to_one_hour() {
    let double = start();
    double.set_code_policy(CodePolicy::AcceptAny);
    let root = double.add_user(UserKind::AccountRoot);
    assert_eq!(root.arn, "arn:aws:iam::123456789012:root");
    assert_eq!(
        root.serial_number(),
        Some("arn:aws:iam::123456789012:mfa/root-account-mfa-device")
    );
    let client = sts_client(&double, root.sdk_credentials());
    for (asked, expected) in [
        (Some(7200), 3600),
        (None, 3600),
        (Some(129_600), 3600),
        (Some(1800), 1800),
    ] {
        let out = get_session_token(&client, &root, "123456", asked)
            .await
            .unwrap();
        let creds = out.credentials().unwrap();
        let remaining = expires_in_secs(creds.expiration());
        assert!(
            (expected - 5..=expected).contains(&remaining),
            "{asked:?}: {remaining}"
        );
        assert_eq!(
            double
                .issued_session(creds.access_key_id())
                .unwrap()
                .granted_duration_seconds,
            expected
        );
    }
    for bad in [600, 129_601] {
        let err = get_session_token(&client, &root, "123456", Some(bad))
            .await
            .unwrap_err();
        assert_eq!(
            status_and_code(err).1.as_deref(),
            Some("ValidationError"),
            "{bad}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SigV4

#[tokio::test]
async fn wrong_secret_is_signature_does_not_match() {
    let double = start();
    let user = double.default_user();
    let wrong = Credentials::new(&user.access_key_id, "x".repeat(40), None, None, "test");
    let err = sts_client(&double, wrong)
        .get_session_token()
        .send()
        .await
        .unwrap_err();
    let (status, code, _) = status_and_code(err);
    assert_eq!(
        (status, code.as_deref()),
        (Some(403), Some("SignatureDoesNotMatch"))
    );
    assert_eq!(
        double.calls()[0].outcome.error_code(),
        Some("SignatureDoesNotMatch")
    );
    // ...and the right secret, from another region's scope, is accepted.
    let client = sts_client_in(
        &double,
        "eu-west-1",
        user.sdk_credentials(),
        RetryConfig::disabled(),
    );
    client
        .get_session_token()
        .send()
        .await
        .expect("signed for eu-west-1");
    assert_eq!(double.calls()[1].region.as_deref(), Some("eu-west-1"));
}

#[tokio::test]
async fn unknown_or_removed_key_is_invalid_client_token_id() {
    let double = start();
    let unknown = Credentials::new("AKIAUNKNOWNKEY000000", "x".repeat(40), None, None, "test");
    let err = sts_client(&double, unknown)
        .get_session_token()
        .send()
        .await
        .unwrap_err();
    let (status, code, _) = status_and_code(err);
    assert_eq!(
        (status, code.as_deref()),
        (Some(403), Some("InvalidClientTokenId"))
    );

    let user = double.add_user_with(NewUser {
        kind: UserKind::IamUser,
        name: Some("leaver".into()),
        mfa: false,
    });
    assert!(user.mfa.is_none());
    let client = sts_client(&double, user.sdk_credentials());
    let out = client.get_session_token().send().await.unwrap();
    assert!(double.remove_user(&user.access_key_id));
    let err = client.get_session_token().send().await.unwrap_err();
    assert_eq!(
        status_and_code(err).1.as_deref(),
        Some("InvalidClientTokenId")
    );
    // Sessions issued before the key was deleted keep working, as in AWS.
    let session = double
        .issued_session(out.credentials().unwrap().access_key_id())
        .unwrap();
    let identity = sts_client(&double, session.sdk_credentials())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(
        identity.arn(),
        Some("arn:aws:iam::123456789012:user/leaver")
    );
}

#[tokio::test]
async fn raw_requests_missing_auth_and_clock_skew() {
    let double = start();
    let user = double.default_user();
    let host = format!("127.0.0.1:{}", double.port());
    let body = "Action=GetSessionToken&Version=2011-06-15&DurationSeconds=900";
    let form = "application/x-www-form-urlencoded".to_owned();

    let (status, text) = raw_post(
        &double,
        &[("host", host.clone()), ("content-type", form.clone())],
        body,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        text.contains("<Code>MissingAuthenticationToken</Code>"),
        "{text}"
    );
    assert!(
        text.contains(r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">"#),
        "{text}"
    );

    let signed = |at: Timestamp| {
        let amz_date = at.strftime("%Y%m%dT%H%M%SZ").to_string();
        let mut headers = hyper::HeaderMap::new();
        headers.insert("content-type", form.parse().unwrap());
        headers.insert("host", host.parse().unwrap());
        headers.insert("x-amz-date", amz_date.parse().unwrap());
        let names: Vec<String> = ["content-type", "host", "x-amz-date"]
            .map(String::from)
            .to_vec();
        let auth = sigv4::authorization_header(
            &user.access_key_id,
            &user.secret_access_key,
            "us-east-1",
            &amz_date,
            "POST",
            "/",
            None,
            &headers,
            &names,
            body.as_bytes(),
        );
        vec![
            ("host", host.clone()),
            ("content-type", form.clone()),
            ("x-amz-date", amz_date),
            ("authorization", auth),
        ]
    };
    let (status, text) = raw_post(&double, &signed(Timestamp::now()), body).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.starts_with(
            r#"<GetSessionTokenResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">"#
        ),
        "{text}"
    );
    assert!(text.contains("<AccessKeyId>ASIA"), "{text}");
    let (status, text) = raw_post(
        &double,
        &signed(Timestamp::now() - Duration::from_secs(20 * 60)),
        body,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        text.contains("<Code>SignatureDoesNotMatch</Code>") && text.contains("Signature expired"),
        "{text}"
    );
    // Tampered body: same headers, different DurationSeconds.
    let headers = signed(Timestamp::now());
    let (status, text) = raw_post(&double, &headers, &body.replace("900", "901")).await;
    assert_eq!(status, 403);
    assert!(
        text.contains("<Code>SignatureDoesNotMatch</Code>"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors and fault injection

#[tokio::test]
async fn every_error_code_is_read_by_the_sdk() {
    let double = start();
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());
    for (kind, status, code) in [
        (FaultKind::Throttling, 400, "Throttling"),
        (FaultKind::InternalFailure, 500, "InternalFailure"),
        (FaultKind::ServiceUnavailable, 503, "ServiceUnavailable"),
    ] {
        double.inject_faults(Fault::Next { count: 1, kind });
        let err = client.get_session_token().send().await.unwrap_err();
        assert_eq!(status_and_code(err).0, Some(status), "{code}");
        double.inject_faults(Fault::Next { count: 1, kind });
        let err = client.get_session_token().send().await.unwrap_err();
        assert_eq!(err.into_service_error().meta().code(), Some(code));
    }
    client
        .get_session_token()
        .send()
        .await
        .expect("queue drained");
    let calls = double.calls();
    assert_eq!(calls.len(), 7);
    assert!(calls[..6].iter().all(|c| c.injected));
    assert!(!calls[6].injected && calls[6].outcome.is_ok());
}

#[tokio::test]
async fn throttling_is_reported_and_retried_as_throttling() {
    let double = start();
    let user = double.default_user();
    double.inject_faults(Fault::Next {
        count: 1,
        kind: FaultKind::Throttling,
    });
    let err = sts_client(&double, user.sdk_credentials())
        .get_session_token()
        .send()
        .await
        .unwrap_err();
    let (status, code, message) = status_and_code(err);
    assert_eq!(
        (status, code.as_deref(), message.as_deref()),
        (Some(400), Some("Throttling"), Some("Rate exceeded"))
    );
    assert_eq!(double.call_count(), 1);

    // With the SDK's standard retry (3 attempts), persistent throttling ends as Throttling after 3 calls.
    double.reset_counters();
    double.inject_faults(Fault::Next {
        count: 10,
        kind: FaultKind::Throttling,
    });
    let client = sts_client_in(
        &double,
        "us-east-1",
        user.sdk_credentials(),
        RetryConfig::standard(),
    );
    let err = client.get_session_token().send().await.unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("Throttling"));
    assert_eq!(double.call_count(), 3);
    double.clear_faults();
    client
        .get_session_token()
        .send()
        .await
        .expect("faults cleared");
}

#[tokio::test]
async fn server_errors_are_retried_by_the_sdk_default_retry() {
    let double = start();
    let user = double.default_user();
    double.inject_faults(Fault::Next {
        count: 2,
        kind: FaultKind::InternalFailure,
    });
    let client = sts_client_in(
        &double,
        "us-east-1",
        user.sdk_credentials(),
        RetryConfig::standard(),
    );
    client
        .get_session_token()
        .send()
        .await
        .expect("succeeds on the third attempt");
    let calls = double.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        calls[0].outcome,
        Outcome::Error {
            code: "InternalFailure".into(),
            status: 500
        }
    );
    assert_eq!(
        calls[1].outcome,
        Outcome::Error {
            code: "InternalFailure".into(),
            status: 500
        }
    );
    assert_eq!(calls[2].outcome, Outcome::Ok);
    assert_eq!(double.issued_sessions().len(), 1);
}

#[tokio::test]
async fn outages_random_faults_and_delay() {
    let double = start();
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());

    double.inject_faults(Fault::Outage(FaultKind::ConnectionReset));
    for _ in 0..2 {
        let err = client.get_session_token().send().await.unwrap_err();
        assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    }
    double.end_outage();
    client
        .get_session_token()
        .send()
        .await
        .expect("outage over");
    let calls = double.calls();
    assert_eq!(calls[0].outcome, Outcome::ConnectionReset);
    assert_eq!(calls[1].outcome, Outcome::ConnectionReset);
    assert!(calls[2].outcome.is_ok());

    double.inject_faults(Fault::Outage(FaultKind::ServiceUnavailable));
    let err = client.get_session_token().send().await.unwrap_err();
    assert_eq!(
        status_and_code(err).1.as_deref(),
        Some("ServiceUnavailable")
    );
    double.clear_faults();

    double.inject_faults(Fault::Random {
        probability: 1.0,
        kind: FaultKind::Throttling,
    });
    for _ in 0..3 {
        let err = client.get_session_token().send().await.unwrap_err();
        assert_eq!(status_and_code(err).1.as_deref(), Some("Throttling"));
    }
    double.clear_faults();
    double.inject_faults(Fault::Random {
        probability: 0.0,
        kind: FaultKind::Throttling,
    });
    client
        .get_session_token()
        .send()
        .await
        .expect("probability 0");
    double.clear_faults();

    double.inject_faults(Fault::Delay(Duration::from_millis(1200)));
    let started = Instant::now();
    client
        .get_session_token()
        .send()
        .await
        .expect("slow but fine");
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    double.inject_faults(Fault::Delay(Duration::ZERO));
    let started = Instant::now();
    client.get_session_token().send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1000));
}

/// A hold keeps one matching request in flight until released: the caller knows it arrived
/// (with its code) and the SDK call does not return before the release; requests the filter
/// does not match pass; a dropped handle lets its request go.
#[tokio::test]
async fn a_held_call_stays_in_flight_until_released() {
    let double = StsDouble::start(StsDoubleConfig {
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })
    .unwrap();
    let user = double.default_user();
    let client = sts_client(&double, user.sdk_credentials());

    let held = double.hold_next(HoldFilter::WithTokenCode);
    // Without a code: not caught.
    client.get_session_token().send().await.expect("not held");
    assert!(!held.has_arrived());

    let call = {
        let (client, user) = (client.clone(), user.clone());
        tokio::spawn(async move { get_session_token(&client, &user, "123456", None).await })
    };
    let arrived = held
        .arrived(Duration::from_secs(10))
        .await
        .expect("the call arrives and waits");
    assert_eq!(arrived.token_code_used.as_deref(), Some("123456"));
    assert_eq!(arrived.code_accepted, None, "not judged while held");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "still in flight while held");
    assert_eq!(double.uses_of_code("123456"), 0);
    held.release();
    call.await.unwrap().expect("answered after the release");
    assert_eq!(double.uses_of_code("123456"), 1);
    let last = double.calls().pop().unwrap();
    assert!(
        last.handled_in >= Duration::from_millis(500),
        "{:?}",
        last.handled_in
    );

    // Dropped before anything came: disarmed.
    drop(double.hold_next(HoldFilter::Any));
    let started = Instant::now();
    client.get_session_token().send().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    // Dropped while holding: the request goes on.
    let held = double.hold_next(HoldFilter::Any);
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.get_session_token().send().await })
    };
    held.arrived(Duration::from_secs(10)).await.expect("held");
    drop(held);
    call.await.unwrap().expect("released by the drop");
}

// ---------------------------------------------------------------------------------------------
// AssumeRole

#[tokio::test]
async fn assume_role_with_issued_session_credentials() {
    let double = start();
    let user = double.default_user();
    let role = double.add_role(RoleSpec {
        external_id: Some("ext-123".into()),
        ..RoleSpec::named("deployer")
    });
    assert_eq!(role.arn, "arn:aws:iam::123456789012:role/deployer");
    let client = sts_client(&double, user.sdk_credentials());
    avoid_window_edge().await;
    let out = get_session_token(&client, &user, &user.totp_code_now(), None)
        .await
        .unwrap();
    let session = double
        .issued_session(out.credentials().unwrap().access_key_id())
        .unwrap();
    let session_client = sts_client(&double, session.sdk_credentials());

    let assumed = session_client
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("operator")
        .external_id("ext-123")
        .duration_seconds(1800)
        .send()
        .await
        .expect("AssumeRole with session credentials");
    let user_info = assumed.assumed_role_user().unwrap();
    assert_eq!(
        user_info.arn(),
        "arn:aws:sts::123456789012:assumed-role/deployer/operator"
    );
    assert_eq!(
        user_info.assumed_role_id(),
        format!("{}:operator", role.role_id)
    );
    let creds = assumed.credentials().unwrap();
    assert!(creds.access_key_id().starts_with("ASIA"));
    assert_ne!(creds.access_key_id(), session.access_key_id);
    let remaining = expires_in_secs(creds.expiration());
    assert!((1795..=1800).contains(&remaining), "{remaining}");
    let role_session = double.issued_session(creds.access_key_id()).unwrap();
    assert_eq!(role_session.role_arn.as_deref(), Some(role.arn.as_str()));
    assert_eq!(role_session.issued_to_access_key_id, session.access_key_id);
    let call = double.calls().pop().unwrap();
    assert_eq!(
        (
            call.action.as_str(),
            call.role_arn.as_deref(),
            call.role_session_name.as_deref(),
            call.external_id.as_deref()
        ),
        (
            "AssumeRole",
            Some(role.arn.as_str()),
            Some("operator"),
            Some("ext-123")
        )
    );
    let identity = sts_client(&double, role_session.sdk_credentials())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(
        identity.arn(),
        Some("arn:aws:sts::123456789012:assumed-role/deployer/operator")
    );

    // Role chaining is limited to one hour.
    let role_client = sts_client(&double, role_session.sdk_credentials());
    let long_role = double.add_role(RoleSpec {
        max_session_duration: Duration::from_secs(43_200),
        ..RoleSpec::named("long")
    });
    session_client
        .assume_role()
        .role_arn(&long_role.arn)
        .role_session_name("direct")
        .duration_seconds(7200)
        .send()
        .await
        .expect("not chained: 2 h ok");
    let err = role_client
        .assume_role()
        .role_arn(&long_role.arn)
        .role_session_name("chained")
        .duration_seconds(7200)
        .send()
        .await
        .unwrap_err();
    let (_, code, message) = status_and_code(err);
    assert_eq!(code.as_deref(), Some("ValidationError"));
    assert!(message.unwrap().contains("role chaining"));
    role_client
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("chained")
        .external_id("ext-123")
        .send()
        .await
        .expect("chained, 1 h");

    // Wrong or missing ExternalId, unknown role, over MaxSessionDuration.
    for external_id in [None, Some("wrong-id")] {
        let err = session_client
            .assume_role()
            .role_arn(&role.arn)
            .role_session_name("operator")
            .set_external_id(external_id.map(String::from))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            status_and_code(err).1.as_deref(),
            Some("AccessDenied"),
            "{external_id:?}"
        );
    }
    let err = session_client
        .assume_role()
        .role_arn("arn:aws:iam::123456789012:role/nope")
        .role_session_name("operator")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("AccessDenied"));
    let err = session_client
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("operator")
        .external_id("ext-123")
        .duration_seconds(7200)
        .send()
        .await
        .unwrap_err();
    let (_, code, message) = status_and_code(err);
    assert_eq!(code.as_deref(), Some("ValidationError"));
    assert!(message.unwrap().contains("MaxSessionDuration"));
    let err = session_client
        .assume_role()
        .role_arn("not-an-arn-but-long-enough")
        .role_session_name("operator")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("ValidationError"));
}

#[tokio::test]
async fn role_lifetime_override_applies_to_assume_role_only_and_tags_are_recorded() {
    let double = StsDouble::start(StsDoubleConfig {
        returned_lifetime: Some(Duration::from_secs(40)),
        returned_role_lifetime: Some(Duration::from_secs(6)),
        code_policy: CodePolicy::AcceptAny,
        ..Default::default()
    })
    .unwrap();
    let user = double.default_user();
    let role = double.add_role(RoleSpec::named("tagged"));
    let client = sts_client(&double, user.sdk_credentials());
    let out = get_session_token(&client, &user, "123456", Some(3600))
        .await
        .unwrap();
    let remaining = expires_in_secs(out.credentials().unwrap().expiration());
    assert!((39..=40).contains(&remaining), "session: {remaining}");
    let session = double
        .issued_session(out.credentials().unwrap().access_key_id())
        .unwrap();
    let tag = |k: &str, v: &str| {
        aws_sdk_sts::types::Tag::builder()
            .key(k)
            .value(v)
            .build()
            .unwrap()
    };
    let assumed = sts_client(&double, session.sdk_credentials())
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("tags")
        .duration_seconds(3600)
        .tags(tag("team", "a"))
        .tags(tag("env", ""))
        .send()
        .await
        .unwrap();
    let remaining = expires_in_secs(assumed.credentials().unwrap().expiration());
    assert!(
        (5..=6).contains(&remaining),
        "role credentials: {remaining}"
    );
    let call = double.calls().pop().unwrap();
    assert_eq!(
        call.tags,
        vec![
            ("team".to_string(), "a".to_string()),
            ("env".to_string(), String::new())
        ]
    );
    // None restores the session lifetime for AssumeRole too.
    double.set_returned_role_lifetime(None);
    let assumed = sts_client(&double, session.sdk_credentials())
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("tags")
        .send()
        .await
        .unwrap();
    let remaining = expires_in_secs(assumed.credentials().unwrap().expiration());
    assert!(
        (39..=40).contains(&remaining),
        "role credentials: {remaining}"
    );
    assert!(double.calls().pop().unwrap().tags.is_empty());
}

#[tokio::test]
async fn assume_role_refuses_long_term_keys_and_wrong_tokens() {
    let double = start();
    let user = double.default_user();
    let role = double.add_role(RoleSpec::named("deployer"));
    let client = sts_client(&double, user.sdk_credentials());
    let err = client
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("s")
        .send()
        .await
        .unwrap_err();
    // "s" is too short: validation comes first.
    assert_eq!(status_and_code(err).1.as_deref(), Some("ValidationError"));
    let err = client
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("operator")
        .send()
        .await
        .unwrap_err();
    let (status, code, _) = status_and_code(err);
    assert_eq!(
        (status, code.as_deref()),
        (Some(403), Some("AccessDenied")),
        "long-term keys"
    );

    let out = client.get_session_token().send().await.unwrap();
    let session = double
        .issued_session(out.credentials().unwrap().access_key_id())
        .unwrap();
    // Right key and secret, wrong token.
    let forged = Credentials::new(
        &session.access_key_id,
        &session.secret_access_key,
        Some("bogus-token".into()),
        None,
        "test",
    );
    let err = sts_client(&double, forged)
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("operator")
        .send()
        .await
        .unwrap_err();
    let (status, code, _) = status_and_code(err);
    assert_eq!(
        (status, code.as_deref()),
        (Some(403), Some("InvalidClientTokenId")),
        "wrong token"
    );
    // Session key without any token.
    let tokenless = Credentials::new(
        &session.access_key_id,
        &session.secret_access_key,
        None,
        None,
        "test",
    );
    let err = sts_client(&double, tokenless)
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("operator")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(err).1.as_deref(),
        Some("InvalidClientTokenId"),
        "no token"
    );
    // Right token, wrong secret.
    let wrong_secret = Credentials::new(
        &session.access_key_id,
        "y".repeat(40),
        Some(session.session_token.clone()),
        None,
        "test",
    );
    let err = sts_client(&double, wrong_secret)
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("operator")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(err).1.as_deref(),
        Some("SignatureDoesNotMatch")
    );
    // The genuine session works.
    sts_client(&double, session.sdk_credentials())
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("operator")
        .send()
        .await
        .expect("genuine session");
}

#[tokio::test]
async fn assume_role_mfa_requirement_and_root() {
    let double = start();
    double.set_code_policy(CodePolicy::AcceptAny);
    let user = double.default_user();
    let role = double.add_role(RoleSpec {
        require_mfa: true,
        ..RoleSpec::named("admin")
    });
    let client = sts_client(&double, user.sdk_credentials());

    let without_mfa = client.get_session_token().send().await.unwrap();
    let without_mfa = double
        .issued_session(without_mfa.credentials().unwrap().access_key_id())
        .unwrap();
    let err = sts_client(&double, without_mfa.sdk_credentials())
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("op")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(err).1.as_deref(), Some("AccessDenied"));
    // MFA given on AssumeRole itself satisfies the role.
    sts_client(&double, without_mfa.sdk_credentials())
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("op")
        .serial_number(user.serial_number().unwrap())
        .token_code("123456")
        .send()
        .await
        .expect("MFA on AssumeRole");
    let with_mfa = get_session_token(&client, &user, "123456", None)
        .await
        .unwrap();
    let with_mfa = double
        .issued_session(with_mfa.credentials().unwrap().access_key_id())
        .unwrap();
    sts_client(&double, with_mfa.sdk_credentials())
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("op")
        .send()
        .await
        .expect("MFA session");

    let root = double.add_user(UserKind::AccountRoot);
    let root_client = sts_client(&double, root.sdk_credentials());
    let out = get_session_token(&root_client, &root, "123456", None)
        .await
        .unwrap();
    let root_session = double
        .issued_session(out.credentials().unwrap().access_key_id())
        .unwrap();
    let err = sts_client(&double, root_session.sdk_credentials())
        .assume_role()
        .role_arn(&role.arn)
        .role_session_name("op")
        .send()
        .await
        .unwrap_err();
    let (_, code, message) = status_and_code(err);
    assert_eq!(code.as_deref(), Some("AccessDenied"));
    assert_eq!(
        message.as_deref(),
        Some("Roles may not be assumed by root accounts.")
    );
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

#[test]
fn double_outlives_the_runtime_that_started_it_and_stops_on_drop() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let double = first.block_on(async { start() });
    let user = double.default_user();
    first.block_on(async {
        sts_client(&double, user.sdk_credentials())
            .get_session_token()
            .send()
            .await
            .expect("first runtime");
    });
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        sts_client(&double, user.sdk_credentials())
            .get_session_token()
            .send()
            .await
            .expect("second runtime");
    });
    assert_eq!(double.call_count(), 2);
    let port = double.port();
    drop(double);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port closed after drop"
    );
}
