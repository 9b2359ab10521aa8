"""Model folders of the embedded models: where the shipped ones live (default_assets_dir), a JSON config and safetensors weights, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save
from torch import nn

from ..atomic import atomic_write_bytes


def default_assets_dir() -> Path:
    """The shipped weights, `steinsplat/assets/shapeworld` (package data: in a checkout, an editable
    install and a wheel alike); $STEINSPLAT_ASSETS names another folder holding a `shapeworld/`."""
    env = os.environ.get("STEINSPLAT_ASSETS")
    if env:
        return Path(env) / "shapeworld"
    from importlib.resources import files

    return Path(str(files("steinsplat"))) / "assets" / "shapeworld"


def save_model_folder(folder: str | Path, config: dict[str, Any], module: nn.Module, weights_name: str,
                      config_name: str = "config.json") -> None:
    """`folder/config_name` (JSON) and `folder/weights_name` (the module's state dict as safetensors)."""
    folder = Path(folder)
    tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(folder / weights_name, save(tensors))
    atomic_write_bytes(folder / config_name, (json.dumps(config, indent=2) + "\n").encode())


def read_model_folder(folder: str | Path | None, name: str, weights_name: str,
                      config_name: str = "config.json") -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, state dict) of a model folder; `folder` None means the shipped
    `steinsplat/assets/shapeworld/<name>`. A missing folder raises FileNotFoundError with the training command."""
    path = Path(folder) if folder is not None else default_assets_dir() / name
    if not (path / config_name).exists():
        raise FileNotFoundError(f"no ShapeWorld {name} at {path}; train one with "
                                f"`python -m steinsplat.shapeworld.train {name}`")
    return json.loads((path / config_name).read_text()), load_file(str(path / weights_name))
