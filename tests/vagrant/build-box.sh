#!/usr/bin/env bash
# Build the Vagrant test box "portability/debian12-tcg" for vagrant-libvirt (about 70 s):
# a Debian 12 minbase root filesystem with the cloud kernel (6.1, so never the host's kernel),
# sshd, sudo and a `vagrant` user, on a qcow2 disk that boots by itself (extlinux), plus a
# box-level Vagrantfile that runs it under TCG with no libvirt network: SSH reaches the guest
# only through a qemu user-mode NIC forwarded to 127.0.0.1.
#
#   build-box.sh OUT.box        (root: debootstrap, loop mount)
#
# The box carries its own ed25519 key pair (not Vagrant's well-known insecure key).
# Debian mirror: $PORTABILITY_DEBIAN_MIRROR (the same variable portability/images.py reads).
set -euo pipefail

OUT=${1:?usage: build-box.sh OUT.box}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MIRROR=${PORTABILITY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" -eq 0 ] || { echo "build-box.sh needs root (debootstrap, loop devices)" >&2; exit 1; }
for tool in debootstrap sfdisk mkfs.ext4 extlinux qemu-img losetup ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "build-box.sh: $tool is missing" >&2; exit 1; }
done
MBR=
for candidate in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin; do
  [ -e "$candidate" ] && { MBR=$candidate; break; }
done
[ -n "$MBR" ] || { echo "build-box.sh: syslinux mbr.bin is missing (syslinux-common)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/portability-box.XXXXXX)
loopdev=
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
rootfs=$work/rootfs
mkdir -p "$work/box" "$work/mnt"
t0=$SECONDS

# -- root filesystem --------------------------------------------------------------------------
debootstrap --variant=minbase \
  --include=systemd-sysv,udev,dbus,openssh-server,sudo,linux-image-cloud-amd64,initramfs-tools,iproute2,netbase,procps,python3 \
  bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
echo "box: debootstrap done in $((SECONDS - t0)) s"

ssh-keygen -q -t ed25519 -N '' -C portability-box -f "$work/box/vagrant_ed25519"

chroot "$rootfs" useradd -m -s /bin/bash -U vagrant
install -d -m 700 "$rootfs/home/vagrant/.ssh"
install -m 600 "$work/box/vagrant_ed25519.pub" "$rootfs/home/vagrant/.ssh/authorized_keys"
chown -R "$(chroot "$rootfs" id -u vagrant):$(chroot "$rootfs" id -g vagrant)" "$rootfs/home/vagrant"
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$rootfs/etc/sudoers.d/vagrant"
chmod 440 "$rootfs/etc/sudoers.d/vagrant"

echo portability-box >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 portability-box\n' >"$rootfs/etc/hosts"
echo 'LABEL=vroot / ext4 defaults,noatime 0 1' >"$rootfs/etc/fstab"
: >"$rootfs/etc/machine-id"   # a fresh id on every first boot

cat >"$rootfs/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
chroot "$rootfs" systemctl enable systemd-networkd.service >/dev/null 2>&1

# sshd: only an ed25519 host key, made at first boot (RSA keygen costs 5-14 s under TCG),
# no reverse DNS (slirp has a resolver the guest must not wait on).
rm -f "$rootfs"/etc/ssh/ssh_host_*
cat >"$rootfs/etc/ssh/sshd_config.d/portability.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
EOF
mkdir -p "$rootfs/etc/systemd/system/ssh.service.d"
cat >"$rootfs/etc/systemd/system/ssh.service.d/hostkey.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -s /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
EOF

kernel=$(cd "$rootfs/boot" && ls vmlinuz-* | sort -V | tail -n 1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -e "$rootfs/boot/$initrd" ] || { echo "build-box.sh: no $initrd in the rootfs" >&2; exit 1; }
mkdir -p "$rootfs/boot/extlinux"
cat >"$rootfs/boot/extlinux/extlinux.conf" <<EOF
DEFAULT linux
TIMEOUT 0
PROMPT 0
LABEL linux
  KERNEL /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=LABEL=vroot ro console=ttyS0 net.ifnames=0 quiet
EOF
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log

# -- disk: 4 GiB, one bootable partition at 1 MiB, ext4 filled straight from the tree ------------
disk=$work/disk.raw
truncate -s 4G "$disk"
echo 'start=2048, type=83, bootable' | sfdisk -q "$disk"
# extlinux reads neither 64bit nor metadata_csum ext4.
mkfs.ext4 -q -F -L vroot -O ^64bit,^metadata_csum -E offset=1048576 -d "$rootfs" "$disk" 4095M
loopdev=$(losetup --find --show --offset 1048576 "$disk")
mount "$loopdev" "$work/mnt"
extlinux --install "$work/mnt/boot/extlinux" >/dev/null 2>&1
umount "$work/mnt"
losetup -d "$loopdev"
loopdev=
dd if="$MBR" of="$disk" bs=440 count=1 conv=notrunc status=none
qemu-img convert -c -O qcow2 "$disk" "$work/box/box.img"
echo "box: disk image done in $((SECONDS - t0)) s"

# -- the box ------------------------------------------------------------------------------------
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": 4}\n' >"$work/box/metadata.json"
install -m 644 "$HERE/box.Vagrantfile" "$work/box/Vagrantfile"
rm -f "$work/box/vagrant_ed25519.pub"
mkdir -p "$(dirname "$OUT")"
tar -C "$work/box" -czf "$OUT.partial" metadata.json Vagrantfile vagrant_ed25519 box.img
mv -f "$OUT.partial" "$OUT"
echo "box: $OUT ($(du -h "$OUT" | cut -f1)) in $((SECONDS - t0)) s"
