#!/bin/sh
# Destroy one local instance: stop its whole process group (SIGTERM, then SIGKILL after the
# grace period), keep a copy of its log, remove the sandbox. Idempotent: a missing sandbox is
# already destroyed.
#
# Environment: SANDBOX, LOG_ARCHIVE_DIR (empty: do not keep the log), GRACE_SECONDS.
set -eu

: "${SANDBOX:?SANDBOX is required}"
grace=${GRACE_SECONDS:-10}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
. "$here/lib.sh"

if [ ! -d "$SANDBOX" ]; then
  echo "local instance $(basename "$SANDBOX") is already gone"
  exit 0
fi

pgid=$(cat "$SANDBOX/pgid" 2>/dev/null || true)
if [ -n "$pgid" ] && group_alive "$pgid"; then
  kill -s TERM -- "-$pgid" 2>/dev/null || true
  waited=0
  while group_alive "$pgid" && [ "$waited" -lt $((grace * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if group_alive "$pgid"; then
    kill -s KILL -- "-$pgid" 2>/dev/null || true
  fi
fi

if [ -n "${LOG_ARCHIVE_DIR:-}" ] && [ -f "$SANDBOX/instance.log" ]; then
  umask 077
  mkdir -p "$LOG_ARCHIVE_DIR"
  cp "$SANDBOX/instance.log" "$LOG_ARCHIVE_DIR/instance.log"
fi
rm -rf "$SANDBOX"
echo "local instance $(basename "$SANDBOX") destroyed"
