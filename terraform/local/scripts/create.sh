#!/bin/sh
# Create one local instance: a sandbox folder whose startup script runs in a session (and so a
# process group) of its own, detached from Terraform. Waits until the agent reports, so that a
# boot that fails is reported by `terraform apply` and cleaned up here, not left half made.
#
# Environment: SANDBOX, STARTUP_SCRIPT, INSTANCE_JSON, READY_TIMEOUT (seconds).
set -eu

: "${SANDBOX:?SANDBOX is required}"
: "${STARTUP_SCRIPT:?STARTUP_SCRIPT is required}"
: "${INSTANCE_JSON:?INSTANCE_JSON is required}"
ready_timeout=${READY_TIMEOUT:-60}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
. "$here/lib.sh"

if [ -e "$SANDBOX" ]; then
  echo "local instance: $SANDBOX already exists; another instance has this name" >&2
  exit 1
fi

umask 077
mkdir -p "$SANDBOX"
printf '%s\n' "$INSTANCE_JSON" >"$SANDBOX/instance.json"
printf '%s\n' "$STARTUP_SCRIPT" >"$SANDBOX/startup.sh"

# setsid gives the instance its own session; `$$` of the sh it runs is then the process-group
# id that destroy signals (written whole, through a rename, so it is never read half written).
# No descriptor of Terraform's is inherited, or apply would wait on it.
# Like a fresh VM, the instance gets a clean environment: no variable of the launcher's but the
# basics, so no token or key passed in one. It is no isolation boundary, though: it runs as the
# same user, on this machine, so whatever credentials that user keeps in files are within its
# reach. The local cloud runs trusted code only.
cd "$SANDBOX"
env -i PATH="$PATH" HOME="${HOME:-/}" LANG="${LANG:-C.UTF-8}" TMPDIR="${TMPDIR:-/tmp}" \
  setsid sh -c 'echo "$$" >pgid.tmp && mv -f pgid.tmp pgid && exec bash startup.sh' \
  </dev/null >>console.log 2>&1 &

fail() {
  echo "local instance: $1" >&2
  if [ -f "$SANDBOX/console.log" ]; then
    echo "--- last lines of the instance console ---" >&2
    tail -n 20 "$SANDBOX/console.log" >&2
  fi
  SANDBOX="$SANDBOX" LOG_ARCHIVE_DIR="" GRACE_SECONDS=2 sh "$here/destroy.sh" >&2 || true
  exit 1
}

waited=0
while [ ! -f "$SANDBOX/agent-status.json" ]; do
  if [ ! -d "$SANDBOX" ]; then
    echo "local instance: $SANDBOX was removed while it booted" >&2
    exit 1
  fi
  if [ "$waited" -ge $((ready_timeout * 10)) ]; then
    fail "the agent did not start within ${ready_timeout}s"
  fi
  # Once the pgid is written, its group must live on and be this sandbox's (a startup script
  # that exits early leaves a pgid that another process group may take over).
  if [ -f "$SANDBOX/pgid" ] && ! group_of_sandbox "$(cat "$SANDBOX/pgid")" "$SANDBOX"; then
    fail "the startup script exited before the agent started"
  fi
  sleep 0.1
  waited=$((waited + 1))
done
echo "local instance $(basename "$SANDBOX") is up (process group $(cat "$SANDBOX/pgid"))"
