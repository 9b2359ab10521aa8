#!/usr/bin/env bash
# The web tools the tests check our files in: Spark 2.x (+ three.js) and PlayCanvas's splat-transform
# (tests/test_web_formats.py) and Khronos's glTF-Validator (tests/test_gltf.py), at the versions pinned
# in .web/package.json / package-lock.json, installed into .web/node_modules (gitignored) with `npm ci`.
# Node.js and npm come from apt-get where they are missing.
# Outside CI a machine without them gets a warning (those tests then skip); in CI (CI set) it is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    echo "installing system packages: nodejs npm"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "warning: npm is missing; install Node.js (>= 20) and npm, then run: bash scripts/web-deps.sh" >&2
    [ -n "${CI:-}" ] && exit 1
    exit 0
  fi
fi
# splat-transform 3.10 declares node >= 22 but what the tests use (reading PLY/.spz, writing CSV) runs on 20;
# its webgpu dependency's install script is not needed for that and is not run.
npm ci --prefix .web --no-audit --no-fund --loglevel=error --engine-strict=false
