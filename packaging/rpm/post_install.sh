# nodelet's %post: as the .deb's postinst (directories; no CNI configuration: with none
# the agent uses its built-in pod network), and the unit enabled per the host's preset,
# not started.
mkdir -p /etc/kubernetes/manifests /var/log/pods /var/log/containers
mkdir -p -m 0700 /var/lib/nodelet
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl preset nodelet.service nodelet-proxy.service >/dev/null 2>&1 || :
fi
