//! Figures for the summary `make test` prints at the end (hack/test.sh): each test appends one
//! line `test=NAME key=value ...` to a file in `$STS_TEST_SUMMARY_DIR`; hack/test.sh adds the
//! values up per key. Without that variable (a plain `cargo test`) the line is only printed.
//!
//! Keys in use: `rotations` (sessions minted while the suite was hurting the operator),
//! `kills` (kill -9 of the operator), `faults` (STS faults injected), `bad_inputs` (bad inputs
//! tried, end to end or as property-test cases), `leaks` (secret values found where they must
//! not be: must stay 0), `restarts` (control-plane restarts), `approvals` (MFA approvals),
//! `hostile` (hostile objects or edits a tenant wrote, tests/hostile), `crashes` (operator
//! processes that exited or panicked meanwhile: must stay 0), `stalls` (fresh SessionTokens not
//! served in time meanwhile: must stay 0); tests/hostile also counts `leaks` (secret values in
//! the operator's log).

#![allow(dead_code)]

use std::io::Write as _;

/// Records `figures` for `test`: printed, and appended to `$STS_TEST_SUMMARY_DIR/figures.txt`.
pub fn record(test: &str, figures: &[(&str, u64)]) {
    let mut line = format!("test={test}");
    for (k, v) in figures {
        line.push_str(&format!(" {k}={v}"));
    }
    println!("figures: {line}");
    let Some(dir) = std::env::var_os("STS_TEST_SUMMARY_DIR").filter(|d| !d.is_empty()) else {
        return;
    };
    let path = std::path::Path::new(&dir).join("figures.txt");
    // One write of one short line, in append mode: lines from parallel tests do not mix.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("could not record figures in {}: {e}", path.display());
    }
}

/// `STS_TEST_LONG=1`: the long variants (more kills, rotations, approvals, cases).
pub fn long() -> bool {
    std::env::var("STS_TEST_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}
