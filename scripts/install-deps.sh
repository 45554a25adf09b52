#!/usr/bin/env bash
# Installs what nodelet needs on a Debian/Ubuntu host, only what is missing:
# containerd and runc (and crun, the shipped `crun` runtime handler), the CNI plugins, nftables, conntrack, iproute2, iptables (the
# bridge plugin's masquerade), busybox-static (the demo and test image) and protoc
# (containerd's API is compiled from its .proto files), and for the tests a local
# registry (docker-registry, htpasswd from apache2-utils, openssl) and dbus-daemon (the
# systemd cgroup driver's tests run a fake systemd on a private bus), and for the package
# tests lintian, rpm (rpm -qp) and debootstrap (a clean Debian root to install into).
# Idempotent; needs root.
set -euo pipefail

packages=(containerd runc crun containernetworking-plugins nftables conntrack iproute2 iptables
  busybox-static protobuf-compiler util-linux procps curl
  docker-registry apache2-utils openssl gzip dbus-daemon
  lintian rpm debootstrap binutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
