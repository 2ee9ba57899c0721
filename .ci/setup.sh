#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (root, no systemd, nothing running) to run the test suite:
# packages, the Python package, the Docker Engine, the base images, then .ci/setup.d/*.sh.
# Idempotent: a second run only checks and finishes in seconds.
# Quiet: one line per step with its duration; everything else goes to $PORTABILITY_SETUP_LOG.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
export PORTABILITY_SETUP_LOG=${PORTABILITY_SETUP_LOG:-/tmp/portability-setup.log}
LOG=$PORTABILITY_SETUP_LOG
: >"$LOG"
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -q -y -o DPkg::Lock::Timeout=600)

# Packages the tests and the bundled targets need; setup.d scripts add their own.
PACKAGES=(
  debootstrap busybox-static   # building the catalog images (portability/images.py)
  gcc libc6-dev                # the static command agent
  openssh-server openssh-client
  podman                       # tests/integration/test_podman.py: the Docker-compatible API
  git ca-certificates procps   # procps: pgrep in setup.d scripts and tests
  chromium chromium-driver     # tests/integration/test_html_browser.py: the HTML report, headless
  python3 python3-pip python3-venv
)

now() { date +%s.%N; }

# step NAME CMD... — run CMD with its output in the log; print NAME and its duration, or the log
# tail and exit on failure.
step() {
  local name=$1 start rc
  shift
  start=$(now)
  printf '%-40s ' "$name"
  echo "=== $name: $*" >>"$LOG"
  set +e
  ( set -euo pipefail; "$@" ) >>"$LOG" 2>&1 </dev/null
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "FAILED (exit $rc) after $(awk -v s="$start" -v e="$(now)" 'BEGIN{printf "%.1f", e-s}')s"
    echo "---- last 40 lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  awk -v s="$start" -v e="$(now)" 'BEGIN{printf "%.1fs\n", e-s}'
}

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh needs root (it installs packages and starts dockerd)" >&2
  exit 1
fi

# apt must not start services (openssh-server's sshd on :22, docker.io's dockerd through
# init scripts): the tests run their own daemons, bound to loopback.
install_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { echo "all installed: $*"; return 0; }
  local policy=/usr/sbin/policy-rc.d created=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
  fi
  { "${APT[@]}" update && "${APT[@]}" install --no-install-recommends "${missing[@]}"; } || rc=$?
  [ "$created" -eq 1 ] && rm -f "$policy"
  return "$rc"
}

pip_install() {
  local extra=()
  # Debian's own python3 refuses pip installs (PEP 668); on a throwaway CI machine installing
  # into it is what makes the README's plain `python3 -m pytest` work.
  if python3 -c 'import sys,sysconfig,os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"),"EXTERNALLY-MANAGED")) else 1)'; then
    extra+=(--break-system-packages)
  fi
  python3 -m pip install -q --disable-pip-version-check "${extra[@]}" -e "$REPO[test]"
  # pyenv only finds new console scripts (`portability`) after a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  python3 -c 'import portability, docker, pytest, yaml'
}


total_start=$(now)
echo "setup: log in $LOG"
step "apt packages" install_packages "${PACKAGES[@]}"
step "pip install -e .[test]" pip_install

# 10-docker.sh installs and starts the engine; later scripts add QEMU, Vagrant, ...
for script in .ci/setup.d/*.sh; do
  [ -e "$script" ] || continue
  if [ ! -x "$script" ]; then
    echo "setup.d: skipping $script (not executable)" >>"$LOG"
    continue
  fi
  step "setup.d/$(basename "$script")" bash "$script"
done

# The images bundled targets.yaml and the tests use; cached rootfs tarballs make reruns fast.
# `python3 -m portability.cli` is the `portability` command without relying on PATH/pyenv shims.
step "images (portability images build --all)" python3 -m portability.cli images build --all

awk -v s="$total_start" -v e="$(now)" 'BEGIN{printf "setup: done in %.0fs\n", e-s}'
