#!/usr/bin/env bash
# SCIM compliance check: runs the service on a scratch embedded store (an SQLite file)
# and points the scim2-tester suite (PyPI, through scim2-cli) at it. Fails on any
# reported error. Needs: python3, curl, a built binary; no database server.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${AMEYO_SCIM_BIN:-target/debug/ameyo-scim}
VENV=${SCIM2_VENV:-.venv}
TOKEN="compliance-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WORK=$(mktemp -d)

cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/scim2" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "scim2-cli==0.6.0" "scim2-tester==0.5.2"
fi
[ -x "$BIN" ] || cargo build --quiet

DB_URL="sqlite://$WORK/compliance.db"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIGEST=$(printf '%s' "$TOKEN" | "$BIN" hash-token)

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

set +e
SCIM_CLI_HEADERS="Authorization: Bearer $TOKEN" \
    "$VENV/bin/scim2" --url "http://127.0.0.1:$PORT/scim/v2" test \
    --check-status-code --check-content-type >"$WORK/report.txt" 2>&1
rc=$?
set -e
passed=$(grep -c '^SUCCESS' "$WORK/report.txt" || true)
failed=$(grep -cE '^(ERROR|CRITICAL)' "$WORK/report.txt" || true)
if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then
    cat "$WORK/report.txt"
    echo "--- service log ---"
    cat "$WORK/serve.log"
    echo "scim2-tester: $passed passed, $failed failed (exit $rc)"
    exit 1
fi
grep -E '^(WARNING|SKIPPED)' -A1 "$WORK/report.txt" || true
echo "scim2-tester: $passed passed, $failed failed"
