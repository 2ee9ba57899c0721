#!/usr/bin/env bash
# kind: qemu — QEMU (TCG works everywhere; KVM is used only when it really runs here), a static
# busybox for the VMs' initramfs, zstd for kernels with zstd-compressed bzImages (6.12), and
# the default Debian kernels 5.10 / 6.1 / 6.12 fetched once into the user cache.
# Idempotent: installed packages and cached kernels are only checked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PACKAGES=(qemu-system-x86 qemu-system-data busybox-static zstd gcc libc6-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q -y -o DPkg::Lock::Timeout=600 update
  apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "${missing[@]}"
else
  echo "qemu: packages already installed: ${PACKAGES[*]}"
fi
command -v qemu-system-x86_64 >/dev/null

# A private apt configuration under the cache: the host's apt state is not touched.
PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} python3 -m portability.kernels fetch 5.10 6.1 6.12
PYTHONPATH=$(pwd)${PYTHONPATH:+:$PYTHONPATH} python3 -m portability.kernels list
