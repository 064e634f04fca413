#!/usr/bin/env bash
# `make demo`: a server on a temporary database, then the command line client
# walks a 5,000,000 loan from registration to payoff: a borrower (ada) and a
# field officer with the operator role (olga) who records back-dated cash
# collections, reverses a bounced one, and reads the delinquency history, the
# funding-quality report and the event log. Prints every command and its
# output; stops the server and removes the temporary files on exit.
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
# (the server runs in the empty temporary directory), no cached tokens: each
# person below gets a config directory (and token cache) of their own.
for name in $(env | sed -n 's/^\(LENDING_[A-Z0-9_]*\)=.*/\1/p'); do unset "$name"; done
export XDG_CONFIG_HOME="$work/config"

cd "$work"
database_url="sqlite:///$work/lending.db"
"$cli" serve --listen 127.0.0.1:0 --database-url "$database_url" \
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
# `as ada 'loan show L-1001'`: print the command as that person types it, then run it with
# their token cache. The command is one string so that "$ADA" prints as typed. A caller
# that keeps part of the output (head, grep) gets the command as the first line.
as() {
  local who=$1 command=$2
  printf '%s$ lending-grpc %s\n' "$who" "$command"
  XDG_CONFIG_HOME="$work/$who" eval "\"\$cli\" $command"
}
# The same, for a command that is refused: its error goes to stdout, then the exit code.
refused() {
  local who=$1 command=$2 status=0
  printf '%s$ lending-grpc %s\n' "$who" "$command"
  XDG_CONFIG_HOME="$work/$who" eval "\"\$cli\" $command" 2>&1 || status=$?
  echo "(exit code $status)"
}

PASSWORD="correct horse battery"
echo "# server on $LENDING_SERVER (database $work/lending.db), LENDING_SERVER=$LENDING_SERVER"

say "1. ada borrows; olga is a field officer. Both register and log in" \
  "(tokens are cached in \$XDG_CONFIG_HOME/lending-grpc, mode 0600)"
as ada 'register ada --email ada@example.com --password-stdin <<< "$PASSWORD"' | tee "$work/out"
ADA=$(sed -n 's/^registered ada (user \([^)]*\)).*/\1/p' "$work/out")
as ada 'login ada --password-stdin <<< "$PASSWORD"'
as olga 'register olga --email olga@example.com --password-stdin <<< "$PASSWORD"'
echo "# roles are granted on the server host, against its database, never over the API:"
printf 'host$ lending-grpc users grant olga operator --database-url %s\n' "$database_url"
"$cli" users grant olga operator --database-url "$database_url"
as olga 'login olga --password-stdin <<< "$PASSWORD"'
echo "# olga names ada's loans by ada's user id, as register printed it:"
echo "ADA=$ADA"

say "2. ada's 5,000,000 loan over 50 weeks at 10% flat, starting Monday 2026-01-05"
as ada 'loan create L-1001 5000000 --start-date 2026-01-05'

say "3. Its schedule (first and last weeks)"
as ada 'loan schedule L-1001' >"$work/out"
head -n 5 "$work/out"
echo "  ..."
tail -n 2 "$work/out"

say "4. olga collected the first week in cash on 2026-01-12 and records it later, back-dated"
as olga 'pay L-1001 110000 --owner "$ADA" --value-date 2026-01-12'
as ada 'loan schedule L-1001' >"$work/out"
head -n 4 "$work/out"
echo "  ..."

say "5. Weeks 2 and 3 go unpaid: as of 2026-01-27 the loan is delinquent"
as ada 'loan status L-1001 --as-of 2026-01-27'
as ada 'delinquent --as-of 2026-01-27'

say "6. olga collects the missed fortnight on 2026-01-28 (amounts from the tables are accepted as typed)"
as olga 'pay L-1001 220,000.00 --owner "$ADA" --value-date 2026-01-28' | tee "$work/out"
CATCH_UP=$(sed -n 's/^payment  *//p' "$work/out")
as ada 'loan status L-1001 --as-of 2026-01-28'

say "7. Only whole installments are accepted: the error says what would be"
refused ada 'pay L-1001 50000'

say "8. The fortnight's transfer bounced: olga reverses it, and the loan stands as if it had never been paid"
as olga 'reverse "$CATCH_UP" --reason "transfer bounced"'
as olga 'loan payments L-1001 --owner "$ADA"'
as ada 'loan status L-1001 --as-of 2026-01-28'

say "9. On 2026-02-10 olga collects everything that is left"
as olga 'pay L-1001 --payoff --owner "$ADA" --value-date 2026-02-10'
as ada 'loan outstanding L-1001'
as ada 'loan show L-1001' >"$work/out"
head -n 3 "$work/out"
echo "..."
tail -n 2 "$work/out"

say "10. Its delinquency history: one period, from 2026-01-27 to the payoff (the bounced catch-up no longer ends it)"
as ada 'history L-1001'

say "11. A paid-off loan accepts no more payments"
refused ada 'pay L-1001 110000'

say "12. The funding-quality report for January, with an older loan of ada's that was never repaid"
as ada 'loan create L-0999 2000000 --start-date 2025-10-06' >"$work/out"
grep -E '^(ada[$] |loan |total |weekly payment )' "$work/out"
echo "..."
as olga 'portfolio --all --as-of 2026-01-31'

say "13. Every change is in the event log, for other services to follow (events --follow, or --json)"
as ada 'events'

say "done: stopping the server"
