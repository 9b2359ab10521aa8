#!/usr/bin/env bash
# System libraries steinsplat's Python wheels need but do not ship:
#   libusb-1.0  (open3d's wheel links it; without it `import open3d` fails)
#   chromium    (the viewer's tests open the pages in headless Chromium, driven by the playwright package)
# Installs them with apt-get when missing (as root, or through sudo); elsewhere prints what to install.
set -euo pipefail
missing=()
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || missing+=(libusb-1.0-0)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  echo "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "please install these system libraries with your package manager: ${missing[*]}" >&2
  exit 1
fi
