#!/bin/sh
# container-init: PID 1 of the image (ENTRYPOINT). Runs the command (default: the service) and passes
# SIGTERM, SIGINT and SIGHUP on to it so the service drains and exits 0, even when the command is a shell
# wrapper such as `sh -c "node --max-old-space-size=… dist/src/main.js"` that neither execs nor forwards
# signals. Signalling the whole process group would kill the wrapper shell at once (its default action),
# and the container would end mid-drain; so the signal goes to the programs the command runs (members of
# its process group that are not shells and whose parent is this init or a shell of the group), and the
# wrapper ends by itself when the service exits, with its exit code. The service's own children (the
# embedded PostgreSQL) are left for it to stop. It also reaps orphaned processes, as PID 1 must.
# POSIX sh and /proc only: nothing to install.
set -u
[ "$#" -gt 0 ] || set -- node dist/src/main.js

# setsid: the command leads its own process group, so everything it starts can be found by its group id.
setsid "$@" &
child=$!

is_shell() {
  case $1 in
    sh | dash | bash | ash | busybox) return 0 ;;
    *) return 1 ;;
  esac
}

# "pid ppid comm" of each member of the command's process group.
members() {
  for stat in /proc/[0-9]*/stat; do
    pid=${stat#/proc/}
    pid=${pid%/stat}
    line=$(cat "$stat" 2>/dev/null) || continue
    # Fields after "pid (comm) ": state ppid pgrp … (comm may hold spaces, so cut at the last ") ").
    set -- ${line##*) }
    [ "${3:-}" = "$child" ] || continue
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    echo "$pid $2 $comm"
  done
}

forward() {
  sig=$1
  list=$(members)
  shells=" $$ "
  for entry in $(printf '%s\n' "$list" | awk '{ print $1 ":" $3 }'); do
    is_shell "${entry#*:}" && shells="$shells${entry%%:*} "
  done
  sent=0
  for entry in $(printf '%s\n' "$list" | awk '{ print $1 ":" $2 ":" $3 }'); do
    pid=${entry%%:*}
    rest=${entry#*:}
    ppid=${rest%%:*}
    comm=${rest#*:}
    is_shell "$comm" && continue
    case $shells in
      *" $ppid "*) kill -s "$sig" "$pid" 2>/dev/null && sent=1 ;;
    esac
  done
  # Nothing found (only shells, or /proc unreadable): tell the command itself.
  [ "$sent" = 1 ] || kill -s "$sig" "$child" 2>/dev/null
  return 0
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

status=0
while :; do
  wait "$child"
  status=$?
  # A trapped signal interrupts `wait` (status > 128) while the command still runs: wait again.
  kill -0 "$child" 2>/dev/null || break
done
exit "$status"
