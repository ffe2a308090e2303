#!/usr/bin/env bash
# usage: prepare.sh [KIT_DIR]
# Prepares the kit the kernel-NFS VM test boots (integration/src/nfs_vm.rs): QEMU (x86_64, TCG)
# with its libraries, Debian's generic amd64 kernel and an initramfs (busybox-static, the
# modules of modules.txt with their dependencies, ./init). Nothing is installed: the .debs are
# fetched with `apt-get download` and unpacked under KIT_DIR (installing qemu-system-x86 would
# replace the machine's newer qemu-utils). Idempotent: returns at once when the kit is ready
# and its inputs (this script, init, modules.txt) are unchanged.
# KIT_DIR: $HA_NFS_VM_KIT, else ${CARGO_TARGET_DIR:-<repo>/target}/nfs-vm.
# Recipe and measurements: shared/lab/INFRA.md §1c(iv).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${1:-${HA_NFS_VM_KIT:-${CARGO_TARGET_DIR:-$HERE/../../target}/nfs-vm}}
KIT=$(realpath -m "$KIT")
inputs=$(cat "$0" "$HERE/init" "$HERE/modules.txt" | sha256sum | cut -d' ' -f1)
if [ -f "$KIT/ready" ] && grep -qx "inputs=$inputs" "$KIT/ready"; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "the NFS VM kit is missing or stale in $KIT; prepare it as root with:"
  echo "  sudo $HERE/prepare.sh $KIT"
  exit 1
fi
SECONDS=0
# QEMU and the shared libraries it needs beyond a base Debian 12 system (the lab's list).
QEMU_DEBS="qemu-system-x86 qemu-system-common qemu-system-data seabios libslirp0 libcapstone4 libfdt1
  libpmem1 libdaxctl1 libndctl6 libibverbs1 librdmacm1 libspice-server1 libusbredirparser1 libvdeplug2
  libcacard0 libepoxy0 libbrlapi0.8 libsndio7.0 libopus0 liborc-0.4-0 libgstreamer-plugins-base1.0-0
  libnl-3-200 libnl-route-3-200 libexecs0 busybox-static"
# The generic kernel the metapackage points at now (the -cloud kernel has no 9p).
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1; }
KPKG=$(kernel_pkg)
if [ -z "$KPKG" ]; then
  apt-get update -qq
  KPKG=$(kernel_pkg)
fi
[ -n "$KPKG" ] || { echo "prepare.sh: apt-cache knows no linux-image-amd64 (check /etc/apt/sources.list*)" >&2; exit 1; }
KVER=${KPKG#linux-image-}

NEW=$KIT.new.$$
rm -rf "$NEW"
trap 'rm -rf "$NEW"' EXIT
mkdir -p "$NEW/debs" "$NEW/root" "$NEW/kernel" "$NEW/initrd/mods"
# shellcheck disable=SC2086
download() { (cd "$NEW/debs" && apt-get -q -o APT::Sandbox::User=root download $QEMU_DEBS "$KPKG" >/dev/null); }
if ! download; then
  # Stale package lists name versions the mirror no longer has: refresh them once.
  apt-get update -qq
  KPKG=$(kernel_pkg)
  KVER=${KPKG#linux-image-}
  download || { echo "prepare.sh: apt-get download failed" >&2; exit 1; }
fi
for d in "$NEW"/debs/*.deb; do
  case $(basename "$d") in
    linux-image-*) dpkg-deb -x "$d" "$NEW/kernel" ;;
    *) dpkg-deb -x "$d" "$NEW/root" ;;
  esac
done
rm -rf "$NEW/debs"

export LD_LIBRARY_PATH=$NEW/root/usr/lib/x86_64-linux-gnu:$NEW/root/lib/x86_64-linux-gnu
missing=$(ldd "$NEW/root/usr/bin/qemu-system-x86_64" | grep 'not found' || true)
[ -z "$missing" ] || { echo "prepare.sh: qemu-system-x86_64 lacks libraries:"; echo "$missing"; exit 1; } >&2
qemu_version=$("$NEW/root/usr/bin/qemu-system-x86_64" --version | head -n 1)

# Modules: each wanted one after its dependencies (read from the .ko's modinfo `depends=`).
MODDIR=$NEW/kernel/lib/modules/$KVER
declare -A path_of seen
while IFS= read -r f; do
  n=$(basename "$f" .ko); path_of[${n//-/_}]=$f
done < <(find "$MODDIR/kernel" -name '*.ko')
order=()
add() {
  local n=${1//-/_} f deps d
  [ -n "${seen[$n]:-}" ] && return 0
  f=${path_of[$n]:-}
  [ -n "$f" ] || { echo "prepare.sh: module $n not found in $KPKG" >&2; exit 1; }
  deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$f" | head -n 1 | sed 's/^depends=//; s/,/ /g')
  for d in $deps; do add "$d"; done
  seen[$n]=1
  order+=("$n.ko")
  cp "$f" "$NEW/initrd/mods/$n.ko"
}
for m in $(grep -v '^#' "$HERE/modules.txt"); do add "$m"; done
printf '%s\n' "${order[@]}" > "$NEW/initrd/modules.order"

cp "$NEW/kernel/boot/vmlinuz-$KVER" "$NEW/vmlinuz"
rm -rf "$NEW/kernel"
mkdir -p "$NEW/initrd/bin" "$NEW/initrd/proc" "$NEW/initrd/sys" "$NEW/initrd/dev"
cp "$NEW/root/bin/busybox" "$NEW/initrd/bin/busybox"
install -m 0755 "$HERE/init" "$NEW/initrd/init"
(cd "$NEW/initrd" && find . | "$NEW/root/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1 > "$NEW/initrd.gz")
rm -rf "$NEW/initrd"
{
  echo "inputs=$inputs"
  echo "kernel=$KVER"
  echo "qemu=$qemu_version"
  echo "modules=${order[*]}"
} > "$NEW/ready"
rm -rf "$KIT"
mv "$NEW" "$KIT"
trap - EXIT
echo "prepare.sh: NFS VM kit ready in $KIT ($KVER, $qemu_version, ${#order[@]} modules) in ${SECONDS} s"
