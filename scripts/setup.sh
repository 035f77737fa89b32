#!/usr/bin/env bash
# Idempotent machine and project set-up for natgw on Debian 12, as root.
# Installs only what is missing, so a second run is quick and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*"; }

[ "$(id -u)" = 0 ] || { echo "setup: must run as root (BPF, tc and netns need it)" >&2; exit 1; }

# Debian packages: bcc for compiling the dataplane, kernel headers it compiles
# against, the WireGuard userspace engine and tools, and what the tests use.
PKGS=(python3-bpfcc python3-venv linux-headers-amd64 wireguard-go wireguard-tools iproute2
      ethtool tshark iperf3 socat bpftool procps iptables nftables curl iputils-ping
      gcc libc6-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    # --no-install-recommends: wireguard-tools would otherwise pull a whole kernel image.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc looks for kernel headers in /lib/modules/$(uname -r)/build. When the running
# kernel ships none, use Debian's headers: the programs include only UAPI headers.
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build/include" ]; then
    amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
    [ -n "$amd64" ] && [ -n "$common" ] || { echo "setup: no linux-headers found in /usr/src" >&2; exit 1; }
    log "pointing /lib/modules/$kver/build at $amd64"
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$amd64" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
fi

# bpffs: where natgw pins its maps and programs.
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
fi

# The venv must see Debian's bcc, hence --system-site-packages and /usr/bin/python3
# (a pyenv python3 on PATH cannot import bcc).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
    log "creating .venv"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.natgw-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing natgw (editable) into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
log "ok"
