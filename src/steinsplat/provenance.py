"""What made a result: the versions of Python and of the packages a run depends on, recorded in a run's
`run.json` (pipeline.record_run) and in the benchmarks' reports (bench/)."""

from __future__ import annotations

import platform

PACKAGES = ("steinsplat", "torch", "gsplat", "diffusers", "transformers")  # the versions recorded besides Python's


def versions() -> dict[str, str]:
    """{"python": version, package: version or "not installed"} of this process."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
