#!/usr/bin/env bash
# The whole lifecycle on the local cloud, with no credentials: a task with its folder, its log,
# its exit code and its output; then an instance that idles and destroys itself.
set -euo pipefail

cli=${CML_INFRA_CLI:-cml-infra}
# The task runs from its own folder: a relative path to the CLI must not depend on this one.
case $cli in
*/*) cli="$(cd "$(dirname "$cli")" && pwd)/$(basename "$cli")" ;;
esac
project=$(mktemp -d "${TMPDIR:-/tmp}/cml-infra-demo.XXXXXX")
trap 'rm -rf "$project"' EXIT

mkdir -p "$project/data"
printf '3 1 4 1 5 9 2 6\n' >"$project/data/samples.txt"
printf 'big, and not needed by the task\n' >"$project/data/raw.bin"
printf 'data/raw.bin\n' >"$project/.cml-infra-ignore"
cat >"$project/train.py" <<'EOF'
import json, pathlib, statistics
samples = [int(x) for x in pathlib.Path("data/samples.txt").read_text().split()]
print(f"training on {len(samples)} samples; raw data shipped: {pathlib.Path('data/raw.bin').exists()}")
model = {"mean": statistics.mean(samples), "stdev": round(statistics.stdev(samples), 3)}
pathlib.Path("model.json").write_text(json.dumps(model))
print(f"model: {model}")
EOF

echo "== cml-infra up --single --out model.json -- python3 train.py   (in $project)"
# Attached: the task's log streams here, its exit code is up's, model.json comes back.
(cd "$project" && "$cli" up --cloud local --name "demo-task-$$" --single --out model.json \
  -- python3 train.py)
echo
echo "== model.json came home: $(cat "$project/model.json")"

echo
echo "== cml-infra up: an instance on the local cloud that runs one task, then idles 10s"
# shellcheck disable=SC2016 # expanded by the instance's shell, not this one
name=$(cd "$project" && "$cli" up --cloud local --idle-timeout 10s --labels demo -- \
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
echo "demo: the task ran in a copy of its folder and its model came back; $name ran its task" \
  "and destroyed itself when idle"
