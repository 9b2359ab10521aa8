"""Niantic's .spz through gsply: round trip to the format's precision, the version we write, size,
same bytes for the same splats, malformed files, atomic writes, and the command line."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from steinsplat.cli import main
from steinsplat.export import ExportError, SpzError, export_gaussians, load_gaussians, read_spz, write_ply, write_spz
from steinsplat.gaussians import Gaussians, quat_to_rotmat

# The format's steps (module docstring of export/spz.py): half a step is the largest rounding error.
POS_STEP = 2.0**-12
LOG_SCALE_STEP = 1 / 16
SH0_STEP = 1 / (0.15 * 255)
SHN_STEP = 1 / 128
ALPHA_STEP = 1 / 255


def in_range_gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    """Values inside every field's range (positions within 1 m, log scales -7..-1, |f_dc| < 3, |f_rest| < 0.9)."""
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return Gaussians(
        torch.rand(n, 3, generator=g) * 2 - 1,
        torch.rand(n, 3, generator=g) * 6 - 7,
        torch.randn(n, 4, generator=g),
        torch.randn(n, generator=g) * 2,
        torch.rand(n, 1, 3, generator=g) * 6 - 3,
        torch.rand(n, k, 3, generator=g) * 1.8 - 0.9,
    )


def spz_header(path: Path) -> tuple[int, int, int, int, int]:
    """(magic, version, count, SH degree, fractional bits), read with gzip and struct, not with gsply."""
    magic, version, n, degree, bits, _, _ = struct.unpack("<IIIBBBB", gzip.decompress(path.read_bytes())[:16])
    return magic, version, n, degree, bits


