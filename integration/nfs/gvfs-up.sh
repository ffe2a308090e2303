#!/bin/bash
# usage: gvfs-up.sh DIR NETNS
# A userspace NFS server (nfs-ganesha) and two independent gvfs FUSE NFS clients in a private
# network namespace NETNS; the clients' views are bind-mounted on DIR/mnt-a and DIR/mnt-b.
# Every PID started is recorded under DIR so gvfs-down.sh stops exactly these processes.
# Recipe and caveats: shared/lab/INFRA.md §1b, §1c(ii).
set -euo pipefail
DIR=$1; NS=$2
need() { command -v "$1" >/dev/null || [ -x "$1" ] || { echo "missing $1: install with: apt-get install -y --no-install-recommends $2" >&2; exit 3; }; }
need ganesha.nfsd "nfs-ganesha nfs-ganesha-vfs"
need rpcbind rpcbind
need /usr/libexec/gvfsd "gvfs-fuse gvfs-backends dbus"
need /usr/libexec/gvfsd-nfs "gvfs-backends"
need /usr/libexec/gvfsd-fuse "gvfs-fuse"
need gio "gvfs-fuse gvfs-backends libglib2.0-bin"
need dbus-daemon dbus
[ -e /dev/fuse ] || { echo "no /dev/fuse: FUSE is needed for the gvfs NFS clients" >&2; exit 3; }
mkdir -p "$DIR/export" "$DIR/recov"
ip netns add "$NS"
ip -n "$NS" link set lo up
# A non-loopback address: ganesha resolves Bind_addr with AI_ADDRCONFIG, which ignores loopback.
ip -n "$NS" link add ha0 type veth peer name ha1
ip -n "$NS" addr add 10.250.0.1/24 dev ha0
ip -n "$NS" link set ha1 up
ip -n "$NS" link set ha0 up
SRV=10.250.0.1
cat > "$DIR/ganesha.conf" <<CONF
NFS_CORE_PARAM { Bind_addr = $SRV; NFS_Port = 2049; MNT_Port = 20048; NLM_Port = 32803;
                 Protocols = 3, 4; Enable_NLM = true; Enable_RQUOTA = false; }
NFSV4 { RecoveryBackend = fs; RecoveryRoot = $DIR/recov; Graceless = true; Lease_Lifetime = 10;
        Allow_Numeric_Owners = true; Only_Numeric_Owners = true; }
NFS_KRB5 { Active_krb5 = false; }
EXPORT_DEFAULTS { Squash = No_Root_Squash; Access_Type = RW; SecType = sys; }
EXPORT { Export_Id = 1; Path = $DIR/export; Pseudo = /export; Protocols = 3, 4; Transports = TCP;
         Access_Type = RW; Squash = No_Root_Squash;
         CLIENT { Clients = $SRV; Access_Type = RW; }  FSAL { Name = VFS; } }
LOG { Default_Log_Level = EVENT; }
CONF
# rpcbind's unix socket lives in /run: a private /run per server (INFRA.md §1b). ganesha starts
# once the socket exists: under load it could register before rpcbind listened ("Cannot register
# NFS V3 on UDP").
ip netns exec "$NS" unshare --mount --propagation private sh -c "
  mount -t tmpfs ha-run /run && mkdir -p /run/ganesha &&
  { rpcbind -w -f & echo \$! > '$DIR/rpcbind.pid'; } &&
  for i in \$(seq 100); do [ -S /run/rpcbind.sock ] && break; sleep 0.05; done &&
  exec ganesha.nfsd -F -f '$DIR/ganesha.conf' -L '$DIR/ganesha.log' -p /run/ganesha/ganesha.pid
" > "$DIR/ganesha.out" 2>&1 &
echo $! > "$DIR/ganesha.pid"
for i in $(seq 100); do grep -q "NFS SERVER INITIALIZED" "$DIR/ganesha.log" 2>/dev/null && break; sleep 0.1; done
grep -q "NFS SERVER INITIALIZED" "$DIR/ganesha.log" || { echo "ganesha did not start:"; tail -n 20 "$DIR/ganesha.log" "$DIR/ganesha.out"; exit 1; } >&2
for c in a b; do
  R=$DIR/state-$c; MP=$DIR/mnt-$c
  mkdir -p "$R/run" "$MP"; chmod 700 "$R/run"
  (
    export XDG_RUNTIME_DIR=$R/run DBUS_SESSION_BUS_ADDRESS=unix:path=$R/bus GIO_USE_VOLUME_MONITOR=unix
    nsenter --net=/run/netns/"$NS" dbus-daemon --session --fork --address="$DBUS_SESSION_BUS_ADDRESS" --print-pid > "$R/dbus.pid"
    nsenter --net=/run/netns/"$NS" /usr/libexec/gvfsd -r > "$R/gvfsd.log" 2>&1 &
    echo $! > "$R/gvfsd.pid"
    for i in $(seq 100); do [ -d "$R/run/gvfs" ] && break; sleep 0.1; done
    nsenter --net=/run/netns/"$NS" timeout 30 gio mount "nfs://$SRV$DIR/export"
  )
  V=$(ls -d "$R"/run/gvfs/nfs:* | head -1)
  [ -d "$V" ] || { echo "gvfs view missing under $R/run/gvfs" >&2; exit 1; }
  mount --bind "$V" "$MP"
done
echo "gvfs-up: $DIR/mnt-a and $DIR/mnt-b share $DIR/export"
