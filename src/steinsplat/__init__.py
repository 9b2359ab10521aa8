"""steinsplat: text to 3D Gaussians by score distillation, with Stein Score Distillation.

The Python API (docs/api.md):

    from steinsplat import GenerateConfig, generate

    record = generate(GenerateConfig("a red cube", steps=30, out="cube/cube.ply"))

`import steinsplat` stays cheap: the names below load `steinsplat.pipeline` (and torch) on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it, imported when the name is first asked for
_LAZY = {
    "GenerateConfig": "pipeline",  # every option of a run (the CLI's flags are its fields)
    "generate": "pipeline",  # generate(cfg) -> RunRecord: one prompt end to end
    "RunRecord": "pipeline",  # what generate returns; to_dict() is run.json
    "GenerationError": "pipeline",  # a problem the caller can fix, worded with GenerateConfig's fields
    "Interrupted": "pipeline",  # a signal stopped the run; its checkpoint saved
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # asked once
        return value
    raise AttributeError(f"module 'steinsplat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
