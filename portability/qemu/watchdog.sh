#!/bin/sh
# Guardian of one qemu VM: started by the session with a pipe as stdin, it outlives the
# session's process. When that pipe ends (stop() closed it, or the session died of SIGTERM,
# SIGINT or SIGKILL), it makes sure the VM's qemu is gone and removes the VM's temp dir.
#   watchdog.sh DIR      stdin: one line "PID" (the qemu process), then EOF when done
trap '' INT TERM HUP
dir=$1
read -r pid
cat >/dev/null
# Only kill the process if it is still this VM's qemu (its command line names DIR).
ours() { [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qF "$dir"; }
if ours; then
    kill -TERM "$pid" 2>/dev/null
    i=0
    while ours && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
    ours && kill -KILL "$pid" 2>/dev/null
fi
case "$dir" in
    */portability-*) rm -rf "$dir" ;;
esac
