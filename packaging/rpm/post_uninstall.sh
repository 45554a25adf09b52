# nodelet's %postun: on erase, the CNI config an earlier version of this package
# installed. RPM has
# no purge, so the agent's state in /var/lib/nodelet stays (as the kubelet's package
# leaves /var/lib/kubelet); %config(noreplace) files are saved as .rpmsave.
if [ "$1" -eq 0 ] && [ -e /var/lib/nodelet/.package-installed-cni-config ]; then
    rm -f /etc/cni/net.d/10-nodelet.conflist /var/lib/nodelet/.package-installed-cni-config
fi
