//! Logging setup. Secrets never reach a log line: they travel as `Sensitive`, whose formatting
//! prints `<redacted>`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // At trace level the AWS SDK logs request bodies, which hold the MFA code: cap it at debug
    // whatever the filter says.
    for target in [
        "aws_smithy_runtime",
        "aws_smithy_http_client",
        "aws_sigv4",
        "aws_runtime",
        "aws_sdk_sts",
    ] {
        filter = filter.add_directive(format!("{target}=debug").parse().expect("static directive"));
    }
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .init(),
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).init(),
    }
}
