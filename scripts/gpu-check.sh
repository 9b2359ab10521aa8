#!/usr/bin/env bash
# The GPU acceptance check (docs/gpu.md): one summary line per check, exit 1 if any failed.
# Needs no network (a tiny Stable Diffusion is built locally). Without CUDA it runs what it can
# and prints SKIP, with the reason, for the rest.
#   scripts/gpu-check.sh [--json results.json] [--keep DIR] [--quick]
# PYTHON selects the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$here/gpu_check.py" "$@"