def assert_one_line_error(exc_info: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    msg = str(exc_info.value)
    assert str(path) in msg and "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, msg


# ---------------------------------------------------------------------------- round trip and layout


@pytest.mark.parametrize("degree", [0, 3])
def test_spz_round_trip_to_the_format_precision(tmp_path: Path, degree: int) -> None:
    g = in_range_gaussians(300, degree, seed=degree)
    path = tmp_path / "g.spz"
    assert write_spz(path, g) == 300
    back = read_spz(path)
    assert len(back) == 300 and back.sh_degree == degree
    a, b = g.splats, back.splats
    assert (a["means"] - b["means"]).abs().max() <= POS_STEP / 2 + 1e-7
    assert (a["scales"] - b["scales"]).abs().max() <= LOG_SCALE_STEP / 2 + 1e-6
    assert (torch.sigmoid(a["opacities"]) - torch.sigmoid(b["opacities"])).abs().max() <= ALPHA_STEP / 2 + 1e-6
    assert (a["sh0"] - b["sh0"]).abs().max() <= SH0_STEP / 2 + 1e-6
    if degree:
        assert (a["shN"] - b["shN"]).abs().max() <= SHN_STEP / 2 + 1e-6
    # rotations: smallest-three with 9 bits; q and -q are the same rotation, so compare matrices
    ra = quat_to_rotmat(torch.nn.functional.normalize(a["quats"].detach(), dim=-1))
    rb = quat_to_rotmat(b["quats"].detach())
    assert (ra - rb).abs().max() < 5e-3


def test_spz_is_version_3_gzip_with_the_expected_header(tmp_path: Path) -> None:
    path = tmp_path / "g.spz"
    write_spz(path, in_range_gaussians(40, 1))
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip: what Spark 2.x requires (it refuses version 4)
    assert spz_header(path) == (0x5053474E, 3, 40, 1, 12)
    assert path.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # no time stamp


def test_spz_same_splats_same_bytes(tmp_path: Path) -> None:
    g = in_range_gaussians(200, 3)
    write_spz(tmp_path / "a.spz", g)
    write_spz(tmp_path / "b.spz", g)
    assert (tmp_path / "a.spz").read_bytes() == (tmp_path / "b.spz").read_bytes()


def test_spz_at_most_a_quarter_of_the_sh0_ply(tmp_path: Path) -> None:
    """A solid cloud of splats (the shape of a run's output): .spz <= 1/4 of the SH-degree-0 PLY."""
    ax = torch.arange(-0.3, 0.3001, 0.02)
    pts = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    pts = pts + 0.003 * torch.randn(pts.shape, generator=torch.Generator().manual_seed(0))  # not a perfect grid
    g = Gaussians.from_points(pts, torch.tensor([[0.85, 0.12, 0.10]]).expand(len(pts), 3), scale=0.012, opacity=0.9)
    write_ply(tmp_path / "g.ply", g, sh_degree=0)
    write_spz(tmp_path / "g.spz", g)
    ratio = (tmp_path / "g.spz").stat().st_size / (tmp_path / "g.ply").stat().st_size
    assert ratio <= 0.25, ratio


def test_spz_far_coordinates_use_fewer_fractional_bits(tmp_path: Path) -> None:
    g = in_range_gaussians(20, 0)
    g.splats["means"].data[0] = torch.tensor([3000.0, -5.0, 2.0])  # beyond +-2048 m at 12 bits
    path = tmp_path / "far.spz"
    write_spz(path, g)
    bits = spz_header(path)[4]
    assert bits == 11
    assert (read_spz(path).splats["means"] - g.splats["means"]).abs().max() <= 2.0**-bits / 2 + 1e-4


def test_spz_nonfinite_and_zero_quaternion_dropped(tmp_path: Path) -> None:
    g = in_range_gaussians(6, 0)
    g.splats["means"].data[1, 0] = float("nan")
    g.splats["quats"].data[4] = 0.0
    with pytest.warns(RuntimeWarning, match="dropped 2 of 6"):
        assert write_spz(tmp_path / "g.spz", g) == 4
    assert len(read_spz(tmp_path / "g.spz")) == 4


def test_spz_nothing_finite_refuses_to_write(tmp_path: Path) -> None:
    g = in_range_gaussians(2, 0)
    g.splats["opacities"].data[:] = float("inf")
    with pytest.warns(RuntimeWarning), pytest.raises(SpzError, match="nothing to write"):
        write_spz(tmp_path / "g.spz", g)
    assert not (tmp_path / "g.spz").exists()


def test_spz_failing_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "g.spz"
    write_spz(path, in_range_gaussians(3, 0))
    old = path.read_bytes()
    import gsply

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gsply, "write_spz", fail)
    with pytest.raises(OSError, match="No space"):
        write_spz(path, in_range_gaussians(50, 0))
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["g.spz"]


def test_export_and_load_spz_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "X.SPZ"
    assert export_gaussians(path, in_range_gaussians(5, 0)) == 5
    assert len(load_gaussians(path)) == 5


# ---------------------------------------------------------------------------- malformed files


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


def _header(version: int = 3, n: int = 1, degree: int = 0, bits: int = 12) -> bytes:
    return struct.pack("<IIIBBBB", 0x5053474E, version, n, degree, bits, 0, 0)


