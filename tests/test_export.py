"""Tests of steinsplat.export: reference 3DGS PLY, antimatter15 .splat, atomic writes."""

from __future__ import annotations

import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from steinsplat.export import (
    ExportError,
    PlyError,
    SplatError,
    atomic_open,
    atomic_write_bytes,
    export_gaussians,
    load_gaussians,
    read_ply,
    read_splat,
    write_ply,
    write_splat,
)
from steinsplat.export import atomic as atomic_mod
from steinsplat.export import ply as ply_mod
from steinsplat.gaussians import SH_C0, Gaussians, rgb_to_sh0

KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


# ---------------------------------------------------------------------------- helpers


def random_gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return Gaussians(
        torch.randn(n, 3, generator=g),
        torch.randn(n, 3, generator=g) - 3.0,
        torch.randn(n, 4, generator=g),
        torch.randn(n, generator=g),
        torch.randn(n, 1, 3, generator=g),
        torch.randn(n, k, 3, generator=g),
    )


def assert_same(a: Gaussians, b: Gaussians) -> None:
    for key in KEYS:
        assert a.splats[key].shape == b.splats[key].shape, key
        assert a.splats[key].dtype == torch.float32, key
        assert torch.equal(a.splats[key], b.splats[key]), key


def reference_names(degree: int) -> list[str]:
    n_rest = 3 * ((degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def inria_save_ply(path: Path, g: Gaussians) -> None:
    """What INRIA's GaussianModel.save_ply does (plyfile, f4, transposes as in the original)."""
    s = {k: v.detach() for k, v in g.splats.items()}
    xyz = s["means"].numpy()
    normals = np.zeros_like(xyz)
    f_dc = s["sh0"].transpose(1, 2).flatten(start_dim=1).contiguous().numpy()
    f_rest = s["shN"].transpose(1, 2).flatten(start_dim=1).contiguous().numpy()
    opacities = s["opacities"][:, None].numpy()
    attributes = np.concatenate((xyz, normals, f_dc, f_rest, opacities, s["scales"].numpy(), s["quats"].numpy()), 1)
    elements = np.empty(xyz.shape[0], dtype=[(a, "f4") for a in reference_names(g.sh_degree)])
    elements[:] = list(map(tuple, attributes))
    PlyData([PlyElement.describe(elements, "vertex")]).write(str(path))


def plyfile_vertices(fields: list[tuple[str, str]], values: dict[str, np.ndarray], n: int) -> np.ndarray:
    arr = np.empty(n, dtype=fields)
    for name, _ in fields:
        arr[name] = values[name]
    return arr


def raw_ply(header_lines: list[str], body: bytes = b"") -> bytes:
    return ("\n".join(header_lines) + "\n").encode("ascii") + body


def assert_error(exc_info: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    msg = str(exc_info.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, msg


def only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------- PLY writing


@pytest.mark.parametrize("degree", [0, 3])
def test_ply_round_trip_exact(tmp_path: Path, degree: int) -> None:
    g = random_gaussians(50, degree)
    path = tmp_path / "scene.ply"
    assert write_ply(path, g) == 50
    back = read_ply(path)
    assert back.sh_degree == degree
    assert_same(back, g)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_bytes_equal_inria_save_ply(tmp_path: Path, degree: int) -> None:
    g = random_gaussians(7, degree, seed=degree)
    ours, ref = tmp_path / "ours.ply", tmp_path / "ref.ply"
    write_ply(ours, g)
    inria_save_ply(ref, g)
    assert ours.read_bytes() == ref.read_bytes()


def test_ply_layout_by_hand(tmp_path: Path) -> None:
    """Header text and every float of a 2-Gaussian degree-1 file, built independently with struct."""
    n, k = 2, 3
    means = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 5.5, 0.25]])
    scales = torch.tensor([[-1.0, -2.0, -3.0], [0.5, 0.0, -0.5]])
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3], [1.0, 0.0, 0.0, 0.0]])  # raw, not normalised
    opac = torch.tensor([-2.0, 4.0])
    sh0 = torch.tensor([[[0.1, 0.2, 0.3]], [[-0.1, -0.2, -0.3]]])
    shN = torch.tensor([[[100.0 * i + 10.0 * kk + c for c in range(3)] for kk in range(k)] for i in range(n)])
    g = Gaussians(means, scales, quats, opac, sh0, shN)
    path = tmp_path / "hand.ply"
    write_ply(path, g)

    header = "ply\nformat binary_little_endian 1.0\nelement vertex 2\n"
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    body = b""
    for i in range(n):
        f_rest = [shN[i, kk, c].item() for c in range(3) for kk in range(k)]  # channel-major
        row = means[i].tolist() + [0.0, 0.0, 0.0] + sh0[i, 0].tolist() + f_rest
        row += [opac[i].item()] + scales[i].tolist() + quats[i].tolist()
        body += struct.pack("<26f", *row)
    data = path.read_bytes()
    assert data[: len(header)].decode("ascii") == header
    assert data == header.encode("ascii") + body
    assert len(body) == 2 * 26 * 4


