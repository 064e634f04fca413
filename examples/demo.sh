#!/usr/bin/env bash
# `make demo`: a server on a temporary database, then the command line client
# walks a 5,000,000 loan from registration to payoff. Prints every command and
# its output; stops the server and removes the temporary files on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cli=${DEMO_CLI:-$root/.venv/bin/lending-grpc}
work=$(mktemp -d "${TMPDIR:-/tmp}/lending-demo.XXXXXX")
server_pid=""

cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" && wait "$server_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Nothing of the developer's own leaks in: no LENDING_* variables, no .env
# (the server runs in the empty temporary directory), no cached tokens.
for name in $(env | sed -n 's/^\(LENDING_[A-Z0-9_]*\)=.*/\1/p'); do unset "$name"; done
export XDG_CONFIG_HOME="$work/config"

cd "$work"
"$cli" serve --listen 127.0.0.1:0 --database-url "sqlite:///$work/lending.db" \
  --drain-delay-seconds 0 2>"$work/server.log" &
server_pid=$!
port=""
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*serving on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$work/server.log")
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "demo: the server did not start" >&2; cat "$work/server.log" >&2; exit 1; }
export LENDING_SERVER="127.0.0.1:$port"

say() { printf '\n# %s\n' "$*"; }
show() { printf '$ lending-grpc %s\n' "$*"; "$cli" "$@"; }
show_with_password() { printf '$ lending-grpc %s <<< "$PASSWORD"\n' "$*"; "$cli" "$@" <<<"$PASSWORD"; }

PASSWORD="correct horse battery"
echo "# server on $LENDING_SERVER (database $work/lending.db), LENDING_SERVER=$LENDING_SERVER"

say "1. Register and log in (tokens are cached in \$XDG_CONFIG_HOME/lending-grpc, mode 0600)"
show_with_password register ada --email ada@example.com --password-stdin
show_with_password login ada --password-stdin

say "2. A 5,000,000 loan over 50 weeks at 10% flat, starting Monday 2026-01-05"
show loan create L-1001 5000000 --start-date 2026-01-05

say "3. Its schedule (first and last weeks)"
printf '$ lending-grpc loan schedule L-1001\n'
schedule=$("$cli" loan schedule L-1001)
head -n 4 <<<"$schedule"
echo "  ..."
tail -n 2 <<<"$schedule"

say "4. Pay the first week; the schedule records when"
show pay L-1001 110000
printf '$ lending-grpc loan schedule L-1001\n'
schedule=$("$cli" loan schedule L-1001)
head -n 3 <<<"$schedule"
echo "  ..."

say "5. Weeks 2 and 3 go unpaid: as of 2026-01-27 the loan is delinquent"
show loan status L-1001 --as-of 2026-01-27
show delinquent --as-of 2026-01-27

say "6. Catch up on the missed fortnight (amounts from the tables are accepted as typed)"
show pay L-1001 220,000.00
show loan status L-1001 --as-of 2026-01-27

say "7. Only whole installments are accepted: the error says what would be"
printf '$ lending-grpc pay L-1001 50000\n'
set +e
"$cli" pay L-1001 50000 2>&1
echo "(exit code $?)"
set -e

say "8. Pay off the rest and check"
show pay L-1001 --payoff
show loan outstanding L-1001
show loan show L-1001

say "9. A paid-off loan accepts no more payments"
printf '$ lending-grpc pay L-1001 110000\n'
set +e
"$cli" pay L-1001 110000 2>&1
echo "(exit code $?)"
set -e

say "done: stopping the server"
