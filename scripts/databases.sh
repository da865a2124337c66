#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and MariaDB (127.0.0.1:3306,
# root with an empty password) are installed, running and have a `test` database. Idempotent:
# on a machine that already has them it only checks. Needs root (apt-get) on a fresh machine.
set -euo pipefail

if ! command -v pg_ctlcluster >/dev/null || ! command -v mariadbd >/dev/null; then
  echo "== installing PostgreSQL and MariaDB (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql mariadb-server >/dev/null
  fresh_install=1
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ "${fresh_install:-0}" = 1 ]; then
    # Trust local TCP connections, as the tests' URLs carry no password.
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' \
      "/etc/postgresql/$version/main/pg_hba.conf"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi

if ! mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  for _ in $(seq 1 60); do
    mariadb-admin --protocol=socket -u root ping >/dev/null 2>&1 && break
    sleep 1
  done
  if [ "${fresh_install:-0}" = 1 ]; then
    # Debian's root authenticates by unix socket; the tests connect over TCP with no password.
    mariadb --protocol=socket -u root -e \
      "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;"
  fi
fi

for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p 5432 \
    && mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1 && break
  sleep 1
done

psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null
mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u root -e "CREATE DATABASE IF NOT EXISTS test"
echo "== databases ready: PostgreSQL and MariaDB answer on 127.0.0.1"