def test_ply_read_by_plyfile_names_types_and_channel_major(tmp_path: Path) -> None:
    n = 3
    shN = torch.tensor([[[100.0 * i + 10.0 * kk + c for c in range(3)] for kk in range(15)] for i in range(n)])
    g = random_gaussians(n, 3)
    g.splats["shN"].data.copy_(shN)
    path = tmp_path / "deg3.ply"
    write_ply(path, g)
    ply = PlyData.read(str(path))
    assert ply.text is False and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == reference_names(3)
    assert all(p.val_dtype == "f4" for p in vertex.properties)
    assert vertex.count == n
    for i in range(n):
        for c in range(3):
            for kk in range(15):
                assert vertex[f"f_rest_{c * 15 + kk}"][i] == 100.0 * i + 10.0 * kk + c
        assert vertex["nx"][i] == vertex["ny"][i] == vertex["nz"][i] == 0.0
        assert vertex["opacity"][i] == g.splats["opacities"][i].item()  # logit, raw
        assert vertex["scale_1"][i] == g.splats["scales"][i, 1].item()  # log, raw
        assert vertex["rot_0"][i] == g.splats["quats"][i, 0].item()  # w, raw
        assert vertex["f_dc_2"][i] == g.splats["sh0"][i, 0, 2].item()


def test_ply_degree_0_padded_to_3_for_unity(tmp_path: Path) -> None:
    g = random_gaussians(4, 0)
    path = tmp_path / "unity.ply"
    write_ply(path, g, sh_degree=3)
    header_len = len(ply_mod.ply_header(4, 3))
    assert path.stat().st_size == header_len + 4 * 248  # Unity's 248 bytes per splat
    back = read_ply(path)
    assert back.sh_degree == 3
    assert torch.count_nonzero(back.splats["shN"]) == 0
    for key in ("means", "scales", "quats", "opacities", "sh0"):
        assert torch.equal(back.splats[key], g.splats[key])


def test_ply_degree_3_truncated_to_0(tmp_path: Path) -> None:
    g = random_gaussians(4, 3)
    path = tmp_path / "dc.ply"
    write_ply(path, g, sh_degree=0)
    back = read_ply(path)
    assert back.sh_degree == 0
    for key in ("means", "scales", "quats", "opacities", "sh0"):
        assert torch.equal(back.splats[key], g.splats[key])


def test_ply_degree_3_to_1_keeps_first_bands(tmp_path: Path) -> None:
    g = random_gaussians(4, 3)
    write_ply(tmp_path / "d1.ply", g, sh_degree=1)
    back = read_ply(tmp_path / "d1.ply")
    assert torch.equal(back.splats["shN"], g.splats["shN"][:, :3, :])


def test_ply_bad_sh_degree(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="sh_degree"):
        write_ply(tmp_path / "x.ply", random_gaussians(2, 0), sh_degree=4)
    assert not (tmp_path / "x.ply").exists()


def test_ply_nonfinite_rows_dropped_on_write(tmp_path: Path) -> None:
    g = random_gaussians(6, 3)
    g.splats["opacities"].data[1] = float("nan")
    g.splats["shN"].data[3, 5, 2] = float("inf")
    g.splats["means"].data[4, 0] = -float("inf")
    path = tmp_path / "nf.ply"
    with pytest.warns(RuntimeWarning, match="dropped 3 of 6"):
        assert write_ply(path, g) == 3
    back = read_ply(path)
    keep = [0, 2, 5]
    for key in KEYS:
        assert torch.equal(back.splats[key], g.splats[key][keep])


def test_ply_nonfinite_in_dropped_bands_is_kept(tmp_path: Path) -> None:
    g = random_gaussians(3, 3)
    g.splats["shN"].data[0, 10, 0] = float("nan")  # band 3, not written at degree 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_ply(tmp_path / "d1.ply", g, sh_degree=1) == 3


def test_ply_all_nonfinite_refuses_to_write(tmp_path: Path) -> None:
    g = random_gaussians(2, 0)
    g.splats["opacities"].data[:] = float("nan")
    with pytest.warns(RuntimeWarning), pytest.raises(ExportError, match="nothing to write"):
        write_ply(tmp_path / "x.ply", g)
    assert only_file(tmp_path) == []


def test_ply_accepts_any_path_type_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.ply"
    write_ply(str(path), random_gaussians(2, 0))
    assert len(read_ply(str(path))) == 2


# ---------------------------------------------------------------------------- PLY reading other tools' files


def _other_tool_values(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    names = reference_names(1) + ["red", "foo"]
    return {name: rng.standard_normal(n).astype(np.float32) for name in names}


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_ply_reads_shuffled_order_extra_and_double(tmp_path: Path, byte_order: str) -> None:
    n = 5
    rng = np.random.default_rng(1)
    values = _other_tool_values(n, rng)
    values["red"] = rng.integers(0, 256, n).astype(np.uint8)
    names = [name for name in values if name not in ("nx", "ny", "nz")]  # no normals at all
    rng.shuffle(names)
    types = {"x": "f8", "opacity": "f8", "red": "u1", "foo": "i4", "scale_2": "f8"}
    fields = [(name, types.get(name, "f4")) for name in names]
    values["foo"] = rng.integers(-5, 5, n).astype(np.int32)
    vertices = plyfile_vertices(fields, values, n)
    path = tmp_path / "other.ply"
    PlyData([PlyElement.describe(vertices, "vertex")], byte_order=byte_order).write(str(path))

    g = read_ply(path)
    assert len(g) == n and g.sh_degree == 1
    for i, axis in enumerate("xyz"):
        assert np.array_equal(g.splats["means"][:, i].detach().numpy(), values[axis].astype(np.float32))
    assert np.array_equal(g.splats["opacities"].detach().numpy(), values["opacity"])
    assert np.array_equal(g.splats["scales"][:, 2].detach().numpy(), values["scale_2"])
    assert np.array_equal(g.splats["quats"][:, 3].detach().numpy(), values["rot_3"])
    for c in range(3):
        assert np.array_equal(g.splats["sh0"][:, 0, c].detach().numpy(), values[f"f_dc_{c}"])
        for kk in range(3):
            assert np.array_equal(g.splats["shN"][:, kk, c].detach().numpy(), values[f"f_rest_{c * 3 + kk}"])


def test_ply_reads_elements_before_and_after_vertex(tmp_path: Path) -> None:
    g = random_gaussians(4, 0)
    ref = tmp_path / "ref.ply"
    write_ply(ref, g)
    vertex = PlyData.read(str(ref))["vertex"].data
    before = np.array([(1.5, 7), (2.5, 8)], dtype=[("a", "f8"), ("b", "i2")])
    faces = np.empty(2, dtype=[("vertex_indices", "O")])
    faces["vertex_indices"] = [np.array([0, 1, 2], "i4"), np.array([1, 2, 3], "i4")]
    path = tmp_path / "elements.ply"
    elements = [PlyElement.describe(before, "camera"), PlyElement.describe(vertex, "vertex")]
    elements.append(PlyElement.describe(faces, "face"))
    PlyData(elements, comments=["made by another tool"], obj_info=["info"]).write(str(path))
    assert_same(read_ply(path), g)


def test_ply_reads_crlf_header(tmp_path: Path) -> None:
    g = random_gaussians(3, 0)
    write_ply(tmp_path / "lf.ply", g)
    data = (tmp_path / "lf.ply").read_bytes()
    header_len = len(ply_mod.ply_header(3, 0))
    path = tmp_path / "crlf.ply"
    path.write_bytes(data[:header_len].replace(b"\n", b"\r\n") + data[header_len:])
    assert_same(read_ply(path), g)


def test_ply_nonfinite_rows_dropped_on_read(tmp_path: Path) -> None:
    n = 4
    values = _other_tool_values(n, np.random.default_rng(2))
    fields = [(name, "f8" if name == "scale_0" else "f4") for name in reference_names(0)]
    values["opacity"][0] = np.nan
    values["scale_0"] = values["scale_0"].astype(np.float64)
    values["scale_0"][2] = 1e300  # finite double, inf as float32
    path = tmp_path / "nan.ply"
    PlyData([PlyElement.describe(plyfile_vertices(fields, values, n), "vertex")]).write(str(path))
    with pytest.warns(RuntimeWarning, match="dropped 2 of 4"):
        g = read_ply(path)
    assert len(g) == 2
    assert np.array_equal(g.splats["means"][:, 0].detach().numpy(), values["x"][[1, 3]])


def test_ply_zero_vertices_reads_as_empty(tmp_path: Path) -> None:
    header = ["ply", "format binary_little_endian 1.0", "element vertex 0"]
    header += [f"property float {name}" for name in reference_names(0)] + ["end_header"]
    path = tmp_path / "zero.ply"
    path.write_bytes(raw_ply(header))
    assert len(read_ply(path)) == 0


# ---------------------------------------------------------------------------- bad PLY files


def _props(names: list[str]) -> list[str]:
    return [f"property float {name}" for name in names]


def _header(count: int | str = 1, fmt: str = "binary_little_endian", props: list[str] | None = None) -> list[str]:
    props = [f"property float {name}" for name in reference_names(0)] if props is None else props
    return ["ply", f"format {fmt} 1.0", f"element vertex {count}", *props, "end_header"]


BAD_PLY_CASES = {
    "empty": (b"", ["empty"]),
    "not_ply": (b"hello world\nthis is text\n", ["not a PLY"]),
    "binary_junk": (bytes(range(256)) * 4, ["not a PLY"]),
    "ascii": (raw_ply(_header(fmt="ascii"), b"0 " * 17 + b"\n"), ["ASCII", "not supported", "binary"]),
    "unknown_format": (raw_ply(_header(fmt="binary_middle_endian")), ["binary_middle_endian"]),
    "no_format": (raw_ply([line for line in _header() if not line.startswith("format")]), ["format"]),
    "no_end_header": (raw_ply(_header()[:-1]), ["end_header"]),
    "no_end_header_no_newline": (b"ply\nformat binary_little_endian 1.0\nelement vertex 1", ["end_header"]),
    "point_cloud": (
        raw_ply(_header(props=[f"property float {a}" for a in "xyz"] + ["property uchar red"]), bytes(13)),
        ["f_dc_0", "opacity", "scale_0", "rot_3"],
    ),
    "missing_some": (
        raw_ply(_header(props=[f"property float {n}" for n in reference_names(0) if n not in ("rot_2", "f_dc_1")])),
        ["rot_2", "f_dc_1"],
    ),
    "list_in_vertex": (
        raw_ply(_header(props=[f"property float {n}" for n in reference_names(0)] + ["property list uchar int idx"])),
        ["list"],
    ),
    "unknown_type": (raw_ply(_header(props=["property float128 x"])), ["float128"]),
    "half_type": (raw_ply(_header(props=["property half opacity"])), ["half"]),
    "bad_property_line": (raw_ply(_header(props=["property float"])), ["property float"]),
    "property_before_element": (
        raw_ply(["ply", "format binary_little_endian 1.0", "property float x", "end_header"]),
        ["before"],
    ),
    "no_vertex": (raw_ply(["ply", "format binary_little_endian 1.0", "element face 0", "end_header"]), ["vertex"]),
    "bad_count": (raw_ply(_header(count="-3")), ["element vertex -3"]),
    "nonnumeric_count": (raw_ply(_header(count="many")), ["many"]),
    "duplicate_property": (raw_ply(_header(props=["property float x"] * 2)), ["twice"]),
    "bad_f_rest_count": (
        raw_ply(_header(props=_props(reference_names(0) + ["f_rest_0"]))),
        ["1 f_rest"],
    ),
    "f_rest_gap": (
        raw_ply(_header(props=_props(reference_names(0) + [f"f_rest_{i}" for i in range(1, 10)]))),
        ["numbered"],
    ),
    "huge_count": (raw_ply(_header(count=10**12)), ["1000000000000", "max_vertices"]),
    "truncated": (raw_ply(_header(count=3), bytes(17 * 4 * 3 - 5)), ["3 vertices", "204 bytes", "199 bytes"]),
    "header_only": (raw_ply(_header(count=2)), ["2 vertices", "0 bytes"]),
    "list_before_vertex": (
        raw_ply(_header()[:2] + ["element face 1", "property list uchar int vi"] + _header()[2:]),
        ["face"],
    ),
    "unexpected_line": (raw_ply(["ply", "format binary_little_endian 1.0", "bogus line", "end_header"]), ["bogus"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PLY_CASES))
def test_bad_ply_raises_ply_error_naming_file(tmp_path: Path, case: str) -> None:
    data, fragments = BAD_PLY_CASES[case]
    path = tmp_path / f"bad_{case}.ply"
    path.write_bytes(data)
    with pytest.raises(PlyError) as exc_info:
        read_ply(path)
    assert_error(exc_info, path, *fragments)
    assert isinstance(exc_info.value, ExportError) and isinstance(exc_info.value, ValueError)


def test_non_ascii_header_message(tmp_path: Path) -> None:
    path = tmp_path / "latin.ply"
    path.write_bytes(b"ply\ncomment caf\xe9\nend_header\n")
    with pytest.raises(PlyError) as exc_info:
        read_ply(path)
    assert_error(exc_info, path, "non-ASCII")


def test_huge_count_checked_against_file_size_before_allocating(tmp_path: Path) -> None:
    """10^12 vertices with a permissive max_vertices: rejected by the file-size check, naming count and sizes."""
    path = tmp_path / "huge.ply"
    path.write_bytes(raw_ply(_header(count=10**12), bytes(68)))
    with pytest.raises(PlyError) as exc_info:
        read_ply(path, max_vertices=10**13)
    assert_error(exc_info, path, "1000000000000 vertices", str(10**12 * 68), "only 68 bytes")


def test_max_vertices_limit(tmp_path: Path) -> None:
    path = tmp_path / "five.ply"
    write_ply(path, random_gaussians(5, 0))
    with pytest.raises(PlyError) as exc_info:
        read_ply(path, max_vertices=4)
    assert_error(exc_info, path, "5 vertices", "max_vertices=4")
    assert len(read_ply(path, max_vertices=5)) == 5


def test_truncated_real_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.ply"
    write_ply(path, random_gaussians(5, 3))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(PlyError) as exc_info:
        read_ply(path)
    assert_error(exc_info, path, "truncated", "5 vertices")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ply"
    with pytest.raises(PlyError) as exc_info:
        read_ply(path)
    assert_error(exc_info, path, "cannot open")


# ---------------------------------------------------------------------------- .splat


def _splat_example() -> Gaussians:
    """Two hand-made Gaussians; B (volume e^3, opacity 0.6) is more important than A (volume 1, 0.8)."""
    means = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]])
    scales = torch.tensor([[0.0, math.log(2.0), math.log(0.5)], [1.0, 1.0, 1.0]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, -3.0, 0.0, 4.0]])
    opac = torch.tensor([math.log(0.8 / 0.2), math.log(0.6 / 0.4)])
    rgb = torch.tensor([[1.5, -0.2, 0.2], [1.0, 0.0, 0.6]])
    return Gaussians(means, scales, quats, opac, rgb_to_sh0(rgb)[:, None, :], torch.zeros(2, 15, 3))


def test_splat_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "two.splat"
    assert write_splat(path, _splat_example()) == 2
    data = path.read_bytes()
    assert len(data) == 64
    records = [struct.unpack("<6f8B", data[i : i + 32]) for i in (0, 32)]
    e = struct.unpack("<f", struct.pack("<f", math.exp(1.0)))[0]  # exp(1) rounded to float32
    # B first: position, exp(scales), RGBA (255, 0, 153, 153), quat (0, -0.6, 0, 0.8) -> 128, 51, 128, 230
    assert records[0] == (-1.0, 0.0, 0.5, e, e, e, 255, 0, 153, 153, 128, 51, 128, 230)
    # A: scales (1, 2, 0.5), RGB clipped (255, 0, 51), A = 0.8*255 = 204, quat (1, 0, 0, 0) -> 256 clipped to 255
    assert records[1] == (1.0, 2.0, 3.0, 1.0, 2.0, 0.5, 255, 0, 51, 204, 255, 128, 128, 128)


def test_splat_sort_by_volume_times_opacity(tmp_path: Path) -> None:
    n = 6
    log_vol = torch.tensor([0.0, 3.0, -2.0, 1.0, 0.5, -1.0])  # sum of log scales
    opac = torch.tensor([5.0, -4.0, 0.0, 1.0, -1.0, 8.0])
    scales = (log_vol / 3.0)[:, None].repeat(1, 3)
    means = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    g = Gaussians(means, scales, torch.tensor([[1.0, 0, 0, 0]] * n), opac, torch.zeros(n, 1, 3))
    path = tmp_path / "sorted.splat"
    write_splat(path, g)
    importance = torch.exp(log_vol) * torch.sigmoid(opac)
    expected = torch.argsort(importance, descending=True).tolist()
    written = np.frombuffer(path.read_bytes(), dtype="<f4").reshape(n, 8)[:, 0].astype(int).tolist()
    assert written == expected
    assert expected != torch.argsort(torch.sigmoid(opac), descending=True).tolist()  # not opacity alone


def test_splat_huge_scales(tmp_path: Path) -> None:
    """Linear scales beyond float32 are non-finite in the file, so dropped; large finite ones sort right."""
    g = random_gaussians(3, 0)
    g.splats["scales"].data[:] = torch.tensor([[300.0] * 3, [310.0] * 3, [-5.0] * 3])
    g.splats["opacities"].data[:] = 0.0
    path = tmp_path / "big.splat"
    with pytest.warns(RuntimeWarning, match="dropped 2 of 3"):  # exp(300) is inf in float32
        assert write_splat(path, g) == 1
    g.splats["scales"].data[:] = torch.tensor([[20.0] * 3, [25.0] * 3, [-5.0] * 3])
    write_splat(path, g)
    pos = np.frombuffer(path.read_bytes(), dtype="<f4").reshape(3, 8)[:, 0]
    assert pos.tolist() == g.splats["means"][[1, 0, 2], 0].tolist()


def test_splat_round_trip_within_quantisation(tmp_path: Path) -> None:
    n = 200
    g = random_gaussians(n, 0, seed=3)
    g.splats["sh0"].data.copy_(rgb_to_sh0(torch.rand(n, 1, 3)))  # colours inside [0, 1]
    path = tmp_path / "rt.splat"
    write_splat(path, g)
    back = read_splat(path)
    assert len(back) == n and back.sh_degree == 0
    index = {tuple(m.tolist()): i for i, m in enumerate(g.splats["means"])}
    order = [index[tuple(m.tolist())] for m in back.splats["means"]]  # positions are exact
    assert sorted(order) == list(range(n))
    orig = {k: v.detach()[order] for k, v in g.splats.items()}
    assert torch.allclose(back.splats["scales"], orig["scales"], atol=1e-5)
    assert (back.opacities - torch.sigmoid(orig["opacities"])).abs().max() <= 0.5 / 255 + 1e-6
    rgb_err = (back.colors() - (0.5 + SH_C0 * orig["sh0"][:, 0])).abs().max()
    assert rgb_err <= 0.5 / 255 + 1e-6
    q_orig = torch.nn.functional.normalize(orig["quats"], dim=-1)
    assert (back.splats["quats"] - q_orig).abs().max() <= 1.0 / 128 + 1e-6  # 1/128 where +1 clips to 255


def test_splat_opacity_clamped_on_read(tmp_path: Path) -> None:
    g = _splat_example()
    g.splats["opacities"].data[:] = torch.tensor([50.0, -50.0])
    path = tmp_path / "clamp.splat"
    write_splat(path, g)
    back = read_splat(path)
    assert torch.isfinite(back.splats["opacities"]).all()
    assert torch.allclose(back.opacities.sort().values, torch.tensor([1e-4, 1 - 1e-4]), atol=1e-6)


def test_splat_nonfinite_and_zero_quaternion_dropped(tmp_path: Path) -> None:
    g = random_gaussians(5, 3)
    g.splats["sh0"].data[0, 0, 1] = float("nan")
    g.splats["quats"].data[2] = 0.0
    g.splats["shN"].data[3] = float("nan")  # not written to .splat, so harmless
    path = tmp_path / "nf.splat"
    with pytest.warns(RuntimeWarning, match="dropped 2 of 5"):
        assert write_splat(path, g) == 3
    assert path.stat().st_size == 3 * 32


def test_splat_nonfinite_dropped_on_read(tmp_path: Path) -> None:
    path = tmp_path / "nan.splat"
    write_splat(path, _splat_example())
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="dropped 1 of 2"):
        assert len(read_splat(path)) == 1


@pytest.mark.parametrize("size", [0, 1, 31, 33, 65])
def test_bad_splat_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / f"bad_{size}.splat"
    path.write_bytes(bytes(size))
    with pytest.raises(SplatError) as exc_info:
        read_splat(path)
    assert_error(exc_info, path, "empty" if size == 0 else f"size {size} bytes")


# ---------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("name", ["out.ply", "OUT.PLY", "out.splat", "x.Splat"])
def test_export_and_load_by_extension(tmp_path: Path, name: str) -> None:
    g = _splat_example()
    path = tmp_path / name
    assert export_gaussians(path, g) == 2
    assert len(load_gaussians(path)) == 2


def test_export_passes_keywords(tmp_path: Path) -> None:
    export_gaussians(tmp_path / "u.ply", random_gaussians(2, 0), sh_degree=3)
    assert load_gaussians(tmp_path / "u.ply").sh_degree == 3


@pytest.mark.parametrize("name", ["out.obj", "out", "out.ply.bak"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ExportError) as exc_info:
        export_gaussians(path, random_gaussians(2, 0))
    assert_error(exc_info, path, ".ply", ".splat")
    with pytest.raises(ExportError) as exc_info:
        load_gaussians(path)
    assert_error(exc_info, path, ".ply", ".splat")


# ---------------------------------------------------------------------------- atomic writes


def test_atomic_write_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "f.bin"
    atomic_write_bytes(path, b"abc")
    assert path.read_bytes() == b"abc"
    assert only_file(path.parent) == ["f.bin"]


def test_atomic_permissions_follow_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "p.bin", b"x")
    finally:
        os.umask(umask)
    if os.name == "posix":
        assert (tmp_path / "p.bin").stat().st_mode & 0o777 == 0o644


def test_atomic_text_mode(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "t.txt", "w") as f:
        f.write("héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode("utf-8")
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "t.txt", "ab"):
            pass


def test_atomic_open_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.bin"
    path.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path) as f:
            f.write(b"partial new")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old contents"
    assert only_file(tmp_path) == ["keep.bin"]


