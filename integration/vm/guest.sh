# Runs in each test VM, from /init (busybox sh, before any chroot). The harness
# (integration/src/nfs_vm.rs) copies it into the share and writes /share/<role>.env with
# CLIENT_ID, NFS_SOURCE, NFS_OPTIONS, MOUNT_POINT, BIN and CONFIGS (host paths).
ROLE=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^ha.role=//p')
. "/share/$ROLE.env"
hostname "ha-vm-$ROLE"
# Each VM needs its own NFSv4 client identity, or ganesha takes the second VM for a reboot of
# the first (then locks are not exclusive and state recovery fails with ESTALE).
echo "$CLIENT_ID" > /sys/module/nfs/parameters/nfs4_unique_id
mount -t nfs -o "$NFS_OPTIONS" "$NFS_SOURCE" "/host$MOUNT_POINT" || { echo "GUEST FAILED: NFS mount"; exit 1; }
grep " /host$MOUNT_POINT " /proc/mounts
echo "GUEST NFS MOUNTED at $(cut -d' ' -f1 /proc/uptime) s"
echo "GUEST: starting sidecars at $(date -u +%T) (uptime $(cut -d' ' -f1 /proc/uptime) s)"
for c in $CONFIGS; do
  chroot /host "$BIN" run -c "$c" > "/host$c.log" 2>&1 &
done
wait
echo "GUEST: sidecars exited"
