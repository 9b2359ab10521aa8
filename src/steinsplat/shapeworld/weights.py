"""Model folders of the embedded models: a JSON config and safetensors weights, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save
from torch import nn

from ..export.atomic import atomic_write_bytes


def save_model_folder(folder: str | Path, config: dict[str, Any], module: nn.Module, weights_name: str,
                      config_name: str = "config.json") -> None:
    """`folder/config_name` (JSON) and `folder/weights_name` (the module's state dict as safetensors)."""
    folder = Path(folder)
    tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(folder / weights_name, save(tensors))
    atomic_write_bytes(folder / config_name, (json.dumps(config, indent=2) + "\n").encode())
