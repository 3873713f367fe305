//! Smoke test of the moto peer (testkit): aws-sdk-sts, configured by hand as the operator does
//! (no aws-config), gets session credentials with the right key and is refused with a wrong one.

use anyhow::{Context, Result};
use aws_sdk_sts::error::SdkError;
use testkit::Moto;
use testkit::moto::sts_config;

#[tokio::test]
async fn get_session_token_with_the_right_key() -> Result<()> {
    let moto = Moto::shared().await;
    assert!(moto.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(
        moto.user_arn(),
        "arn:aws:iam::123456789012:user/sts-testkit-user"
    );
    let debug = format!("{moto:?}");
    assert!(
        !debug.contains(moto.secret_access_key()) && !debug.contains(moto.access_key_id()),
        "{debug}"
    );

    let sts = aws_sdk_sts::Client::from_conf(moto.sts_config());
    let before = aws_sdk_sts::primitives::DateTime::from(std::time::SystemTime::now());
    let out = sts.get_session_token().duration_seconds(900).send().await?;
    let creds = out.credentials.context("no credentials")?;
    // (moto hands out fixed example values; the point is the verified signature.)
    assert!(!creds.access_key_id.is_empty());
    assert!(!creds.secret_access_key.is_empty());
    assert!(!creds.session_token.is_empty());
    assert!(
        creds.expiration.secs() > before.secs(),
        "expiration {:?} not in the future",
        creds.expiration
    );
    Ok(())
}

#[tokio::test]
async fn get_session_token_with_a_wrong_secret_is_refused() -> Result<()> {
    let moto = Moto::shared().await;
    let wrong = aws_credential_types::Credentials::new(
        moto.access_key_id(),
        format!("{}x", &moto.secret_access_key()[1..]),
        None,
        None,
        "wrong",
    );
    let sts = aws_sdk_sts::Client::from_conf(sts_config(moto.endpoint(), wrong));
    let err = sts
        .get_session_token()
        .send()
        .await
        .expect_err("a wrong secret key must be refused");
    let SdkError::ServiceError(service_err) = &err else {
        panic!("expected a service error, got {err:?}");
    };
    let raw = service_err.raw();
    assert_eq!(raw.status().as_u16(), 403);
    let body = raw
        .body()
        .bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    // The SDK parses the error as the operator will see it.
    use aws_sdk_sts::error::ProvideErrorMetadata;
    assert_eq!(
        service_err.err().code(),
        Some("SignatureDoesNotMatch"),
        "{body}"
    );

    // An unknown key is refused too.
    let unknown = aws_credential_types::Credentials::new(
        "AKIAUNKNOWNKEY000000",
        "secret",
        None,
        None,
        "unknown",
    );
    let err = aws_sdk_sts::Client::from_conf(sts_config(moto.endpoint(), unknown))
        .get_session_token()
        .send()
        .await
        .expect_err("an unknown key must be refused");
    let status = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(status, Some(403), "{err:?}");
    assert_eq!(err.code(), Some("InvalidClientTokenId"), "{err:?}");
    Ok(())
}
