"""What was renamed in the tidy-up still answers to its old name, as the same objects, with one warning."""

import importlib
import subprocess
import sys

import pytest


def _fresh_import(name: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("old, new, names", [
    ("steinsplat.train", "steinsplat.trainer", ("Trainer", "OptimConfig", "StepLog", "Callback")),
    ("steinsplat.estimators", "steinsplat.geometry", ("ESTIMATORS", "GeometryEstimator", "ShapeWorldEstimatorAdapter")),
])
def test_old_module_paths_import_the_same_objects_with_a_warning(old, new, names):
    code = (f"import importlib; new = importlib.import_module({new!r}); old = importlib.import_module({old!r}); "
            f"assert all(getattr(old, n) is getattr(new, n) for n in {names!r})")
    r = _fresh_import(old, code)
    assert r.returncode == 0, r.stderr
    assert f"{old} is now {new}" in r.stderr and "DeprecationWarning" in r.stderr


def test_old_submodule_paths_of_the_geometry_estimators():
    r = _fresh_import("steinsplat.estimators.tiny", "from steinsplat.estimators.tiny import TinyConvEstimator as A; "
                      "from steinsplat.geometry.tiny import TinyConvEstimator as B; assert A is B")
    assert r.returncode == 0, r.stderr


def test_moved_helpers_are_importable_from_where_they_were():
    from steinsplat import atomic, naming, provenance
    from steinsplat.batch import slugify
    from steinsplat.export.atomic import ensure_writable_folder
    from steinsplat.pipeline import short, versions
    from steinsplat.shapeworld.prior import default_assets_dir
    from steinsplat.shapeworld.weights import default_assets_dir as d2

    assert slugify is naming.slugify and short is naming.short and versions is provenance.versions
    assert ensure_writable_folder is atomic.ensure_writable_folder and default_assets_dir is d2
    assert importlib.import_module("steinsplat.export.mesh").MeshConfig is importlib.import_module("steinsplat.export.mesh_config").MeshConfig


def test_the_exporters_still_raise_export_errors_and_the_rest_write_errors(tmp_path):
    from steinsplat.atomic import WriteError, atomic_write_bytes
    from steinsplat.export.atomic import atomic_write_bytes as export_write
    from steinsplat.export.errors import ExportError

    (tmp_path / "dir").mkdir()
    with pytest.raises(WriteError, match="it is a folder") as plain:
        atomic_write_bytes(tmp_path / "dir", b"x")
    assert not isinstance(plain.value, ExportError) and isinstance(plain.value, ValueError)
    with pytest.raises(ExportError, match="it is a folder"):
        export_write(tmp_path / "dir", b"x")