BAD_SPZ = {
    "empty": (b"", ["empty"]),
    "text": (b"hello, not a splat file\n", ["not a .spz file"]),
    "ply": (b"ply\nformat binary_little_endian 1.0\n", ["not a .spz file"]),
    "gzip_of_text": (_gz(b"some text that is long enough to read"), ["not .spz", "NGSP"]),
    "gzip_short": (_gz(b"NGSP"), ["truncated"]),
    "corrupt_gzip": (b"\x1f\x8b\x08\x00" + bytes(range(200)), ["corrupt gzip"]),
    "version_1": (_gz(_header(version=1) + bytes(15)), ["version 1", "not supported"]),
    "version_9": (_gz(_header(version=9) + bytes(20)), ["unknown .spz version 9"]),
    "sh_degree_5": (_gz(_header(degree=5) + bytes(20)), ["SH degree 5"]),
    "bits_30": (_gz(_header(bits=30) + bytes(20)), ["30 fractional bits"]),
    "payload_short": (_gz(_header(n=10) + bytes(50)), ["truncated", "10 Gaussians"]),
    "huge_count": (_gz(_header(n=2**31) + bytes(20)), ["2147483648 Gaussians", "max_points"]),
    "count_beyond_the_file": (_gz(_header(n=40_000_000) + bytes(20)), ["40000000 Gaussians", "compressed bytes"]),
    "v4_short": (b"NGSP\x04\x00\x00\x00", ["truncated", "version-4"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPZ))
def test_bad_spz_one_clear_error(tmp_path: Path, case: str) -> None:
    data, fragments = BAD_SPZ[case]
    path = tmp_path / f"bad_{case}.spz"
    path.write_bytes(data)
    with pytest.raises(SpzError) as exc_info:
        read_spz(path)
    assert_one_line_error(exc_info, path, *fragments)
    assert isinstance(exc_info.value, ExportError)


def test_truncated_real_spz(tmp_path: Path) -> None:
    path = tmp_path / "cut.spz"
    write_spz(path, in_range_gaussians(500, 3))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SpzError) as exc_info:
        read_spz(path)
    assert_one_line_error(exc_info, path, "truncated")


def test_missing_spz(tmp_path: Path) -> None:
    with pytest.raises(SpzError, match="cannot open"):
        read_spz(tmp_path / "nope.spz")


# ---------------------------------------------------------------------------- command line


def test_cli_export_info_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "a.ply"
    g = in_range_gaussians(64, 1)
    write_ply(src, g)
    assert main(["export", str(src), "--to", str(tmp_path / "b.spz")]) == 0
    assert spz_header(tmp_path / "b.spz")[1:4] == (3, 64, 1)
    assert main(["export", str(tmp_path / "b.spz"), "--to", str(tmp_path / "c.ply")]) == 0
    assert (load_gaussians(tmp_path / "c.ply").splats["means"] - g.splats["means"]).abs().max() <= POS_STEP
    capsys.readouterr()
    assert main(["info", str(tmp_path / "b.spz")]) == 0
    out = capsys.readouterr().out
    assert "64" in out and "SH degree" in out
    bad = tmp_path / "bad.spz"
    bad.write_bytes(b"\x1f\x8b garbage")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.spz" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_generate_accepts_spz_out(tmp_path: Path) -> None:
    from steinsplat.pipeline import GenerateConfig, GenerationError, validate_outputs

    assert validate_outputs(GenerateConfig("a red cube", out=tmp_path / "x.spz")) == tmp_path / "x.spz"
    with pytest.raises(GenerationError, match=r"\.spz"):
        validate_outputs(GenerateConfig("a red cube", out=tmp_path / "x.obj"))


def test_batch_format_spz_writes_spz_per_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`batch --format spz`: every prompt's splats go to <name>/<name>.spz (the generator is replaced by one that
    writes a small cloud where it is told to, so the wiring is tested without an optimisation)."""
    from types import SimpleNamespace

    import steinsplat.pipeline as gen_mod

    def fake_generate(cfg, console=None, models=None):  # noqa: ANN001
        n = export_gaussians(cfg.out, in_range_gaussians(10, 0))
        return SimpleNamespace(outputs={"splats": str(cfg.out)}, metrics={}, gaussians=n,  # a RunRecord's fields
                               timings=SimpleNamespace(total_s=0.0))

    monkeypatch.setattr(gen_mod, "generate", fake_generate)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    assert main(["batch", str(prompts), "--out-dir", str(tmp_path / "r"), "--format", "spz"]) == 0
    files = sorted(p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*.spz"))
    assert files == ["a-blue-sphere/a-blue-sphere.spz", "a-red-cube/a-red-cube.spz"]
    assert all(len(read_spz(tmp_path / "r" / f)) == 10 for f in files)
    assert main(["batch", str(prompts), "--out-dir", str(tmp_path / "r2"), "--format", "obj"]) == 2
    assert "--format obj" in capsys.readouterr().err

