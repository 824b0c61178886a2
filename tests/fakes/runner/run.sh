#!/bin/bash
# run.sh of the actions/runner test double: runs the listener in this folder's configuration
# (.runner, written by config.sh) or in a JIT config.
#   ./run.sh [--jitconfig ENCODED]
# The JIT config may come as the variable ACTIONS_RUNNER_INPUT_JITCONFIG instead.
set -euo pipefail

runner_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$runner_root/bin/Runner.Listener" run "$@"
