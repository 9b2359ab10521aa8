"""Object or scene: what a prompt asks for, decided before anything loads.

ShapeWorld's grammar tells rooms from objects (shapeworld/vocab.py: "a room with {colour} walls and a
{colour} floor" is a room; "a red cube", "a cube", "an object" are objects), so under the ShapeWorld prior
the prompt decides the mode: `mode="auto"` takes it from the prompt, and a mode that contradicts the prompt
is refused. A Stable Diffusion prompt is free text: `auto` means object there, and any mode given is kept.

    resolve_mode(cfg, prior_name)   -> cfg with mode "object" or "scene" (a new config; cfg is not changed)
    mode_source(argv)               -> where a command line set the mode ("--mode", "--config NAME"), or None
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, TypeVar

from .config import ConfigError

C = TypeVar("C")

SCENE_NOTE = "mode: scene (the prompt describes a room)"  # no override to offer: --mode object is refused for it


class ModeError(ConfigError):
    """A mode that contradicts the prompt (a ConfigError: the command line reports it in one line)."""


def prompt_mode(prompt: str, prior_name: str) -> Optional[str]:
    """"object" or "scene" when the prompt decides it (a ShapeWorld prompt under the ShapeWorld prior),
    else None (free text for Stable Diffusion, or a prompt outside the grammar: the prompt check reports it)."""
    if prior_name == "auto":
        raise ValueError("resolve the prior first (generate.pick_prior_name): 'auto' depends on the device")
    if prior_name != "shapeworld":
        return None
    from .shapeworld.vocab import PromptError, RoomPrompt, parse_prompt

    try:
        parsed = parse_prompt(prompt)
    except (PromptError, TypeError):
        return None
    return "scene" if isinstance(parsed, RoomPrompt) else "object"


def resolve_mode(cfg: C, prior_name: str, say: Optional[Callable[[str], Any]] = None, given_by: str = "--mode") -> C:
    """`cfg` with its mode decided: "auto" becomes the prompt's mode (object when the prompt does not tell);
    an explicit mode is kept, unless it contradicts a ShapeWorld prompt (ModeError, naming the flag that fixes
    it). `say` gets one line when a room prompt made the mode scene; `given_by` names where the mode came from
    in that error ("--mode", "--config scene"). Pure: no I/O besides `say`; `cfg` itself is never changed."""
    mode = getattr(cfg, "mode")
    implied = prompt_mode(getattr(cfg, "prompt"), prior_name)
    if mode == "auto":
        mode = implied or "object"
        if mode == "scene" and say is not None:
            say(SCENE_NOTE)
        return dataclasses.replace(cfg, mode=mode)  # type: ignore[type-var]
    if mode not in ("object", "scene"):
        raise ModeError(f"--mode {mode}: use object, scene or auto (auto: the prompt decides)")
    if implied is not None and implied != mode:
        what = "a room" if implied == "scene" else "an object"
        source = f"--mode {mode}" if given_by == "--mode" else f"{given_by} (mode: {mode})"
        fix = (f"use --mode {implied}, or leave --mode out and the prompt decides" if given_by == "--mode"
               else f"add --mode {implied} (the command line wins over the preset)")
        raise ModeError(f"{source} contradicts the prompt, which describes {what} in ShapeWorld's grammar: {fix}")
    return cfg


def mode_source(argv: Sequence[str]) -> Optional[str]:
    """Where this command line sets the mode: "--mode" (the command line wins), "--config NAME" when that
    preset has a `mode` key, else None (the prompt may decide). Reads the preset; raises ConfigError as
    `config.parse` does for a bad one."""
    from .config import load_preset_data, split_config_flag

    name, rest = split_config_flag(argv)
    if any(a == "--mode" or a.startswith("--mode=") for a in rest):
        return "--mode"
    if name is not None and "mode" in load_preset_data(name):
        return f"--config {name}"
    return None
