#!/usr/bin/env bash
# The Docker Engine: Debian's docker.io, started by hand (CI machines have no systemd), and
# left running for the test run. Idempotent: does nothing when the socket already answers.
set -euo pipefail

SOCK=/var/run/docker.sock
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/portability-dockerd.log}
WAIT_S=${DOCKERD_WAIT_S:-60}

# Answers when the Engine API does; plain stdlib so it works before any pip install.
engine_answers() {
  python3 - "$SOCK" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
try:
    s.connect(sys.argv[1])
    s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    reply = s.recv(4096)
except OSError:
    sys.exit(1)
sys.exit(0 if reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0] else 1)
EOF
}

if engine_answers; then
  echo "docker: engine already answers on $SOCK"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  policy=/usr/sbin/policy-rc.d
  created=0
  # docker.io's postinst would try to start the daemon through init scripts; we start it below.
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
  fi
  rc=0
  { apt-get -q -y -o DPkg::Lock::Timeout=600 update &&
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 \
      install --no-install-recommends docker.io iptables; } || rc=$?
  [ "$created" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || exit "$rc"
fi

if pgrep -x dockerd >/dev/null; then
  echo "docker: dockerd runs but $SOCK does not answer yet; waiting"
else
  echo "docker: starting dockerd (log $DOCKERD_LOG)"
  # setsid + nohup: the daemon outlives this script and the CI step that ran it.
  setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi

for _ in $(seq "$WAIT_S"); do
  if engine_answers; then
    echo "docker: engine answers on $SOCK"
    exit 0
  fi
  sleep 1
done
echo "docker: dockerd did not answer on $SOCK within ${WAIT_S}s; last lines of $DOCKERD_LOG:" >&2
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1
