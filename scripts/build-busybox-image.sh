#!/usr/bin/env bash
# Builds a busybox test image as an OCI image-layout tar, from Debian's static busybox
# (package busybox-static, installed with apt-get if missing). No registry needed.
#
#   scripts/build-busybox-image.sh OUT.tar [NAME]
#
# NAME (default nodelet.local/busybox:1.35) must be a full reference: it goes in the
# index entry's org.opencontainers.image.ref.name annotation, which both nodelet's
# import_oci_archive and `ctr images import` name the image by.
#
# The image: /bin/busybox plus a /bin/<applet> symlink for every applet, /etc/passwd and
# /etc/group (root, nobody), /tmp (1777), /root, /var/www; Cmd ["sh"], the usual PATH.
# One uncompressed layer, built deterministically: the same busybox gives the same
# digests.
set -euo pipefail

out=${1:?usage: $0 OUT.tar [NAME]}
name=${2:-nodelet.local/busybox:1.35}
case $name in
  */*:*|*/*@*) ;;
  *) echo "NAME must be a full reference like example.local/busybox:1.35, got: $name" >&2; exit 2 ;;
esac
case $name in
  *[!a-zA-Z0-9._:/@-]*) echo "NAME has characters no image reference has: $name" >&2; exit 2 ;;
esac

busybox=/bin/busybox
if ! "$busybox" --list >/dev/null 2>&1 || ! dpkg -s busybox-static >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2
fi

case $(dpkg --print-architecture) in
  amd64) arch=amd64 ;;
  arm64) arch=arm64 ;;
  i386) arch=386 ;;
  armhf|armel) arch=arm ;;
  ppc64el) arch=ppc64le ;;
  *) arch=$(dpkg --print-architecture) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022
root=$work/rootfs
layout=$work/layout
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/var/www" "$layout/blobs/sha256"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
chmod 0755 "$root/bin" "$root/etc" "$root/var" "$root/var/www"

deterministic_tar() { # DIR OUT
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "$1" -cf "$2" .
}

# put FILE: moves FILE into blobs/sha256 under its digest; sets $digest and $size.
put() {
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(wc -c <"$1" | tr -d ' ')
  mv "$1" "$layout/blobs/sha256/$digest"
}

deterministic_tar "$root" "$work/layer.tar"
put "$work/layer.tar"
layer_digest=$digest layer_size=$size

printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/build-busybox-image.sh"}]}' \
  "$arch" "$layer_digest" >"$work/config.json"
put "$work/config.json"
config_digest=$digest config_size=$size

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
put "$work/manifest.json"
manifest_digest=$digest manifest_size=$size

printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$name" >"$layout/index.json"
chmod 0644 "$layout/oci-layout" "$layout/index.json" "$layout"/blobs/sha256/*

deterministic_tar "$layout" "$work/image.tar"
mv "$work/image.tar" "$out"
echo "$out: $name sha256:$manifest_digest" >&2
