#!/usr/bin/env bash
# The package as Python users install it: build the wheel (and the sdist), install the wheel alone
# into a fresh venv outside the checkout, and from there run the CPU default (a short ShapeWorld
# generation writing PLY, .splat and .spz), resolve the GPU preset `--config sd-object`, and run
# `steinsplat doctor`. Nothing of the source tree is importable there, so a weight or preset left out
# of the package data fails here. CI runs it after the tests (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "wheel check: building the wheel and the sdist"
"$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$work/dist" .
"$PY" -c "import setuptools.build_meta as b, sys; b.build_sdist(sys.argv[1])" "$work/dist" >/dev/null
wheel=$(ls "$work"/dist/steinsplat-*.whl)
ls "$work"/dist/steinsplat-*.tar.gz >/dev/null
echo "wheel check: installing $(basename "$wheel") into a fresh venv"
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "$wheel"
cd "$work"  # outside the checkout
bin="$work/venv/bin"
"$bin/python" - <<'PYEOF'
import steinsplat, pathlib
where = pathlib.Path(steinsplat.__file__).resolve()
assert "site-packages" in str(where), f"steinsplat imported from {where}, not from the installed wheel"
from steinsplat import config
from steinsplat.pipeline import GenerateConfig
cfg = config.parse(GenerateConfig, ["a corgi in a spacesuit", "--config", "sd-object"], prog="wheel-check")
assert cfg.prior == "sd", cfg.prior
print(f"wheel check: --config sd-object resolves (prior {cfg.prior}, {cfg.steps} steps)")
PYEOF
OMP_NUM_THREADS=1 "$bin/steinsplat" "a red cube" --steps 12 --out run/a-red-cube.ply --quiet
for fmt in splat spz; do "$bin/steinsplat" export run/a-red-cube.ply --to "run/a-red-cube.$fmt" >/dev/null; done
"$bin/steinsplat" info run/a-red-cube.spz >/dev/null
test -s run/run.json
"$bin/steinsplat" doctor >/dev/null
echo "wheel check: passed (a fresh venv with only the wheel ran the CPU default, wrote PLY/.splat/.spz, resolved sd-object, ran doctor)"
