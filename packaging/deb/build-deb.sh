#!/bin/sh
# Builds the Debian package of ha-sidecar from a release binary (`make deb` calls it):
#   OUTDIR/ha-sidecar_<version>_<arch>.deb    the stripped binary, the hardened systemd unit,
#                                             the default config, the secret made at install
#   OUTDIR/ha-sidecar_<version>_<arch>.debug  its debug info, split off (gnu-debuglink)
# Usage: build-deb.sh BINARY OUTDIR. Needs dpkg-deb and objcopy (binutils); no root.
set -eu
bin=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$top/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/ha-sidecar" \
    "$root/usr/share/doc/ha-sidecar/examples"
mkdir -p "$out"
debug="$out/ha-sidecar_${version}_${arch}.debug"
objcopy --only-keep-debug "$bin" "$debug"
objcopy --strip-debug --strip-unneeded --add-gnu-debuglink="$debug" "$bin" "$root/usr/bin/ha-sidecar"
chmod 0755 "$root/usr/bin/ha-sidecar"
install -m 0644 "$here/ha-sidecar.service" "$root/lib/systemd/system/ha-sidecar.service"
install -m 0640 "$here/ha-sidecar.config" "$root/etc/ha-sidecar/ha-sidecar.config"
install -m 0644 "$top/README.md" "$root/usr/share/doc/ha-sidecar/README.md"
install -m 0644 "$top/examples/haproxy.cfg" "$top/examples/nginx.conf" \
    "$root/usr/share/doc/ha-sidecar/examples/"
for s in postinst prerm postrm; do
    install -m 0755 "$here/$s" "$root/DEBIAN/$s"
done
echo /etc/ha-sidecar/ha-sidecar.config > "$root/DEBIAN/conffiles"
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: ha-sidecar
Version: $version
Architecture: $arch
Maintainer: ha-sidecar developers <root@localhost>
Installed-Size: $size
Depends: adduser, libc6
Section: net
Priority: optional
Description: high-availability sidecar for Gerrit masters
 Keeps the caches, secondary indexes, stream events and web sessions of several
 Gerrit masters in step: forwards evictions, index writes and events to peer
 sidecars over signed HTTP, keeps web sessions on a shared directory, and serves
 the replayed stream events.
CONTROL
deb="$out/ha-sidecar_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >/dev/null
echo "$deb"
