#!/bin/sh
# PID 1 of a portability qemu VM (busybox sh, in the initramfs).
#
# Loads the modules listed in /modules/order, mounts the root filesystem read-only with a
# tmpfs overlay on top (writes never reach the host or the image), then replaces itself
# with the project's agent serving commands on the virtio-serial port named "agent".
# No udev, no systemd, no network: the VM is ready as soon as the agent opens its port.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null

ROOT=host
PORT=agent
NAME=portability-vm
P9OPTS=
OVERLAY=1
for x in $(cat /proc/cmdline); do
    case "$x" in
        portability.root=*) ROOT=${x#portability.root=} ;;    # host | image | none
        portability.port=*) PORT=${x#portability.port=} ;;
        portability.hostname=*) NAME=${x#portability.hostname=} ;;
        portability.9p=*) P9OPTS=${x#portability.9p=} ;;       # extra 9p mount options
        portability.overlay=0) OVERLAY= ;;                     # read-only root, tmpfs /tmp
        portability.debug) set -x ;;
    esac
done

# The host reads the console log to explain a failed boot; this line is what it shows.
fail() {
    echo "portability-init: $*" >/dev/console
    sync
    poweroff -f
    sleep 5
    exit 1
}

for m in $(cat /modules/order); do
    [ -d "/sys/module/$m" ] || insmod "/modules/$m.ko" \
        || echo "portability-init: insmod $m failed" >/dev/console
done

# Find the agent's port (vportNpM) by its name.
DEV=
i=0
while [ -z "$DEV" ] && [ $i -lt 500 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ -r "$p/name" ] && [ "$(cat "$p/name")" = "$PORT" ] && DEV=/dev/${p##*/}
    done
    [ -n "$DEV" ] || { usleep 10000; i=$((i + 1)); }
done
[ -n "$DEV" ] || fail "no virtio-serial port named $PORT (virtio_console missing?)"
i=0
while [ ! -e "$DEV" ] && [ $i -lt 200 ]; do usleep 10000; i=$((i + 1)); done

hostname "$NAME"
export HOME=/root TERM=linux LANG=C.UTF-8
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
unset ROOT_DEV init BOOT_IMAGE

if [ "$ROOT" = none ]; then
    mkdir -p /run/portability /tmp
    cp /agent /bin/busybox /run/portability/
    PATH=/bin exec /agent serve "$DEV"
fi

case "$ROOT" in
    host)
        mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose${P9OPTS:+,$P9OPTS} hostroot /lower \
            || fail "mounting the host root over 9p failed (kernel without 9p/9pnet_virtio?)" ;;
    image)
        i=0
        while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do usleep 10000; i=$((i + 1)); done
        [ -b /dev/vda ] || fail "no /dev/vda (virtio_blk missing?)"
        mount -t ext4 -o ro,noload /dev/vda /lower 2>/dev/null || mount -o ro /dev/vda /lower \
            || fail "mounting the root image /dev/vda failed (not a filesystem this kernel reads?)" ;;
    *)
        fail "unknown portability.root=$ROOT" ;;
esac

if [ -n "$OVERLAY" ]; then
    mount -t tmpfs -o mode=755 overlay-rw /rw
    mkdir -p /rw/upper /rw/work
    mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
        || fail "overlay mount failed (kernel without overlayfs?)"
else
    mount --move /lower /newroot
    mount -t tmpfs -o mode=1777 tmp /newroot/tmp
fi

for d in proc sys dev; do
    mkdir -p "/newroot/$d" 2>/dev/null
    mount --move "/$d" "/newroot/$d" || fail "moving /$d into the new root failed"
done
mount -t tmpfs -o mode=755 run /newroot/run || fail "no /run in the root filesystem"
# Like a booted system: the unified cgroup hierarchy where systemd would put it.
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
mkdir -p /newroot/run/portability /newroot/dev/pts /newroot/dev/shm /newroot/tmp
chmod 1777 /newroot/tmp
mount -t devpts -o newinstance,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
# The agent and a busybox (for put/get's tar) live on /run: present whatever the image has.
cp /agent /bin/busybox /newroot/run/portability/
exec switch_root /newroot /run/portability/agent serve "$DEV"
