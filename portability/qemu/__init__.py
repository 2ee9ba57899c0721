"""Guest side of kind: qemu: the initramfs (busybox, modules, /init, the agent) and its parts."""
