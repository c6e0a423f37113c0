#!/usr/bin/env bash
# Installs the Debian packages that the demo and the tests use, if any is missing.
# Idempotent: with everything present it only checks, and touches no package list.
set -euo pipefail

packages=(
  # firmware and virtual machines for the end-to-end boots (SeaBIOS comes with qemu)
  qemu-system-x86 qemu-utils ipxe-qemu ovmf
  # boot payloads: iPXE builds, pxelinux, a kernel, a static busybox for a tiny initramfs
  ipxe pxelinux syslinux-common grub-efi-amd64-signed linux-image-amd64 busybox-static cpio
  # network namespaces and real clients and peers
  iproute2 procps isc-dhcp-client isc-dhcp-relay bootpc dnsmasq-base atftp curl tcpdump
  # site DHCP servers that netbootd runs beside as a proxyDHCP in the end-to-end tests, and
  # perfdhcp (in kea-admin), the relay agent of the relayed-clients test
  kea-dhcp4-server isc-dhcp-server kea-admin
  # a real browser, headless, for the web page's test
  chromium
  # a C compiler and Python's headers, for the DHCP modules setup.py compiles with mypyc
  gcc python3-dev
)

# Extra packages for one job (the benchmarks' peers), as "make bench-tftp" passes them.
read -ra extra <<< "${EXTRA_PACKAGES:-}"
packages+=("${extra[@]}")

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "system packages missing: ${missing[*]}" >&2
  echo "run 'make setup' as root (or install them with apt-get)" >&2
  exit 1
fi

echo "system packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
