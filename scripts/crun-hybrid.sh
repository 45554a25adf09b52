#!/bin/sh
# crun for hosts in cgroup "hybrid" mode (v1 controllers, plus a cgroup2 mount at
# /sys/fs/cgroup/unified) where a controller not bound to any v1 hierarchy (here
# hugetlb) is still offered by cgroup2: crun 1.8 refuses those ("cgroups in hybrid
# mode not supported, drop all controllers from cgroupv2"). This runs crun in a mount
# namespace of its own with an empty tmpfs over /sys/fs/cgroup/unified, so crun sees
# plain cgroup v1; state, bundles and the container's cgroups are the host's.
# Test and bench use only: name it as a handler's BinaryName,
#   --runtime-handlers "crun=io.containerd.runc.v2,BinaryName=$PWD/scripts/crun-hybrid.sh"
# Real hosts (pure cgroup v2, or v1 without the leftover controller) use /usr/bin/crun.
exec unshare -m --propagation slave sh -c \
  'mount -t tmpfs -o size=64k nodelet-crun-hybrid /sys/fs/cgroup/unified && exec /usr/bin/crun "$@"' \
  crun "$@"
