#!/usr/bin/env bash
# SCIM compliance check: runs the service on a scratch embedded store (an SQLite file)
# and points two independent suites at it, from PyPI, in one virtualenv:
#   - scim2-tester (through scim2-cli): discovery, CRUD, PATCH add/remove/replace,
#     attribute projection, for every resource type /ResourceTypes lists (User, Group);
#   - scim-sanity's live probe: discovery, the User and Group lifecycles (with member
#     PATCH), search, error handling.
# scripts/compliance.py runs scim2-tester and judges both reports: the run fails on any
# reported error but the few it accepts (each with its reason, printed), on a suite
# that ran nothing, or on Group checks that did not run.
# Needs: python3, curl, a built binary; no database server.
#
# COMPLIANCE_DATABASE_URL (optional) runs the service on that store instead of the
# scratch SQLite file, e.g. a fresh PostgreSQL database:
#   createdb -h 127.0.0.1 -U postgres scim_compliance
#   COMPLIANCE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/scim_compliance scripts/compliance.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${AMEYO_SCIM_BIN:-target/debug/ameyo-scim}
VENV=${SCIM2_VENV:-.venv}
# The suites, pinned: a new release can add or change checks, so it is taken on purpose.
REQUIREMENTS="scim2-cli==0.6.0 scim2-tester==0.5.2 scim-sanity==0.7.4"
TOKEN="compliance-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WORK=$(mktemp -d)

cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The service's log and a report, then fail.
fail() {
    local report=$1
    shift
    cat "$report"
    echo "--- service log ---"
    cat "$WORK/serve.log"
    printf '%s\n' "$@"
    exit 1
}

if [ "$(cat "$VENV/.compliance-requirements" 2>/dev/null)" != "$REQUIREMENTS" ]; then
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    # shellcheck disable=SC2086 # one argument per requirement
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS
    echo "$REQUIREMENTS" >"$VENV/.compliance-requirements"
fi
[ -x "$BIN" ] || cargo build --quiet

DB_URL=${COMPLIANCE_DATABASE_URL:-sqlite://$WORK/compliance.db}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIGEST=$(printf '%s' "$TOKEN" | "$BIN" hash-token)
BASE="http://127.0.0.1:$PORT/scim/v2"

cat > "$WORK/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[database]
url = "$DB_URL"
[log]
level = "warn"
[sync]
enabled = false
password_key = "$(head -c 32 /dev/urandom | base64)"
[[tenants]]
id = "compliance"
token_sha256 = ["$DIGEST"]
[tenants.ameyo]
base_url = "http://127.0.0.1:9"
contact_center_id = 1
login_user = "admin"
login_password = "unused"
TOML

"$BIN" serve --config "$WORK/config.toml" >"$WORK/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve.log"; echo "the service did not start"; exit 1; }
    sleep 0.1
done

# Both suites run, each report to a file; on failure the failing reports are printed,
# then the service log, then both summaries.
# scim2-tester, through scim2-cli's client (what `scim2 test --check-status-code
# --check-content-type` runs), its results read as data.
set +e
COMPLIANCE_TOKEN="$TOKEN" "$VENV/bin/python" scripts/compliance.py tester "$BASE" \
    >"$WORK/tester.txt" 2>&1
tester_rc=$?
# scim-sanity's live probe. It exits 1 whenever a step fails, accepted or not: the
# verdict is read from its JSON report.
"$VENV/bin/scim-sanity" probe "$BASE" --token "$TOKEN" --i-accept-side-effects \
    --timeout 30 --json-output >"$WORK/probe.json" 2>"$WORK/probe.err"
probe_exit=$?
"$VENV/bin/python" scripts/compliance.py probe "$WORK/probe.json" "$probe_exit" \
    >"$WORK/probe.txt" 2>&1
probe_rc=$?
set -e
TESTER_SUMMARY=$(tail -n 1 "$WORK/tester.txt")
PROBE_SUMMARY=$(tail -n 1 "$WORK/probe.txt")
if [ "$tester_rc" -ne 0 ] || [ "$probe_rc" -ne 0 ]; then
    : >"$WORK/report.txt"
    if [ "$tester_rc" -ne 0 ]; then
        { echo "--- scim2-tester ---"; cat "$WORK/tester.txt"; } >>"$WORK/report.txt"
    fi
    if [ "$probe_rc" -ne 0 ]; then
        { echo "--- scim-sanity ---"; cat "$WORK/probe.txt" "$WORK/probe.err"; } >>"$WORK/report.txt"
    fi
    fail "$WORK/report.txt" "$TESTER_SUMMARY (exit $tester_rc)" "$PROBE_SUMMARY (exit $probe_exit)"
fi

grep -hE '^accepted: ' "$WORK/tester.txt" "$WORK/probe.txt" || true
echo "$TESTER_SUMMARY"
echo "$PROBE_SUMMARY"
