# shellcheck shell=sh
# Shared by create.sh and destroy.sh (sourced, not run).

# True while process group $1 has a process that has not exited. Exited processes stay as
# zombies until init reaps them, which some inits do only every second or so, and `kill -0`
# counts zombies as alive.
group_alive() {
  kill -s 0 -- "-$1" 2>/dev/null || return 1
  command -v ps >/dev/null 2>&1 || return 0
  ps -e -o pgid= -o stat= | awk -v group="$1" '$1 == group && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}
