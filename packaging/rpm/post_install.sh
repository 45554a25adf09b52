# nodelet's %post: as the .deb's postinst (directories, the default pod network only
# where the host has none), and the unit enabled per the host's preset, not started.
mkdir -p /etc/kubernetes/manifests /var/log/pods /var/log/containers
mkdir -p -m 0700 /var/lib/nodelet
has_network=
for f in /etc/cni/net.d/*.conflist /etc/cni/net.d/*.conf /etc/cni/net.d/*.json; do
    if [ -e "$f" ]; then has_network=1; fi
done
if [ -z "$has_network" ]; then
    mkdir -p /etc/cni/net.d
    cp /usr/share/nodelet/cni/10-nodelet.conflist /etc/cni/net.d/10-nodelet.conflist
    touch /var/lib/nodelet/.package-installed-cni-config
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl preset nodelet.service nodelet-proxy.service >/dev/null 2>&1 || :
fi
