#!/usr/bin/env bash
# One-command setup on Debian bookworm (as root): Debian packages, the Python
# venv with cosim installed, patched QEMU (cached outside the repo, keyed by
# QEMU version + qemu_patches/ hash), the cosim plugin and the guests.
# Safe to rerun: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")"

DEB_PACKAGES=(
  # QEMU build (DESIGN.md: seen working on this machine)
  dpkg-dev build-essential ninja-build pkg-config flex bison python3-venv
  libglib2.0-dev libpixman-1-dev libfdt-dev libslirp-dev
  # cosim plugin
  libmsgpack-dev
  # tests look for leftover QEMU processes with pgrep
  procps
  # bare-metal riscv64 guests
  gcc-riscv64-unknown-elf
  # x86 firmware for q35 guests (stripped from the QEMU source tarball): bios-256k.bin;
  # the option ROMs come from a downloaded qemu-system-data .deb (cosim/guest_image.py)
  seabios
  # Linux guest image (cosim/guest_image.py): writes the initramfs (newc) archive
  cpio
)

say() { echo "[setup] $*"; }

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null; then
  SUDO="sudo"
else
  echo "setup.sh: needs root (or sudo) for apt-get" >&2; exit 1
fi

# QEMU 10.0.x source comes from Debian trixie's source package.
SRC_LIST=/etc/apt/sources.list.d/cosim-trixie-src.sources
if [ ! -f "$SRC_LIST" ]; then
  say "adding deb-src for Debian trixie (QEMU 10.0 source) in $SRC_LIST"
  $SUDO tee "$SRC_LIST" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_UPDATE=1
fi

# The Linux guest's kernel (6.12, with CXL regions and memory tiers) comes from
# bookworm-backports; cosim/guest_image.py pins its exact version.
BPO_LIST=/etc/apt/sources.list.d/cosim-bookworm-backports.sources
if [ ! -f "$BPO_LIST" ]; then
  say "adding bookworm-backports (Linux guest kernel) in $BPO_LIST"
  $SUDO tee "$BPO_LIST" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # a hand-made entry for the same suite would make apt warn "configured multiple times"
  $SUDO rm -f /etc/apt/sources.list.d/bookworm-backports.sources
  APT_UPDATE=1
fi

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${APT_UPDATE:-0}" = 1 ] || [ ${#missing[@]} -gt 0 ] || \
   ! apt-cache showsrc qemu 2>/dev/null | grep -q "^Version: 1:10\.0"; then
  say "apt-get update"
  $SUDO apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import cosim, pytest" 2>/dev/null || \
   [ pyproject.toml -nt .venv/.cosim-installed ]; then
  say "installing cosim and its Python dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.cosim-installed
fi

.venv/bin/cosim build
say "done: try  .venv/bin/cosim tiers   (the main job; or .venv/bin/cosim run for a bare-metal guest)"
