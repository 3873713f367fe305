#!/usr/bin/env bash
# One line per test binary from a `cargo test` log (stdout and stderr together): its status, the
# counts of its `test result:` line and its time; a binary that started but printed no result
# (crashed, killed, timed out) says so. Then one closing line: `test binaries: 9 ok, 0 not ok`
# (worded so that no CI reads it as a count of tests). Used by hack/test.sh; usable on any saved log: hack/test-summary.sh LOG
set -euo pipefail
log=${1:?usage: test-summary.sh CARGO_TEST_LOG}
awk '
  function flush() {
    if (name == "") return
    if (result == "") { status = "NO RESULT"; result = "started, printed no result (crashed, killed or timed out)"; bad++ }
    else if (status == "ok") good++
    else bad++
    printf "  %-9s %-40s %s\n", status, name, result
    name = ""; result = ""; status = ""
  }
  /^[[:space:]]+Running / {
    flush()
    line = $0; sub(/^[[:space:]]+Running /, "", line)
    crate = line; sub(/^.*\(/, "", crate); sub(/\).*$/, "", crate); sub(/^.*\//, "", crate); sub(/-[0-9a-f]+$/, "", crate)
    sub(/ \(.*$/, "", line)
    if (sub(/^unittests /, "", line)) line = line " (" crate ")"
    name = line
    next
  }
  /^[[:space:]]+Doc-tests / { flush(); name = "doc-tests " $2; next }
  /^test result: / && name != "" {
    status = ($3 == "ok.") ? "ok" : "FAILED"
    line = $0; sub(/^test result: [A-Za-z]+\. /, "", line)
    n = split(line, parts, "; ")
    passed = parts[1]; failed = parts[2]; ignored = parts[3]
    time = ""
    for (i = 1; i <= n; i++) if (parts[i] ~ /^finished in /) { time = parts[i]; sub(/^finished in /, "", time) }
    result = sprintf("%-12s %-10s %-11s %s", passed, failed, ignored, time)
    next
  }
  END {
    flush()
    printf "test binaries: %d ok, %d not ok\n", good, bad
  }
' "$log"
