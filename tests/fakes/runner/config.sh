#!/bin/bash
# config.sh of the actions/runner test double: registers with the fake GitHub's /_fake/ API
# and writes .runner here, through bin/Runner.Listener configure (as the real config.sh does).
#   ./config.sh --url URL --token TOKEN [--name NAME] [--labels a,b] [--unattended]
#               [--ephemeral] [--runnergroup G] [--work DIR] [--replace] [--disableupdate]
# A value flag may come as the variable ACTIONS_RUNNER_INPUT_<FLAG> instead (the token too).
set -euo pipefail

runner_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$runner_root/bin/Runner.Listener" configure "$@"
