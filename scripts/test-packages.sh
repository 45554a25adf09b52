#!/usr/bin/env bash
# Tests the packages scripts/package.sh built (run it first):
# - the .deb: its files, modes, conffiles and dependencies; lintian with no errors;
#   installed into a clean Debian root (debootstrap, cached in /var/cache/nodelet-test
#   with the dependencies preinstalled): refused while containerd is missing, then
#   `nodelet --version` runs from /usr/bin, the unit
#   is enabled but nothing started, the default config validates, no CNI config goes in
#   (the agent's built-in pod network serves), one an earlier version installed goes on
#   purge while an admin's stays, nodelet-start picks kubeadm's files when `kubeadm
#   join` left them; a reinstall keeps an edited config; `dpkg -r` keeps the
#   configs, `dpkg -P` removes them and /var/lib/nodelet (but not while a pod's volume is
#   mounted under it);
# - both unit files with `systemd-analyze verify`;
# - the .rpm: files, scripts and dependencies with `rpm -qp`.
# Every check that fails is reported and the script exits 1. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${NODELET_TEST_CACHE:-/var/cache/nodelet-test}
deb=$(ls target/debian/nodelet_*.deb | head -n1)
rpm=$(ls target/generate-rpm/nodelet-*.rpm | head -n1)
failed=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*" >&2; failed=1; }
check() { # description, command...
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi
}

echo "== $deb"
contents=$(dpkg-deb -c "$deb")
if grep -q "10-nodelet.conflist" <<<"$contents"; then fail "deb still ships a CNI config"; else ok "deb ships no CNI config"; fi
for want in "-rwxr-xr-x 0/0 .* ./usr/bin/nodelet$" "-rwxr-xr-x 0/0 .* ./usr/bin/nodelet-log-driver$" \
  "-rwxr-xr-x 0/0 .* ./usr/lib/nodelet/nodelet-start$" \
  "-rw-r--r-- 0/0 .* ./etc/nodelet/config.yaml$" \
  "-rw-r--r-- 0/0 .* ./etc/default/nodelet$" \
  "-rw-r--r-- 0/0 .* ./usr/lib/systemd/system/nodelet.service$" \
  "-rw-r--r-- 0/0 .* ./usr/lib/systemd/system/nodelet-proxy.service$" \
  "./usr/share/bash-completion/completions/nodelet" \
  "./usr/share/man/man1/nodelet.1.gz" \
  "./usr/share/man/man1/nodelet-proxy.1.gz"; do
  if grep -Eq -- "$want" <<<"$contents"; then ok "deb has $want"; else fail "deb lacks $want"; fi
done
size=$(dpkg-deb -f "$deb" Installed-Size)
echo "installed size: $((size / 1024)) MiB; package: $(($(stat -c %s "$deb") / 1048576)) MiB"
depends=$(dpkg-deb -f "$deb" Depends)
for dep in "containerd (>= 1.6)" runc nftables conntrack iproute2; do
  if grep -qF "$dep" <<<"$depends"; then ok "depends on $dep"; else fail "Depends lacks $dep: $depends"; fi
done
# The built-in pod network needs no CNI plugins: they are recommended, not required.
recommends=$(dpkg-deb -f "$deb" Recommends)
if grep -qF containernetworking-plugins <<<"$recommends" && ! grep -qF containernetworking-plugins <<<"$depends"; then
  ok "recommends containernetworking-plugins"
else
  fail "containernetworking-plugins should be a Recommends: Depends: $depends; Recommends: $recommends"
fi
conffiles=$(dpkg-deb -I "$deb" conffiles)
for c in /etc/nodelet/config.yaml /etc/default/nodelet; do
  if grep -qx "$c" <<<"$conffiles"; then ok "conffile $c"; else fail "$c is not a conffile"; fi
done
echo "== lintian"
if lintian --fail-on error --suppress-tags dir-or-file-in-opt "$deb"; then ok "lintian: no errors"; else fail "lintian reports errors"; fi

