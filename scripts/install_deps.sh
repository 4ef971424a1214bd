#!/usr/bin/env bash
# Installs the system packages chargpt builds with, on Debian 12 (bookworm).
# Runs `apt-get update` once, and only when something is missing.
set -euo pipefail
pkgs=(build-essential cmake libtbb-dev libopenblas-dev libcxxopts-dev doctest-dev nlohmann-json3-dev libdnnl-dev
      openmpi-bin libopenmpi-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all packages present"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q "${missing[@]}"
