"""Dataclass configs from YAML presets, with command-line overrides through tyro.

A preset is a YAML mapping whose keys are the dataclass's fields (nested dataclasses are
nested mappings; a field that is a union of config classes, as GenerateConfig.guidance, is a mapping
tagged with the member's `name`: `guidance: {name: ssd, baseline: depth}`). A class whose command line
is flat (GenerateConfig: `CommandLine` = GenerateFlags, with `from_config` / `to_config`) is parsed
through those flags. `--config NAME` finds `configs/NAME.yaml` in the working directory or in the
steinsplat source tree; `--config path/to/file.yaml` reads that file. Unknown keys are
an error that lists the known ones, so a typo in a preset never goes unnoticed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")

# the presets shipped as package data, steinsplat/configs/ (a checkout, an editable install and a wheel alike)
REPO_PRESETS = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    pass


def find_preset(name: str) -> Path:
    p = Path(name)
    candidates = [p] if p.suffix in (".yaml", ".yml") else []
    candidates += [Path("configs") / f"{name}.yaml", REPO_PRESETS / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    for c in [p] + candidates:
        if c.exists() and not c.is_file():
            kind = "a folder" if c.is_dir() else "not a regular file"
            raise ConfigError(f"--config '{c}' is {kind}; give a YAML file (configs/NAME.yaml) or a preset name")
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
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        members = union_members(hints.get(name, Any))
        if members:
            kwargs[name] = union_member(f"{where}{name}", value, members)
            continue
        current = _field_default(fields[name])
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name}: expected a mapping of its fields "
                                  f"({', '.join(f.name for f in dataclasses.fields(current))}), got {_shown(value)}")
            kwargs[name] = from_dict(type(current), value, f"{where}{name}.")
            continue
        kwargs[name] = check_value(f"{where}{name}", value, hints.get(name, Any))
    for name, f in fields.items():  # required fields the preset leaves open stay required on the command line
        if name not in kwargs and _field_default(f) is dataclasses.MISSING:
            import tyro

            kwargs[name] = tyro.MISSING
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def union_members(hint: Any) -> dict[str, type]:
    """{name: class} of a union of config classes that each have a `name` (GuidanceSpec); {} for any other type."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return {}
    args = typing.get_args(hint)
    if not all(dataclasses.is_dataclass(a) and isinstance(getattr(a, "name", None), str) for a in args):
        return {}
    return {a.name: a for a in args}


def union_member(where: str, value: Any, members: dict[str, type]) -> Any:
    """The member a tagged mapping names ({name: ssd, noise: filter} -> SSDSpec(noise="filter"))."""
    if isinstance(value, str) and value in members:
        raise ConfigError(f"{where}: {value!r} is now a mapping naming the method, `{where.rsplit('.', 1)[-1]}: {{name: {value}}}` "
                          "(with its options beside the name)")
    if not isinstance(value, dict) or value.get("name") not in members:
        raise ConfigError(f"{where}: expected a mapping with `name:` one of {', '.join(members)} and that one's options, "
                          f"got {_shown(value)}")
    return from_dict(members[value["name"]], {k: v for k, v in value.items() if k != "name"}, f"{where}.")


def check_value(where: str, value: Any, hint: Any) -> Any:
    """`value` (from YAML) as the field typed `hint` takes it, or a ConfigError saying what was expected.

    YAML gives str, int, float, bool, None, lists and mappings; Paths come as strings, tuples as lists.
    A float is not an int (`steps: 2.5` is refused, not rounded) and a bool is not a number."""
    ok, converted = _conforms(value, hint)
    if not ok:
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {_shown(value)}")
    return converted