echo "== systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
  units=$(mktemp -d)
  cp packaging/systemd/*.service "$units/"
  # verify resolves ExecStart: point it at files that exist here.
  sed -i "s|/usr/lib/nodelet/nodelet-start|$PWD/packaging/bin/nodelet-start|; s|/usr/bin/nodelet|/bin/true|" "$units"/*.service
  for u in "$units"/*.service; do
    if out=$(systemd-analyze verify --man=no "$u" 2>&1) && ! grep -q "$(basename "$u")" <<<"$out"; then
      ok "systemd-analyze verify $(basename "$u")"
    else fail "systemd-analyze verify $(basename "$u"): $out"; fi
  done
  rm -rf "$units"
else
  echo "systemd-analyze is not installed: unit files not verified"
fi

echo "== install into a clean Debian root"
base="$cache/debroot-bookworm.tar"
if [ ! -s "$base" ]; then
  tmp=$(mktemp -d)
  debootstrap --variant=minbase \
    --include=containerd,runc,containernetworking-plugins,nftables,conntrack,iproute2 \
    bookworm "$tmp/root" http://deb.debian.org/debian >"$tmp/log" 2>&1 ||
    { tail -20 "$tmp/log" >&2; rm -rf "$tmp"; exit 1; }
  mkdir -p "$cache"
  tar -C "$tmp/root" -cf "$base.part" .
  mv "$base.part" "$base"
  rm -rf "$tmp"
fi
root=$(mktemp -d /var/tmp/nodelet-pkgtest.XXXXXX)
cleanup() {
  for m in "$root/var/lib/nodelet/pods/u1/volumes/kubernetes.io~empty-dir/data" "$root/proc"; do
    mountpoint -q "$m" 2>/dev/null && umount "$m"
  done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
tar -C "$root" -xf "$base"
cp "$deb" "$root/tmp/nodelet.deb"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
# Without containerd, dpkg refuses to configure nodelet and says why.
check "containerd removed for the next check" in_root dpkg -r containerd
out=$(in_root dpkg -i /tmp/nodelet.deb 2>&1) && fail "dpkg -i without containerd succeeded"
if grep -q "depends on containerd" <<<"$out"; then ok "dpkg -i without containerd: dependency problem reported"; else fail "dpkg -i without containerd: $out"; fi
check "containerd back (from the root's apt cache)" in_root sh -c 'dpkg -i /var/cache/apt/archives/containerd_*.deb'
check "dpkg -i" in_root dpkg -i /tmp/nodelet.deb
check "nodelet configured" in_root sh -c 'dpkg-query -W -f="\${Status}" nodelet | grep -q "install ok installed"'
version=$(in_root /usr/bin/nodelet --version 2>&1 || true)
if grep -q "^nodelet " <<<"$version"; then ok "nodelet --version from /usr/bin: $version"; else fail "nodelet --version: $version"; fi
check "the unit is enabled" test -L "$root/etc/systemd/system/multi-user.target.wants/nodelet.service"
check "the proxy unit is not enabled" test ! -e "$root/etc/systemd/system/multi-user.target.wants/nodelet-proxy.service"
check "the default config validates" in_root /usr/bin/nodelet validate --config /etc/nodelet/config.yaml
check "no CNI config went in (the built-in network serves)" test ! -e "$root/etc/cni/net.d/10-nodelet.conflist"
check "/etc/kubernetes/manifests exists" test -d "$root/etc/kubernetes/manifests"
start=$(in_root sh -c 'NODELET_START_DRY_RUN=1 /usr/lib/nodelet/nodelet-start')
if [ "$start" = "/usr/bin/nodelet --config=/etc/nodelet/config.yaml" ]; then ok "nodelet-start standalone: $start"; else fail "nodelet-start standalone: $start"; fi
mkdir -p "$root/var/lib/kubelet" "$root/etc/kubernetes"
echo "kind: KubeletConfiguration" >"$root/var/lib/kubelet/config.yaml"
echo "apiVersion: v1" >"$root/etc/kubernetes/bootstrap-kubelet.conf"
echo 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock"' >"$root/var/lib/kubelet/kubeadm-flags.env"
start=$(in_root sh -c 'NODELET_ARGS=--v=2 NODELET_START_DRY_RUN=1 /usr/lib/nodelet/nodelet-start')
want="/usr/bin/nodelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml --proxy-mode=none --container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --v=2"
if [ "$start" = "$want" ]; then ok "nodelet-start on a kubeadm-joined host"; else fail "nodelet-start on a kubeadm host: $start"; fi
rm -rf "$root/var/lib/kubelet" "$root/etc/kubernetes/bootstrap-kubelet.conf"
echo "# edited" >>"$root/etc/nodelet/config.yaml"
# An upgrade (here a reinstall) keeps the admin's edit of a conffile.
check "dpkg -i over an edited config" in_root dpkg -i --force-confold /tmp/nodelet.deb
check "the edit survived the upgrade" grep -q "# edited" "$root/etc/nodelet/config.yaml"
mkdir -p "$root/var/lib/nodelet/pods"
check "dpkg -r" in_root dpkg -r nodelet
check "remove took the binaries" test ! -e "$root/usr/bin/nodelet" -a ! -e "$root/usr/bin/nodelet-log-driver"
check "remove kept the edited config" grep -q "# edited" "$root/etc/nodelet/config.yaml"
check "remove kept /var/lib/nodelet" test -d "$root/var/lib/nodelet/pods"
check "dpkg -P" in_root dpkg -P nodelet
check "purge removed /etc/nodelet" test ! -e "$root/etc/nodelet/config.yaml"
check "purge removed /var/lib/nodelet" test ! -e "$root/var/lib/nodelet"
# What an earlier version installed (the file and its marker) goes on purge.
check "dpkg -i over an earlier version's CNI config" in_root dpkg -i /tmp/nodelet.deb
mkdir -p "$root/etc/cni/net.d"
echo '{"cniVersion":"1.0.0","name":"nodelet","plugins":[{"type":"bridge"}]}' >"$root/etc/cni/net.d/10-nodelet.conflist"
touch "$root/var/lib/nodelet/.package-installed-cni-config"
check "an upgrade keeps an earlier version's CNI config" in_root dpkg -i /tmp/nodelet.deb
check "the earlier config is still there" test -f "$root/etc/cni/net.d/10-nodelet.conflist"
check "dpkg -P of the upgraded package" in_root dpkg -P nodelet
check "purge removed the CNI config an earlier version installed" test ! -e "$root/etc/cni/net.d/10-nodelet.conflist"
# A host with its own network keeps it.
mkdir -p "$root/etc/cni/net.d"
echo '{"cniVersion":"1.0.0","name":"admin","plugins":[{"type":"bridge"}]}' >"$root/etc/cni/net.d/05-admin.conflist"
check "dpkg -i with a pod network in place" in_root dpkg -i /tmp/nodelet.deb
check "nothing went in beside the admin's" test ! -e "$root/etc/cni/net.d/10-nodelet.conflist"
check "dpkg -P again" in_root dpkg -P nodelet
check "purge left the admin's network" test -f "$root/etc/cni/net.d/05-admin.conflist"
# Purged while a pod still has a volume mounted (its data lives on): the state stays.
check "dpkg -i for the purge with pods" in_root dpkg -i /tmp/nodelet.deb
vol="$root/var/lib/nodelet/pods/u1/volumes/kubernetes.io~empty-dir/data"
mkdir -p "$vol"
mount -t tmpfs -o size=1m nodelet-pkgtest "$vol" && mount -t proc proc "$root/proc"
echo precious >"$vol/file"
out=$(in_root dpkg -P nodelet 2>&1) || fail "dpkg -P with a mounted volume: $out"
if grep -q "kept /var/lib/nodelet" <<<"$out"; then ok "purge with a mounted volume says it kept the state"; else fail "purge with a mounted volume: $out"; fi
check "the running pod's volume data survived the purge" grep -qx precious "$vol/file"
check "the package is gone" in_root sh -c '! dpkg-query -W -f="\${Status}" nodelet 2>/dev/null | grep -q installed'
umount "$vol" "$root/proc"

echo "== $rpm"
files=$(rpm -qpl "$rpm" 2>/dev/null)
for f in /usr/bin/nodelet /usr/bin/nodelet-log-driver /usr/lib/nodelet/nodelet-start /etc/nodelet/config.yaml \
  /usr/lib/systemd/system/nodelet.service /usr/lib/systemd/system/nodelet-proxy.service \
  /usr/share/man/man1/nodelet.1.gz /usr/share/bash-completion/completions/nodelet; do
  if grep -qx "$f" <<<"$files"; then ok "rpm has $f"; else fail "rpm lacks $f"; fi
done
configs=$(rpm -qpc "$rpm" 2>/dev/null)
if grep -qx /etc/nodelet/config.yaml <<<"$configs"; then ok "rpm config file"; else fail "rpm: config.yaml is not %config"; fi
requires=$(rpm -qpR "$rpm" 2>/dev/null)
for r in "containerd >= 1.6" runc nftables conntrack-tools iproute; do
  if grep -q "^$r" <<<"$requires"; then ok "rpm requires $r"; else fail "rpm requires lacks $r: $requires"; fi
done
rpm_recommends=$(rpm -qp --recommends "$rpm" 2>/dev/null)
if grep -q "^containernetworking-plugins" <<<"$rpm_recommends" && ! grep -q "^containernetworking-plugins" <<<"$requires"; then
  ok "rpm recommends containernetworking-plugins"
else
  fail "rpm: containernetworking-plugins should be Recommends: $rpm_recommends"
fi
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
for s in "postinstall scriptlet" "preuninstall scriptlet" "postuninstall scriptlet"; do
  if grep -q "$s" <<<"$scripts"; then ok "rpm has its $s"; else fail "rpm lacks its $s"; fi
done

if [ "$failed" = 0 ]; then echo "packages: all checks passed"; else echo "packages: checks failed" >&2; fi
exit "$failed"
