"""steinsplat: text to 3D Gaussians by score distillation, with Stein Score Distillation."""

__version__ = "0.1.0"
