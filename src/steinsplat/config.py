"""Dataclass configs from YAML presets, with command-line overrides through tyro.

A preset is a YAML mapping whose keys are the dataclass's fields (nested dataclasses are
nested mappings). `--config NAME` finds `configs/NAME.yaml` in the working directory or in the
steinsplat source tree; `--config path/to/file.yaml` reads that file. Unknown keys are
an error that lists the known ones, so a typo in a preset never goes unnoticed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")

# the repository's configs/ (found from an editable install or a source checkout)
REPO_PRESETS = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    pass


def find_preset(name: str) -> Path:
    p = Path(name)
    candidates = [p] if p.suffix in (".yaml", ".yml") else []
    candidates += [Path("configs") / f"{name}.yaml", REPO_PRESETS / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted({q.stem for d in (Path("configs"), REPO_PRESETS) if d.is_dir() for q in d.glob("*.yaml")})
    raise ConfigError(f"config preset {name!r} not found; known presets: {', '.join(known) or 'none'}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclass fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {sorted(unknown)}; known keys: {sorted(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        current = _field_default(fields[name])
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[name] = from_dict(type(current), value, f"{where}{name}.")
        elif isinstance(current, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        elif isinstance(current, Path) and isinstance(value, str):
            kwargs[name] = Path(value)
        else:
            kwargs[name] = value
    for name, f in fields.items():  # required fields the preset leaves open stay required on the command line
        if name not in kwargs and _field_default(f) is dataclasses.MISSING:
            import tyro

            kwargs[name] = tyro.MISSING
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def load_preset(cls: type[T], name: str) -> T:
    path = find_preset(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    return from_dict(cls, data, "")


def split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take `--config NAME` / `--config=NAME` out of argv."""
    rest: list[str] = []
    name = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a preset name or a YAML path")
            name = argv[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            name = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return name, rest


def parse(cls: type[T], argv: Sequence[str], prog: str, description: str | None = None) -> T:
    """tyro over `cls`, with defaults taken from `--config` when given."""
    import tyro

    name, rest = split_config_flag(argv)
    default = load_preset(cls, name) if name else None
    return tyro.cli(cls, args=rest, default=default, prog=prog, description=description)
