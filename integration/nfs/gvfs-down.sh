#!/bin/bash
# usage: gvfs-down.sh DIR NETNS — undoes gvfs-up.sh: unmounts, stops exactly the processes it
# started (by PID: those recorded, and those whose XDG_RUNTIME_DIR is one of its state dirs),
# deletes the namespace. Safe to run twice.
DIR=$1; NS=$2
for c in a b; do
  mountpoint -q "$DIR/mnt-$c" && { umount "$DIR/mnt-$c" 2>/dev/null || umount -l "$DIR/mnt-$c"; }
done
pids=()
for p in /proc/[0-9]*; do
  { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "XDG_RUNTIME_DIR=$DIR/state-[ab]/run" && pids+=("${p#/proc/}")
done
for f in "$DIR"/state-*/dbus.pid "$DIR"/state-*/gvfsd.pid "$DIR/ganesha.pid" "$DIR/rpcbind.pid"; do
  [ -f "$f" ] && pids+=("$(cat "$f")")
done
[ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
sleep 0.3
[ ${#pids[@]} -gt 0 ] && kill -9 "${pids[@]}" 2>/dev/null
for c in a b; do
  R=$DIR/state-$c/run/gvfs
  mountpoint -q "$R" 2>/dev/null && { fusermount -u "$R" 2>/dev/null || umount -l "$R"; }
done
ip netns del "$NS" 2>/dev/null
exit 0
