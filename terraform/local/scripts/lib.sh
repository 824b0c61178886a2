# shellcheck shell=sh
# Shared by create.sh and destroy.sh (sourced, not run).

# True when $1 can name an instance's process group: a decimal integer above 1, as the kernel
# prints it. `kill -- -1` would signal every process we may signal (all of them, as root), and
# `kill -- -0` our own group; a pid above 4194304 (Linux's largest pid_max) names nothing.
valid_pgid() {
  case $1 in
    '' | 0* | *[!0-9]*) return 1 ;;
  esac
  [ "${#1}" -le 7 ] && [ "$1" -gt 1 ]
}

# The members of process group $1 that have not exited, one pid a line. Exited processes stay
# as zombies until init reaps them, which some inits do only every second or so, and `kill -0`
# counts zombies as alive. Without ps, /proc is read directly (the process name, in
# parentheses, may hold spaces and parentheses: the fields that follow it are all numbers).
group_members() {
  if command -v ps >/dev/null 2>&1; then
    ps -e -o pid= -o pgid= -o stat=
  else
    sed -n 's/^\([0-9]*\) (.*) \([A-Za-z]\) [0-9-]* \([0-9-]*\) .*/\1 \3 \2/p' /proc/[0-9]*/stat 2>/dev/null
  fi | awk -v group="$1" '$2 == group && $3 !~ /^Z/ { print $1 }'
}

# True while process group $1 has a live member and it is provably the instance in sandbox $2:
# a live member works in that folder or below it. A pgid is reused once its group is gone, so
# a stale sandbox's pgid file may name some other process group, which is not ours to signal.
group_of_sandbox() {
  valid_pgid "$1" || return 1
  kill -s 0 -- "-$1" 2>/dev/null || return 1
  # The kernel reports a working folder with every symlink resolved.
  _gos_real=$(cd -P -- "$2" 2>/dev/null && pwd -P) || return 1
  for _gos_member in $(group_members "$1"); do
    _gos_cwd=$(readlink "/proc/$_gos_member/cwd" 2>/dev/null) || continue
    case $_gos_cwd in
      "$_gos_real" | "$_gos_real"/*) return 0 ;;
    esac
  done
  return 1
}
