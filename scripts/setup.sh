#!/usr/bin/env bash
# Install what imagekit needs on Debian 12 (as root) and build .venv from Debian's python3.
# Debian's python3-guestfs lives in /usr/bin/python3's site packages, hence --system-site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    libguestfs-tools python3-guestfs python3-venv qemu-utils qemu-system-x86 gnupg
    linux-image-cloud-amd64   # a kernel for the libguestfs appliance (/boot starts empty)
    busybox-static            # guest userland for the demo and test images
    genisoimage               # test images in other formats (ISO)
    curl                      # benchmark baseline
    util-linux                # prlimit caps qemu-img on untrusted files
    openssh-client            # imagekit boot --ssh (ssh, ssh-keygen)
    syslinux mtools dosfstools  # the bootable test disk (tests/bootdisk.py), no loop device
    dropbear-bin              # the SSH server inside that test disk (boot --ssh test)
    strace                    # tests/reliability/test_durability.py traces the fsync/rename order of commits
    skopeo                    # registry interop tests and the oci benchmark's baseline
    apache2-utils             # htpasswd for the registry auth tests
    # imagekit provision. Their postinst starts libvirtd only under systemd (/run/systemd/system),
    # so they install in a container without an init system; the tests start their own libvirtd.
    libvirt-daemon-system libvirt-daemon-driver-qemu
    python3-libvirt           # libvirt-python, seen by .venv through the system site packages
    virtinst                  # virt-install: tests check that provision --print's line is accepted
)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The registry the tests run: Debian's docker-registry binary, extracted, never installed (the
# packaged service would listen on every interface); tests start it on 127.0.0.1 themselves.
if [ ! -x .cache/registry/docker-registry ]; then
    echo "setup: extracting docker-registry into .cache/registry" >&2
    mkdir -p .cache/registry
    work=$(mktemp -d)
    (cd "$work" && { apt-get download -qq docker-registry || { apt-get update -qq && apt-get download -qq docker-registry; }; })
    dpkg-deb -x "$work"/docker-registry_*.deb "$work/x"
    mv "$work/x/usr/bin/docker-registry" .cache/registry/docker-registry
    rm -rf "$work"
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c 'import guestfs' || { echo "setup: python3-guestfs not importable" >&2; exit 1; }
