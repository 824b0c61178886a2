#!/usr/bin/env bash
# The whole lifecycle on the local cloud, with no credentials: up → task runs → idle → gone.
set -euo pipefail

cli=${CML_INFRA_CLI:-cml-infra}

echo "== cml-infra up: an instance on the local cloud that runs one task, then idles 10s"
# shellcheck disable=SC2016 # expanded by the instance's shell, not this one
name=$("$cli" up --cloud local --idle-timeout 10s --labels demo -- \
  sh -c 'echo "hello from $(hostname), $(nproc) cores"; sleep 3; echo "task done"')

echo
echo "== cml-infra status"
"$cli" status

echo
echo "== cml-infra logs --follow $name (until the agent destroys the idle instance)"
"$cli" logs --follow "$name"

echo
echo "== cml-infra status --all"
"$cli" status --all
state=$("$cli" status --all --json | python3 -c \
  "import json, sys; print(next(r['state'] for r in json.load(sys.stdin) if r['name'] == '$name'))")
if [ "$state" != destroyed ]; then
  echo "demo: $name is $state, expected destroyed" >&2
  exit 1
fi
echo "demo: $name ran its task and destroyed itself when idle"
