#!/bin/sh
# Destroy one local instance: stop its whole process group (SIGTERM, then SIGKILL after the
# grace period), keep a copy of its log, remove the sandbox. Idempotent: a missing sandbox is
# already destroyed. The group is signalled only while it is provably the sandbox's (lib.sh's
# group_of_sandbox): a stale sandbox's pgid may have been reused by an unrelated process group,
# which is left alone.
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
if [ -z "$pgid" ]; then
  : # the instance never started, or died before it wrote its pgid
elif ! valid_pgid "$pgid"; then
  echo "local instance $(basename "$SANDBOX"): its pgid file names no process group; nothing signalled" >&2
elif group_of_sandbox "$pgid" "$SANDBOX"; then
  kill -s TERM -- "-$pgid" 2>/dev/null || true
  waited=0
  while group_of_sandbox "$pgid" "$SANDBOX" && [ "$waited" -lt $((grace * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if group_of_sandbox "$pgid" "$SANDBOX"; then
    kill -s KILL -- "-$pgid" 2>/dev/null || true
  fi
elif kill -s 0 -- "-$pgid" 2>/dev/null; then
  echo "local instance $(basename "$SANDBOX"): process group $pgid is not this instance's" \
    "(none of it works in the sandbox; its pgid was reused); left alone" >&2
fi

if [ -n "${LOG_ARCHIVE_DIR:-}" ] && [ -f "$SANDBOX/instance.log" ]; then
  umask 077
  mkdir -p "$LOG_ARCHIVE_DIR"
  # Into a fresh file, renamed over the kept log: whatever is planted at its name (a symlink,
  # to a file or a folder) is replaced, never written through.
  kept=$(mktemp "$LOG_ARCHIVE_DIR/.instance.log.XXXXXX")
  if ! { cp "$SANDBOX/instance.log" "$kept" && mv -f -T "$kept" "$LOG_ARCHIVE_DIR/instance.log"; }; then
    rm -f "$kept"
    echo "local instance $(basename "$SANDBOX"): could not keep its log in $LOG_ARCHIVE_DIR" >&2
    exit 1
  fi
fi
rm -rf "$SANDBOX"
echo "local instance $(basename "$SANDBOX") destroyed"
