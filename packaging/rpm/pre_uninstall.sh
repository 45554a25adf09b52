# nodelet's %preun: on erase (not upgrade), the units disabled; a running agent is left
# running until it is stopped, as the kubelet's package does.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable nodelet.service nodelet-proxy.service >/dev/null 2>&1 || :
fi
