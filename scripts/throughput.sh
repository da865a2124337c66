#!/usr/bin/env bash
# HTTP throughput of a light user's page 1 + total next to the same server's /healthz, per
# backend: seeds a fresh database with `seed` (as deployed: nothing tuned or analyzed by hand),
# starts `serve` with default settings (poller off, log level warn so that the terminal is not
# the bottleneck), runs `wrk -t2 -c64` on /healthz and on /api/mj/self alternately and prints
# the pair and its ratio.
#
# usage: scripts/throughput.sh [sqlite] [postgres] [mysql]      (default: all three)
# environment:
#   TASKS=1000000        tasks to seed (fresh database each run)
#   LIGHT_USERS=50       light users sharing 80 % of them (the measured one is <user>-1)
#   DURATION=8s          length of each wrk run; ROUNDS=2 alternations, the best of each kept
#   PG_URL=postgres://postgres@127.0.0.1:5432/test   servers (a database mj_throughput is
#   MYSQL_URL=mysql://root@127.0.0.1:3306/test       created on them and dropped afterwards)
#   DATA_DIR=/tmp        where the SQLite file goes; PORT=3190
set -euo pipefail

cd "$(dirname "$0")/.."
TASKS=${TASKS:-1000000}
LIGHT_USERS=${LIGHT_USERS:-50}
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-2}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
MYSQL_URL=${MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
DATA_DIR=${DATA_DIR:-/tmp}
PORT=${PORT:-3190}
BACKENDS=("$@")
[ ${#BACKENDS[@]} -eq 0 ] && BACKENDS=(sqlite postgres mysql)

command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q -p mj-tasks-server
BIN=target/release/mj-tasks-server
DB_NAME=mj_throughput
server_pid=

# URL of database $2 on the server of URL $1.
with_database() { echo "${1%/*}/$2"; }

database_url() {
  case "$1" in
    sqlite) echo "sqlite://$DATA_DIR/$DB_NAME.db" ;;
    postgres) with_database "$PG_URL" "$DB_NAME" ;;
    mysql) with_database "$MYSQL_URL" "$DB_NAME" ;;
  esac
}

drop_database() {
  case "$1" in
    sqlite) rm -f "$DATA_DIR/$DB_NAME.db" "$DATA_DIR/$DB_NAME.db-wal" "$DATA_DIR/$DB_NAME.db-shm" ;;
    postgres) psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS $DB_NAME" >/dev/null ;;
    mysql) mariadb --protocol=tcp -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS $DB_NAME" ;;
  esac
}

create_database() {
  drop_database "$1"
  case "$1" in
    postgres) psql -q "$PG_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null ;;
    mysql) mariadb --protocol=tcp -h 127.0.0.1 -u root -e "CREATE DATABASE $DB_NAME" ;;
    *) ;;
  esac
}

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT

# Requests per second of one wrk run on path $1 with token $2.
requests_per_second() {
  wrk -t2 -c64 -d"$DURATION" -H "Authorization: Bearer $2" "http://127.0.0.1:$PORT$1" \
    | awk '/^Requests\/sec/ { print int($2) }'
}

printf '%-9s %12s %14s %7s\n' backend "healthz r/s" "light p1 r/s" ratio
for backend in "${BACKENDS[@]}"; do
  url=$(database_url "$backend")
  create_database "$backend"
  seed_log=$(MJ_LOG=warn "$BIN" --database-url "$url" seed --user bench --tasks "$TASKS" \
    --light-users "$LIGHT_USERS")
  echo "$backend: $(echo "$seed_log" | tail -n 1)" >&2
  token=$(MJ_LOG=warn "$BIN" --database-url "$url" user token bench-1 | tail -n 1)
  MJ_LOG=warn "$BIN" --database-url "$url" --bind "127.0.0.1:$PORT" --poll-interval-secs 0 \
    serve &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
  done
  # Warm the caches (pages, statements, the token) before measuring.
  wrk -t2 -c64 -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/api/mj/self" >/dev/null
  health=0
  list=0
  for _ in $(seq 1 "$ROUNDS"); do
    h=$(requests_per_second /healthz "$token")
    l=$(requests_per_second "/api/mj/self?p=1&page_size=20" "$token")
    [ "$h" -gt "$health" ] && health=$h
    [ "$l" -gt "$list" ] && list=$l
  done
  stop_server
  drop_database "$backend"
  printf '%-9s %12d %14d %6d%%\n' "$backend" "$health" "$list" $((100 * list / health))
done