def _conforms(value: Any, hint: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _conforms(value, args[0])
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True, value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _conforms(value, a)
            if ok:
                return True, v
        return False, value
    if origin is typing.Literal:
        return value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)), value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if isinstance(value, (int, float)) else value
    if hint is str:
        return isinstance(value, str), value
    if hint is Path:
        return isinstance(value, (str, Path)), Path(value) if isinstance(value, (str, Path)) else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        elems = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if args and len(elems) != len(value):
            return False, value
        out = []
        for v, a in zip(value, elems or [Any] * len(value)):
            ok, c = _conforms(v, a)
            if not ok:
                return False, value
            out.append(c)
        return True, tuple(out)
    return True, value  # a type this checker does not know: the dataclass decides


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _describe(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return "a list" + (f" of {_describe(args[0])}" if args else "")
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path (string)",
             type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _shown(value: Any) -> str:
    """A short repr: a value expanded from YAML aliases can be huge, and is never printed whole."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 2, 4, 4, 4, 4
    r.maxstring = r.maxother = r.maxlong = 50
    text = r.repr(value)
    return (text if len(text) <= 60 else text[:50] + "...") + f" ({type(value).__name__})"


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def load_preset(cls: type[T], name: str) -> T:
    data = load_preset_data(name)
    flags = getattr(cls, "CommandLine", None)
    if flags is not None and isinstance(data, dict) and uses_flat_flags(cls, flags, data):
        import warnings

        own = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        old = sorted(k for k in data if k not in own or not isinstance(data[k], dict) and union_members(typing.get_type_hints(cls).get(k)))
        warnings.warn(f"preset {name}: {', '.join(old)} are the command line's flat flags; a preset now says "
                      "`guidance: {name: ssd, noise: filter, baseline: depth ...}`", FutureWarning, stacklevel=2)
        return from_dict(flags, data, "").to_config()
    return from_dict(cls, data, "")


def uses_flat_flags(cls: type, flags: type, data: dict) -> bool:
    """A preset written in the command line's flat keys (`guidance: ssd`, `ssd_noise: filter`) rather than
    cls's own: every key is a flag, and one is not a field of cls or is a union field given as a name."""
    own = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    flat = {f.name for f in dataclasses.fields(flags)}
    hints = typing.get_type_hints(cls)
    return set(data) <= flat and any(k not in own or (union_members(hints.get(k)) and isinstance(data[k], str)) for k in data)


def load_preset_data(name: str) -> Any:
    """The preset's mapping as YAML gives it (not yet checked against a dataclass; {} for an empty file)."""
    from .export.readable import read_regular

    path = find_preset(name)
    try:
        data = safe_yaml(read_regular(path, f"config {path}", ConfigError, limit=MAX_PRESET_BYTES, what="preset")
                         .decode("utf-8"), path) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the file or see configs/ for examples") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return data


MAX_PRESET_BYTES = 1 << 20  # a preset is a few lines; anything beyond this is the wrong file
MAX_PRESET_NODES = 100_000  # values a preset may hold once its aliases are expanded (YAML "billion laughs")
MAX_PRESET_DEPTH = 64  # nesting of mappings and lists


def safe_yaml(text: str, path: Path) -> Any:
    """yaml.safe_load with bounds: refuses aliases that expand beyond MAX_PRESET_NODES values, nesting
    deeper than MAX_PRESET_DEPTH, an alias to itself, and a key given twice in one mapping."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{path}: nested thousands of levels deep; a preset is a flat mapping "
                              "(see configs/ for examples)") from None
        if node is None:
            return None
        _measure(node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1 if node.start_mark is not None else 0


def _measure(root: yaml.Node, path: Path) -> None:
    """Walk the node graph once (iteratively, each shared node once): expanded size, depth, duplicate keys."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values once expanded, depth)
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        k = id(node)
        if finished:
            kids = _children(node)
            size = 1 + sum(done[id(c)][0] for c in kids)
            depth = 1 + max((done[id(c)][1] for c in kids), default=0)
            open_.discard(k)
            done[k] = (size, depth)
            if size > MAX_PRESET_NODES:
                raise ConfigError(f"{path}:{_line(node)}: its aliases (*name) expand to more than {MAX_PRESET_NODES:,} "
                                  "values; a preset is a few lines, write the values out")
            if depth > MAX_PRESET_DEPTH:
                raise ConfigError(f"{path}:{_line(node)}: nested more than {MAX_PRESET_DEPTH} levels deep; "
                                  "a preset is a flat mapping (see configs/ for examples)")
            continue
        if k in done:
            continue
        if k in open_:
            raise ConfigError(f"{path}:{_line(node)}: an alias refers to a value that contains it; "
                              "write the values out")
        open_.add(k)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    ident = (key.tag, key.value)
                    if ident in seen:
                        raise ConfigError(f"{path}:{_line(key)}: the key {key.value[:40]!r} appears twice in one "
                                          f"mapping (also line {seen[ident]}); keep one")
                    seen[ident] = _line(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in done)


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
    flags = getattr(cls, "CommandLine", None)  # a flat command line for a nested config (GenerateFlags)
    if flags is not None and default is not None:
        default = flags.from_config(default)
    box = io.StringIO()
    try:
        with contextlib.redirect_stderr(box):
            got = tyro.cli(flags or cls, args=rest, default=default, prog=prog, description=description)
    except SystemExit as exc:
        sys.stderr.write(box.getvalue())  # tyro's own explanation (with the option's help), then one line
        if exc.code in (0, None):
            raise
        raise ConfigError(f"{tyro_summary(box.getvalue())} (see {prog} --help)") from None
    if flags is None:
        return got
    try:
        return got.to_config(default)
    except (TypeError, ValueError) as exc:  # a method's flag with another method (guidance_spec.GuidanceFlagError)
        raise ConfigError(str(exc)) from None


def tyro_summary(text: str) -> str:
    """The first paragraph of tyro's error box as one line (the box's borders and rules removed)."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip().strip("│╭╮╰╯").strip()
        if not line or set(line) <= set("─╭╮╰╯ "):
            if lines:
                break
            continue
        if line.startswith("─"):  # the title row: "─ Value error ───"
            continue
        lines.append(line)
    summary = re.sub(r"\s+", " ", " ".join(lines)).strip()
    return summary or "the command-line options are not valid"
