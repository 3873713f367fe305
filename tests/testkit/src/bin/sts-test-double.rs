//! Runs the STS test double standalone (for demos).
//!
//! ```text
//! sts-test-double [--port N] [--accept-any-code] [--lifetime SECONDS] [--require-mfa]
//!                 [--user-name NAME]
//! sts-test-double --print-code SEED_BASE32
//! ```
//!
//! Prints `KEY=value` lines on stdout (endpoint, the test user's keys, MFA serial, TOTP seed),
//! then, on stderr, the current TOTP code at each new 30 s window and one line per request.
//! Runs until killed (Ctrl-C). `--lifetime` makes every session last that long whatever was
//! asked (so rotations come quickly); `--user-name` names the IAM user (its MFA serial is
//! `arn:aws:iam::123456789012:mfa/NAME`). `--print-code` only prints the current TOTP code of
//! a seed (what an authenticator app would show) and exits.

use std::time::Duration;

use testkit::sts_double::{CodePolicy, StsDouble, StsDoubleConfig, totp};

const USAGE: &str = "usage: sts-test-double [--port N] [--accept-any-code] [--lifetime SECONDS] [--require-mfa] [--user-name NAME]\n       sts-test-double --print-code SEED_BASE32";

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
            "--user-name" => {
                config.default_user_name = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?
            }
            "--print-code" => {
                let seed = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?;
                let seed = totp::base32_decode(&seed)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("--print-code: not a base32 seed"))?;
                println!("{}", totp::code_at(&seed, jiff::Timestamp::now()));
                return Ok(());
            }
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
