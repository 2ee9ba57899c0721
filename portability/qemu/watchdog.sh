#!/bin/sh
# Guardian of one qemu VM: started by the session with a pipe as stdin, it outlives the
# session's process. When that pipe ends (stop() closed it, or the session died of SIGTERM,
# SIGINT or SIGKILL), it makes sure the VM's qemu is gone and removes the VM's temp dir.
#   watchdog.sh DIR      stdin: one line "PID" per qemu process started, then EOF when done
trap '' INT TERM HUP
dir=$1
pids=
while read -r pid; do pids="$pids $pid"; done
# Only kill a process if it is still this VM's qemu (its command line names DIR).
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' '\n' <"/proc/$1/cmdline" | grep -qF "$dir"; }
for pid in $pids; do
    if ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        i=0
        while ours "$pid" && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
        ours "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
done
case "$dir" in
    */portability-*) rm -rf "$dir" ;;
esac
