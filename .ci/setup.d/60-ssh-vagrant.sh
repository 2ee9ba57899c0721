#!/usr/bin/env bash
# kinds ssh and vagrant:
#  * openssh-server (the tests run their own sshd on 127.0.0.1, never the system's) and a
#    dedicated user `portability-test` for the password-authentication test (locked: the test
#    sets a throwaway password and locks it again);
#  * vagrant + vagrant-libvirt + libvirtd (no systemd here: virtlogd and libvirtd are started
#    by hand), with the three workarounds this machine needs: qemu.conf user/group root (else
#    every domain define re-probes qemu for ~50 s), a storage pool of our own, and the box's
#    loopback-SSH Ruby prepend (inside the box's Vagrantfile);
#  * the test box portability/debian12-tcg, built once (~70 s) and cached by the hash of its
#    build script and Vagrantfile.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$(pwd)
# Vagrant must not call home (version and box update checks): only loopback and the archive.
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1

PACKAGES=(openssh-server openssh-client openssh-sftp-server sudo
          vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
          qemu-system-x86 qemu-utils debootstrap extlinux syslinux-common fdisk e2fsprogs
          procps iproute2)
BOX_NAME=portability/debian12-tcg
POOL=portability
POOL_DIR=/var/lib/libvirt/portability-pool
CACHE=${PORTABILITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/portability}
LOGDIR=/var/log/portability
mkdir -p "$LOGDIR"

# -- packages (services must not be started by maintainer scripts) --------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  policy=/usr/sbin/policy-rc.d
  created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
  fi
  rc=0
  { apt-get -q -y -o DPkg::Lock::Timeout=600 update &&
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 \
      install --no-install-recommends "${missing[@]}"; } || rc=$?
  [ "$created" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || exit "$rc"
else
  echo "ssh/vagrant: packages already installed"
fi

# -- the test user for password and non-root logins (no password until a test sets one) ----------
if ! id portability-test >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh --comment "pytest-portability tests" portability-test
  echo "ssh: created user portability-test (no password)"
fi
# "*": no password can match; key logins to the tests' own sshd still work ("!" locks those too).
usermod --password '*' portability-test

# -- libvirt ---------------------------------------------------------------------------------------
conf=/etc/libvirt/qemu.conf
if ! grep -q '^user = "root"' "$conf"; then
  printf '\n# pytest-portability: /dev/kvm is root-only here; as libvirt-qemu every define\n# re-probed qemu (~50 s).\nuser = "root"\ngroup = "root"\n' >>"$conf"
  restart_libvirtd=1
else
  restart_libvirtd=0
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! alive /run/virtlogd.pid; then
  /usr/sbin/virtlogd -d
  echo "libvirt: started virtlogd"
fi
if alive /run/libvirtd.pid && [ "$restart_libvirtd" -eq 1 ]; then
  kill "$(cat /run/libvirtd.pid)"
  for _ in $(seq 30); do alive /run/libvirtd.pid || break; sleep 0.5; done
fi
if ! alive /run/libvirtd.pid; then
  /usr/sbin/libvirtd -d
  echo "libvirt: started libvirtd"
fi
for _ in $(seq 60); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 1
done
virsh -c qemu:///system version >/dev/null

# No libvirt NAT network ever: VMs reach the host only through a qemu hostfwd on 127.0.0.1.
virsh -c qemu:///system net-autostart default --disable >/dev/null 2>&1 || true

# vagrant-libvirt only creates a pool named `default` by itself; the box uses ours.
if ! virsh -c qemu:///system pool-info "$POOL" >/dev/null 2>&1; then
  mkdir -p "$POOL_DIR"
  virsh -c qemu:///system pool-define-as "$POOL" dir --target "$POOL_DIR" >/dev/null
  virsh -c qemu:///system pool-autostart "$POOL" >/dev/null
fi
# (no `virsh | grep -q`: with pipefail, grep's early exit fails the pipe through SIGPIPE)
pool_state=$(virsh -c qemu:///system pool-info "$POOL")
if ! grep -q '^State:.*running' <<<"$pool_state"; then
  virsh -c qemu:///system pool-start "$POOL" >/dev/null
fi
echo "libvirt: pool $POOL ready"

# -- the test box ----------------------------------------------------------------------------------
hash=$(cat tests/vagrant/build-box.sh tests/vagrant/box.Vagrantfile | sha256sum | cut -c1-12)
box_file=$CACHE/vagrant-box/debian12-tcg-$hash.box
if [ ! -s "$box_file" ]; then
  echo "vagrant: building the test box (about 70 s; log $LOGDIR/build-box.log)"
  bash tests/vagrant/build-box.sh "$box_file" >"$LOGDIR/build-box.log" 2>&1 || {
    tail -n 30 "$LOGDIR/build-box.log" >&2; exit 1; }
  find "$CACHE/vagrant-box" -name 'debian12-tcg-*.box' ! -name "$(basename "$box_file")" -delete
fi
marker=$CACHE/vagrant-box/added-$hash
boxes=$(vagrant box list 2>/dev/null || true)
if [ ! -e "$marker" ] || ! grep -q "^$BOX_NAME " <<<"$boxes"; then
  vagrant box remove --force --all "$BOX_NAME" >/dev/null 2>&1 || true
  # vagrant-libvirt caches the box's disk as a pool volume: drop the stale copy.
  for vol in $(virsh -c qemu:///system vol-list "$POOL" 2>/dev/null | awk 'NR>2 && $1 ~ /debian12-tcg/ {print $1}'); do
    virsh -c qemu:///system vol-delete --pool "$POOL" "$vol" >/dev/null
  done
  vagrant box add --force --name "$BOX_NAME" "$box_file" >>"$LOGDIR/build-box.log" 2>&1
  rm -f "$CACHE"/vagrant-box/added-*
  touch "$marker"
  echo "vagrant: box $BOX_NAME added"
else
  echo "vagrant: box $BOX_NAME up to date"
fi
plugins=$(vagrant plugin list 2>/dev/null || true)
grep -q vagrant-libvirt <<<"$plugins" || { echo "vagrant-libvirt is not visible to vagrant" >&2; exit 1; }
echo "ssh/vagrant: ready ($REPO)"
