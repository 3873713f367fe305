//! Runs the STS test double standalone (for demos).
//!
//! ```text
//! sts-test-double [--port N] [--accept-any-code] [--lifetime SECONDS] [--require-mfa]
//! ```
//!
//! Prints `KEY=value` lines on stdout (endpoint, the test user's keys, MFA serial, TOTP seed),
//! then, on stderr, the current TOTP code at each new 30 s window and one line per request.
//! Runs until killed (Ctrl-C).

use std::time::Duration;

use testkit::sts_double::{CodePolicy, StsDouble, StsDoubleConfig, totp};

const USAGE: &str =
    "usage: sts-test-double [--port N] [--accept-any-code] [--lifetime SECONDS] [--require-mfa]";

fn main() -> anyhow::Result<()> {
    let mut config = StsDoubleConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => config.port = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?.parse()?,
            "--accept-any-code" => config.code_policy = CodePolicy::AcceptAny,
            "--lifetime" => {
                let secs: u64 = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?.parse()?;
                config.returned_lifetime = Some(Duration::from_secs(secs));
            }
            "--require-mfa" => config.require_mfa = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }

    let double = StsDouble::start(config)?;
    let user = double.default_user();
    let mfa = user
        .mfa
        .clone()
        .expect("the default user has an MFA device");
    println!("STS_ENDPOINT={}", double.endpoint());
    println!("AWS_REGION=us-east-1");
    println!("AWS_ACCESS_KEY_ID={}", user.access_key_id);
    println!("AWS_SECRET_ACCESS_KEY={}", user.secret_access_key);
    println!("USER_ARN={}", user.arn);
    println!("MFA_SERIAL_NUMBER={}", mfa.serial_number);
    println!("TOTP_SEED_BASE32={}", mfa.seed_base32());
    println!("TOTP_URI={}", mfa.otpauth_uri(&user.name));

    let mut last_counter = None;
    let mut seen_calls = 0;
    loop {
        let now = jiff::Timestamp::now();
        let counter = totp::counter_at(now.as_second());
        if last_counter != Some(counter) {
            last_counter = Some(counter);
            let valid_until =
                jiff::Timestamp::from_second((counter as i64 + 1) * totp::STEP_SECONDS)?;
            eprintln!(
                "TOTP code {} (window ends {})",
                mfa.totp_code_at(now),
                valid_until.strftime("%H:%M:%SZ")
            );
        }
        let calls = double.calls();
        for call in calls.iter().skip(seen_calls) {
            eprintln!(
                "{} {} key={} duration={} code={} -> {}",
                call.at.strftime("%H:%M:%SZ"),
                if call.action.is_empty() {
                    "?"
                } else {
                    &call.action
                },
                call.access_key_id.as_deref().unwrap_or("-"),
                call.duration_seconds
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "-".into()),
                call.token_code_used.as_deref().unwrap_or("-"),
                match call.outcome.error_code() {
                    None => format!("Ok {}", call.issued_access_key_id.as_deref().unwrap_or("")),
                    Some(code) => code.to_owned(),
                },
            );
        }
        seen_calls = calls.len();
        std::thread::sleep(Duration::from_millis(500));
    }
}
