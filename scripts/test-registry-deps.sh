#!/usr/bin/env bash
# Installs what the registry pull tests (cri/tests/pull.rs) need, when missing:
# Debian's docker-registry (the distribution registry; its service is not enabled or
# started: the tests run `docker-registry serve CONFIG` themselves on 127.0.0.1),
# apache2-utils (htpasswd -B for the auth registry), openssl (test CA) and gzip.
set -euo pipefail
missing=()
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v gzip >/dev/null 2>&1 || missing+=(gzip)
if [ ${#missing[@]} -gt 0 ]; then
  # policy-rc.d 101: the package's postinst must not start a registry on :5000.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  printf '#!/bin/sh\nexit 101\n' >"$tmp/policy-rc.d"
  chmod +x "$tmp/policy-rc.d"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    cp "$tmp/policy-rc.d" /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d; rm -rf "$tmp"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi
