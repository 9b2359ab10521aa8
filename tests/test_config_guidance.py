"""The guidance as a config class per method (guidance_spec.py): Python and presets say it nested, the
command line keeps today's flat flags, mapped in one table; a preset plus flags equals the same config
built in Python."""

import dataclasses
import json

import pytest

from steinsplat import config
from steinsplat.guidance_spec import GUIDANCE_FLAGS, GUIDANCE_SPECS, SDSSpec, SSDSpec, VSDSpec, flat_options
from steinsplat.pipeline import GenerateConfig, GenerateFlags, RunOptions, run_options

ROOM = "a room with blue walls and a gray floor"


def parse(*argv):
    return config.parse(GenerateConfig, list(argv), prog="t")


def test_a_preset_plus_flags_equals_the_config_built_in_python():
    got = parse("--config", "scene", ROOM, "--ssd-noise", "constant", "--steps", "7", "--estimator", "none")
    preset = config.load_preset(GenerateConfig, "scene")
    want = dataclasses.replace(preset, prompt=ROOM, steps=7,
                               guidance=dataclasses.replace(preset.guidance, noise="constant", estimator="none"))
    assert got == want
    assert got.guidance == SSDSpec(noise="constant", baseline="depth", estimator="none")  # the preset's baseline kept
    assert parse("a red cube", "--guidance", "vsd") == GenerateConfig("a red cube", guidance=VSDSpec())
    assert parse("a red cube") == GenerateConfig("a red cube")  # the defaults agree


def test_every_flag_of_a_method_reaches_its_field():
    values = {"ssd_noise": "constant", "baseline": "normal-pixel", "estimator": "transformers", "estimator_model": "m"}
    assert set(values) == set(GUIDANCE_FLAGS)
    argv = [a for flag, v in values.items() for a in ("--" + flag.replace("_", "-"), v)]
    got = parse("a red cube", *argv).guidance
    assert got == SSDSpec(**{GUIDANCE_FLAGS[f][1]: v for f, v in values.items()})
    # and back: the flags of a config say it again
    flags = GenerateFlags.from_config(GenerateConfig("a red cube", guidance=got))
    assert flags.to_config() == GenerateConfig("a red cube", guidance=got)


@pytest.mark.parametrize("flag, value", [("--ssd-noise", "filter"), ("--baseline", "depth"), ("--estimator", "none"),
                                         ("--estimator-model", "x")])
def test_a_flag_of_another_method_fails_in_one_line_naming_it(flag, value):
    with pytest.raises(config.ConfigError) as exc:
        parse("a red cube", "--guidance", "sds", flag, value)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{flag} is an option of --guidance ssd, not of --guidance sds")


def test_choosing_another_method_drops_the_presets_options_of_the_first():
    got = parse("--config", "scene", ROOM, "--guidance", "sds")  # the preset says baseline: depth for SSD
    assert got.guidance == SDSSpec()
    with pytest.raises(config.ConfigError, match="--baseline is an option of --guidance ssd"):
        parse("--config", "scene", ROOM, "--guidance", "sds", "--baseline", "normal")


def test_presets_say_the_guidance_nested_and_the_old_flat_spelling_still_loads(tmp_path):
    assert config.load_preset(GenerateConfig, "object").guidance == SSDSpec(baseline="none", noise="filter")
    old = tmp_path / "old.yaml"
    old.write_text("prior: shapeworld\nguidance: ssd\nbaseline: depth\nssd_noise: constant\nsteps: 9\n")
    with pytest.warns(FutureWarning, match="flat flags; a preset now says `guidance: {name: ssd"):
        cfg = config.load_preset(GenerateConfig, str(old))
    new = tmp_path / "new.yaml"
    new.write_text("prior: shapeworld\nguidance:\n  name: ssd\n  baseline: depth\n  noise: constant\nsteps: 9\n")
    assert cfg == config.load_preset(GenerateConfig, str(new))
    assert cfg.guidance == SSDSpec(baseline="depth", noise="constant") and cfg.steps == 9


@pytest.mark.parametrize("text, match", [
    ("guidance:\n  name: ssd\n  loud: 1\n", r"guidance\.: unknown key\(s\) \['loud'\]"),
    ("guidance:\n  name: dds\n", "expected a mapping with `name:` one of ssd, sds, vsd"),
    ("guidance:\n  name: ssd\n  noise: loud\n", r"guidance\.noise: expected one of 'filter', 'constant'"),
    ("guidance: ssd\nsteps: 3\nmesh_method: tsdf\nnegative: x\nmodel: m\nvideo: v.gif\n", None),  # flat: loads
])
def test_a_bad_guidance_in_a_preset_is_one_line(tmp_path, text, match):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    if match is None:
        with pytest.warns(FutureWarning):
            assert config.load_preset(GenerateConfig, str(p)).guidance == SSDSpec()
        return
    with pytest.raises(config.ConfigError, match=match):
        config.load_preset(GenerateConfig, str(p))


def test_python_callers_get_the_new_spelling_named():
    with pytest.raises(TypeError, match=r"GenerateConfig.guidance=SDSSpec\(\)"):
        GenerateConfig("a red cube", guidance="sds")
    with pytest.raises(TypeError, match="ssd_noise"):
        GenerateConfig("a red cube", ssd_noise="constant")  # no flat field any more: Python's own message


def test_checkpoints_record_the_flat_options_they_always_did():
    opts = run_options(GenerateConfig("a red cube", guidance=SDSSpec()), "shapeworld")
    assert {k: opts[k] for k in ("guidance", "ssd_noise", "baseline", "estimator", "estimator_model")} == \
        {"guidance": "sds", "ssd_noise": "filter", "baseline": "auto", "estimator": "auto", "estimator_model": None}
    assert flat_options(SSDSpec(noise="constant"))["ssd_noise"] == "constant"


def test_run_json_records_the_guidance_as_a_preset_writes_it():
    from steinsplat.pipeline import config_record

    rec = config_record(GenerateConfig("a red cube", guidance=SSDSpec(baseline="depth")))
    assert rec["guidance"] == {"name": "ssd", "noise": "filter", "baseline": "depth", "estimator": "auto",
                               "estimator_model": None}
    json.dumps(rec)
    assert config.union_member("guidance", rec["guidance"], GUIDANCE_SPECS) == SSDSpec(baseline="depth")


def test_the_flags_and_the_config_share_every_other_field():
    shared = {f.name for f in dataclasses.fields(RunOptions)}
    assert {f.name for f in dataclasses.fields(GenerateConfig)} == shared | {"guidance"}
    assert {f.name for f in dataclasses.fields(GenerateFlags)} == shared | {"guidance", *GUIDANCE_FLAGS}


def test_the_flags_show_the_defaults_build_guidance_uses():
    import typing

    from steinsplat.pipeline import build_guidance  # noqa: F401 (the estimator_model default lives there)

    hints = typing.get_type_hints(GenerateFlags, include_extras=True)
    for flag, (_, field) in GUIDANCE_FLAGS.items():
        hint = next(m.help_behavior_hint for m in typing.get_args(hints[flag])[1:] if hasattr(m, "help_behavior_hint"))
        default = getattr(SSDSpec(), field)
        assert hint == f"(default: {default if default is not None else 'depth-anything/Depth-Anything-V2-Small-hf'})"


def test_library_messages_name_the_nested_fields_and_the_cli_says_them_as_flags():
    from steinsplat.cli import as_flags

    assert as_flags('GenerateConfig.guidance.estimator="none", or GenerateConfig.guidance=SDSSpec()') == \
        "--estimator none, or --guidance sds"
    assert as_flags("GenerateConfig.guidance.noise filter (now constant)") == "--ssd-noise filter (now constant)"
