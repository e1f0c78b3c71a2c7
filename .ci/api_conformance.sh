#!/usr/bin/env bash
# Schemathesis against a running binary's /openapi.json: every documented operation is fuzzed
# with an all-scopes token and the answers are checked against the document (status codes,
# content types, headers, schemas) and for server errors. Zero failures, or this fails.
#
# Usage: .ci/api_conformance.sh BINARY FAKE_SALESFORCE_BINARY VENV_DIR
# Starts BINARY on SQLite on one listener with the fake Salesforce as the only login host
# (nothing reaches the internet: a login URL on any other host is a 400), registers the
# tenant app "acme" and completes one authorization, so the connection paths have a real id
# to act on, then fuzzes and stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
fake=$2
venv=$(cd "$(dirname "$3")" && pwd)/$(basename "$3") # absolute: schemathesis runs elsewhere
[ -x "$venv/bin/schemathesis" ] || {
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r .ci/api-requirements.txt
}
work=$(mktemp -d)
trap 'kill "${pid:-0}" "${fake_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
port=18091
fake_port=18092
base=http://127.0.0.1:$port
"$fake" --listen 127.0.0.1:$fake_port --auto-approve \
  --redirect-uri "$base/oauth2/v1/callback/salesforce" >"$work/fake.log" 2>&1 &
fake_pid=$!
export VALO_OAUTH_ENV=development VALO_OAUTH_LISTEN=127.0.0.1:$port \
  VALO_OAUTH_PUBLIC_URL=$base DATABASE_URL="sqlite://$work/api.db" \
  VALO_OAUTH_LOGIN_HOSTS=http://127.0.0.1 \
  VALO_OAUTH_API_JWT_SECRET=ci-schemathesis-secret-0123456789abcdef
unset VALO_OAUTH_INTERNAL_LISTEN
VALO_OAUTH_ENCRYPTION_KEYS="$("$bin" keygen --key-id ci)"
export VALO_OAUTH_ENCRYPTION_KEYS
"$bin" serve 2>"$work/log" &
pid=$!
for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.2; done
# An all-scopes token, minted by the binary's own dev-token command (HS256 with the secret).
token=$("$bin" dev-token --scope "apps:write connections:write connections:read tokens:read audit:read" --ttl-secs 900)
auth=(-H "Authorization: Bearer $token" -H 'Content-Type: application/json')
# The fake's app for the tenant "acme", then one completed authorization (the fake approves
# at once; curl follows its redirect to the callback): a connection to list, read, refresh.
curl -fsS -o /dev/null -X PUT "$base/v1/tenants/acme/salesforce-app" "${auth[@]}" \
  -d "{\"consumer_key\":\"fake-consumer-key\",\"consumer_secret\":\"fake-consumer-secret\",\"login_url\":\"http://127.0.0.1:$fake_port\"}"
authorize=$(curl -fsS -X POST "$base/v1/tenants/acme/authorizations" "${auth[@]}" \
  | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["authorization_url"])')
curl -fsS -L -o /dev/null "$authorize"
curl -fsS "$base/v1/tenants/acme/connections" "${auth[@]}" | grep -q '"status":"active"' || {
  echo "the setup authorization created no connection" >&2; cat "$work/log" >&2; exit 1
}
status=0
# From the scratch directory: schemathesis keeps its cache in ./.schemathesis.
(cd "$work" && "$venv/bin/schemathesis" run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  -H "Authorization: Bearer $token" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" --seed 1 --workers 1 \
  --suppress-health-check all --no-color) || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis found failures; the service log follows" >&2
  tail -n 50 "$work/log" >&2
  exit "$status"
fi
