"""Names made from text: `slugify` (a prompt as a file or folder name: outputs/<slug>/, batch folders,
the study's run keys) and `short` (text cut for an error message)."""

from __future__ import annotations

import re
import unicodedata

# Names Windows reserves for devices (in any case, with any extension): a folder "con" cannot be made there.
RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def slugify(text: str, max_len: int = 60) -> str:
    """A lower-case ASCII name safe on every file system: letters, digits and single dashes (never a
    reserved device name such as `con` or `nul`: those get `-prompt` appended)."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    t = re.sub(r"[^a-zA-Z0-9]+", "-", t.lower()).strip("-")
    t = t[:max_len].rstrip("-")
    if t in RESERVED_NAMES:
        t += "-prompt"
    return t or "prompt"


def short(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for an error message (a 10,000-character prompt is not echoed whole)."""
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text):,} characters)"
