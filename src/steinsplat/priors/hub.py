"""Where pretrained weights come from, and the one error when they cannot be had.

Policy (priors and estimators alike):
- an existing local folder is loaded from disk, never from the network;
- a hub id is loaded from the local Hugging Face cache only (`local_files_only=True`, with the
  Hub's offline mode on so that no request at all is made) unless the caller passes
  `allow_download=True`; `HF_HUB_OFFLINE=1` forbids downloading even then;
- anything that goes wrong while locating the files becomes one `ModelUnavailableError`
  subclass whose message says the three ways to get the model.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Type

from .base import ModelUnavailableError


def hub_offline() -> bool:
    """True when `HF_HUB_OFFLINE` is set to a true value (huggingface_hub's own rule)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass
class ModelSource:
    """A resolved model location."""

    location: str  # the folder or hub id passed to from_pretrained
    is_local: bool  # True: a folder on disk
    local_files_only: bool  # what to pass to from_pretrained


def how_to_get(name: str, what: str, flag: str = "--model", replacement: Optional[str] = None) -> str:
    """The hint appended to every ModelUnavailableError.

    flag: the command-line option that names this model (`--model` for the prior,
    `--estimator-model` for the depth estimator); replacement: a maintained copy of a repository
    its publisher removed from the Hub (said first, since no download of `name` can work)."""
    offline = " (HF_HUB_OFFLINE is set, so nothing is downloaded even then: unset it)" if hub_offline() else ""
    head = ""
    if replacement:
        head = (f"'{name}' was removed from the Hugging Face Hub by its publisher; the same weights are at "
                f"'{replacement}': use `{flag} {replacement}` (and fetch that one as below).\n")
    return head + (
        f"To use the {what} '{name}', do one of:\n"
        f"  - download it once where there is network: `hf download {name}` "
        f"(huggingface_hub's command; it lands in the Hugging Face cache, which is then used offline);\n"
        f"  - pass a local folder that holds it: `{flag} PATH` (e.g. a folder written by save_pretrained);\n"
        f"  - let steinsplat download it: add `--allow-download` (allow_download=True in Python){offline}.\n"
        f"Set HF_HUB_OFFLINE=1 to make sure nothing is ever fetched from the network."
    )


def resolve(name_or_path: str | Path, allow_download: bool, what: str, error: Type[ModelUnavailableError],
            flag: str = "--model") -> ModelSource:
    """Decide how to load `name_or_path`. A path-like string that does not exist is an error here
    (it would otherwise be mistaken for a hub id)."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_dir():
        return ModelSource(str(p), True, True)
    looks_like_path = s.startswith(("/", "./", "../", "~")) or os.sep + os.sep in s or s.count("/") > 1 or p.exists()
    if looks_like_path:
        raise error(f"no {what} folder at {s}: the path does not exist or is not a folder.\n" + how_to_get(s, what, flag))
    return ModelSource(s, False, (not allow_download) or hub_offline())


@contextlib.contextmanager
def offline_mode(enabled: bool = True) -> Iterator[None]:
    """Inside the block nothing from Hugging Face touches the network (when `enabled`).

    `local_files_only=True` alone is not enough: transformers and diffusers still ask the Hub's API
    (for example whether a cached file is current) before falling back to the cache. huggingface_hub
    refuses every request while its offline flag is set, and transformers and diffusers consult it;
    the flag is read once at import, so it is set on the module as well as in the environment (for
    libraries imported later), and both are restored afterwards."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


@contextlib.contextmanager
def unavailable_as(name: str, what: str, error: Type[ModelUnavailableError], flag: str = "--model",
                   replacement: Optional[str] = None, offline: bool = False) -> Iterator[None]:
    """Turn "cannot find / cannot download" failures inside the block into one `error`
    (`flag`, `replacement`: see `how_to_get`); offline=True: and forbid the network meanwhile (`offline_mode`)."""
    try:
        from huggingface_hub.errors import HFValidationError  # invalid repo ids
    except Exception:  # pragma: no cover - very old huggingface_hub
        HFValidationError = ValueError  # type: ignore[misc,assignment]
    try:
        with offline_mode(offline):
            yield
    except ModelUnavailableError:
        raise
    except (OSError, HFValidationError) as e:  # OSError covers EnvironmentError, missing files, no network
        cause = str(e).splitlines()[0] if str(e) else ""
        if replacement:
            raise error(f"the {what} '{name}' was removed from the Hugging Face Hub: use {flag} {replacement} "
                        f"(the same weights)\n" + how_to_get(name, what, flag, replacement)) from e
        if offline and not isinstance(e, HFValidationError) and not Path(name).expanduser().is_dir():
            # the library's words ("couldn't connect to huggingface.co") would mislead: nothing was tried
            raise error(f"the {what} '{name}' is not in the local Hugging Face cache, and downloads are off "
                        f"(run again with --allow-download to fetch it)\n" + how_to_get(name, what, flag, replacement)) from e
        raise error(f"could not load the {what} '{name}': {type(e).__name__}: {cause}\n" + how_to_get(name, what, flag, replacement)) from e
