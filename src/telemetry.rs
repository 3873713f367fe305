//! Logging setup. Secrets never reach a log line: they travel as `Sensitive`, whose formatting
//! prints `<redacted>`.

use tracing_subscriber::{EnvFilter, filter, fmt, prelude::*};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    let env_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // At trace level the AWS SDK logs request bodies, which hold the MFA code: cap its crates
    // at debug whatever the filter says. (A cap, not a `aws_…=debug` directive: that would also
    // raise them to debug under the default `info`, some 17 lines and 4 KiB per STS call.)
    // The Kubernetes client logs a whole response body when it cannot deserialize it (every
    // object of a list page, a Secret's data, a token code waiting in an annotation): its
    // client module is silenced whatever the filter says. (Objects are read one by one,
    // `reconcile::watch::Tolerant`, so that this does not happen on the watches.)
    let no_sdk_trace = filter::filter_fn(|meta| {
        !(*meta.level() == tracing::Level::TRACE && meta.target().starts_with("aws_"))
            && meta.target() != "kube_client::client"
    });
    let registry = tracing_subscriber::registry()
        .with(env_filter)
        .with(no_sdk_trace);
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
