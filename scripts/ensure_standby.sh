#!/usr/bin/env bash
# A streaming replica of the machine's local PostgreSQL (127.0.0.1:5432) on port 5433, for
# the read-replica tests (tests/e2e/standby.rs). Made once (pg_createcluster, then
# pg_basebackup of the primary), started when it is down; the primary is let take
# replication connections from 127.0.0.1.
set -euo pipefail

version="$(ls /etc/postgresql | sort -V | tail -1)"
primary_hba="/etc/postgresql/$version/main/pg_hba.conf"
standby_data="/var/lib/postgresql/$version/standby"

if ! grep -qE '^host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32' "$primary_hba"; then
  echo "host replication all 127.0.0.1/32 trust" >> "$primary_hba"
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi

if ! pg_lsclusters --no-header | awk '{print $2}' | grep -qx standby; then
  pg_createcluster "$version" standby --port 5433 > /dev/null
fi
if [ ! -f "$standby_data/standby.signal" ]; then
  echo "making the cluster on port 5433 a standby of the local PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$version" standby stop 2> /dev/null || true
  rm -rf "$standby_data"
  install -d -o postgres -g postgres -m 0700 "$standby_data"
  # -R writes standby.signal and the connection to the primary.
  runuser -u postgres -- pg_basebackup -h 127.0.0.1 -p 5432 -U postgres \
    -D "$standby_data" -R -X stream --checkpoint=fast
fi

# The standby takes the same connections as the primary (trust from 127.0.0.1).
if ! cmp -s "$primary_hba" "/etc/postgresql/$version/standby/pg_hba.conf"; then
  cp "$primary_hba" "/etc/postgresql/$version/standby/pg_hba.conf"
  if pg_isready -q -h 127.0.0.1 -p 5433; then
    pg_ctlcluster --skip-systemctl-redirect "$version" standby reload
  fi
fi

if ! pg_isready -q -h 127.0.0.1 -p 5433; then
  pg_ctlcluster --skip-systemctl-redirect "$version" standby start
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5433 && break
    sleep 1
  done
fi
pg_isready -h 127.0.0.1 -p 5433
