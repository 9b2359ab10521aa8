"""Errors raised by the exporters and loaders (all are `ValueError`s)."""

from __future__ import annotations


class ExportError(ValueError):
    """A file could not be written or read; the message names the file and what to do."""


class PlyError(ExportError):
    """A PLY file is malformed, truncated or not a 3DGS PLY."""


class SplatError(ExportError):
    """A `.splat` file is malformed or truncated."""


class SpzError(ExportError):
    """A `.spz` file is malformed, truncated or of an unsupported version."""


class GltfError(ExportError):
    """A glTF (.glb) file is malformed, truncated or holds no Gaussian splats we can read."""


class ExportWriteError(ExportError, OSError):
    """Writing an output failed (a full disk, a file-size limit, an I/O error): an ExportError with a message
    that says what to do, and still the OSError it was (`errno` kept) for callers that catch those."""