def test_write_ply_failing_midway_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scene.ply"
    write_ply(path, random_gaussians(3, 0))
    old = path.read_bytes()

    def fail_midway(f, array) -> None:  # noqa: ANN001
        f.write(memoryview(array).cast("B")[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ply_mod, "_write_array", fail_midway)
    with pytest.raises(OSError, match="No space"):
        write_ply(path, random_gaussians(100, 3))
    assert path.read_bytes() == old
    assert only_file(tmp_path) == ["scene.ply"]


def test_failing_replace_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scene.splat"
    write_splat(path, _splat_example())
    old = path.read_bytes()

    def no_replace(src, dst) -> None:  # noqa: ANN001
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic_mod.os, "replace", no_replace)
    with pytest.raises(ExportError) as exc_info:
        write_splat(path, random_gaussians(4, 0))
    assert_error(exc_info, path, "Permission denied")
    assert path.read_bytes() == old
    assert only_file(tmp_path) == ["scene.splat"]


def test_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    path = blocker / "sub" / "out.ply"  # parent cannot be created: 'file' is a file
    with pytest.raises(ExportError) as exc_info:
        write_ply(path, random_gaussians(2, 0))
    assert_error(exc_info, path, "writable")


def test_unwritable_folder_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*args, **kwargs) -> int:  # noqa: ANN002, ANN003
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic_mod.os, "open", deny)
    path = tmp_path / "out.splat"
    with pytest.raises(ExportError) as exc_info:
        write_splat(path, _splat_example())
    assert_error(exc_info, path, "not writable", str(tmp_path))


def test_path_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "dir.ply").mkdir()
    with pytest.raises(ExportError) as exc_info:
        write_ply(tmp_path / "dir.ply", random_gaussians(2, 0))
    assert_error(exc_info, tmp_path / "dir.ply", "folder")


# ---------------------------------------------------------------------------- PLY through plyfile, behind the guards


def test_ply_huge_trailing_element_refused_before_plyfile(tmp_path: Path) -> None:
    """A face element after valid vertices claiming 10^12 rows: refused by the size check, not allocated by plyfile."""
    g = random_gaussians(2, 0)
    write_ply(tmp_path / "ok.ply", g)
    data = (tmp_path / "ok.ply").read_bytes()
    header_len = len(ply_mod.ply_header(2, 0))
    header = data[:header_len].replace(b"end_header\n", b"element face 1000000000000\nproperty list uchar int vi\nend_header\n")
    path = tmp_path / "faces.ply"
    path.write_bytes(header + data[header_len:])
    with pytest.raises(PlyError) as exc_info:
        read_ply(path)
    assert_error(exc_info, path, "element 'face'", "1000000000000 rows", f"only {2 * 17 * 4} bytes follow")


def test_ply_header_plyfile_rejects_is_one_clear_error(tmp_path: Path) -> None:
    """A header the guard lets through but plyfile refuses (format version 2.0) -> one PlyError line naming the file."""
    path = tmp_path / "v2.ply"
    write_ply(path, random_gaussians(2, 0))
    path.write_bytes(path.read_bytes().replace(b"binary_little_endian 1.0", b"binary_little_endian 2.0", 1))
    with pytest.raises(PlyError) as exc_info:
        read_ply(path)
    assert_error(exc_info, path, "plyfile cannot read it", "version")
    assert "\n" not in str(exc_info.value)


def test_ply_written_by_plyfile_reads_back_through_plyfile(tmp_path: Path) -> None:
    """Our file parsed by plyfile directly: same names, float32 values equal to the Gaussians'."""
    g = random_gaussians(6, 1, seed=4)
    path = tmp_path / "g.ply"
    write_ply(path, g)
    v = PlyData.read(str(path))["vertex"]
    assert [p.name for p in v.properties] == reference_names(1)
    assert np.array_equal(v["opacity"], g.splats["opacities"].detach().numpy())
    assert np.array_equal(v["f_rest_4"], g.splats["shN"][:, 1, 1].detach().numpy())  # channel-major: green, band 1
