"""Configs load from YAML, take overrides, and reject bad values by naming the field."""

from __future__ import annotations

import pytest

from aim_core.config import Config, ConfigError, parse_placement


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_typed_sections(tmp_path):
    path = write(tmp_path, "model:\n  num_classes: 174\n  adapter:\n    ratio: 0.125\n")
    cfg = Config.load(path, {"optim.lr": "1e-3", "model.adapter.placement": "top:6",
                             "model.adapter.adaptations": ["spatial", "temporal"]})
    assert cfg.model.num_classes == 174
    assert cfg.model.adapter.ratio == 0.125
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.model.adapter.placement == "top:6"
    assert cfg.model.adapter.adaptations == ["spatial", "temporal"]


def test_round_trip_through_dict():
    cfg = Config.from_dict({"model": {"variant": "timesformer"}})
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("data,field,allowed", [
    ({"model": {"variant": "giant"}}, "model.variant", "aim"),
    ({"model": {"adapter": {"ratio": 0}}}, "model.adapter.ratio", "(0, 4]"),
    ({"model": {"adapter": {"placement": "middle:3"}}}, "model.adapter.placement", "top:K"),
    ({"model": {"adapter": {"adaptations": ["spatial", "motion"]}}}, "model.adapter.adaptations",
     "spatial"),
    ({"model": {"adapter": {"temporal_adapters": 3}}}, "model.adapter.temporal_adapters", "1 or 2"),
    ({"model": {"backbone": {"source": "hub"}}}, "model.backbone.source", "open_clip"),
    ({"model": {"num_frames": "eight"}}, "model.num_frames", "integer"),
    ({"data": {"test_crops": 2}}, "data.test_crops", "1 or 3"),
    ({"data": {"sampler": "random"}}, "data.sampler", "dense"),
    ({"data": {"train_block_mb": 0}}, "data.train_block_mb", "[1, 128]"),
    ({"data": {"train_block_mb": 200}}, "data.train_block_mb", "[1, 128]"),
    ({"optim": {"lr": -1}}, "optim.lr", "positive"),
    ({"optim": {"warmup_epochs": 40, "epochs": 30}}, "optim.warmup_epochs", "[0, epochs=30)"),
    ({"model": {"drop_pth": 0.1}}, "model.drop_pth", "drop_path"),
    ({"modle": {}}, "modle", "model"),
])
def test_bad_values_name_the_field_and_what_is_allowed(data, field, allowed):
    with pytest.raises(ConfigError) as err:
        Config.from_dict(data)
    assert field in str(err.value)
    assert allowed in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        Config.load(tmp_path / "nope.yaml")


def test_a_folder_given_as_the_config_is_named_with_the_files_in_it(tmp_path):
    (tmp_path / "k400.yaml").write_text("model: {num_classes: 400}\n")
    (tmp_path / "ssv2.yaml").write_text("model: {num_classes: 174}\n")
    with pytest.raises(ConfigError, match=r"a folder, not a YAML file \(its YAML files: "
                                          r"k400.yaml, ssv2.yaml\)"):
        Config.load(tmp_path)


def test_overrides_reject_unknown_fields_instead_of_creating_sections():
    cfg = Config()
    assert cfg.with_overrides({"model.adapter.ratio": 0.5}).model.adapter.ratio == 0.5
    assert cfg.model.adapter.ratio == 0.25                     # a copy: the original stays
    for key, message in (("optim.lrr", "optim.lrr: unknown field 'lrr'"),
                         ("sweep.metric", "sweep: unknown field 'sweep'"),
                         ("model.num_classes.x", "model.num_classes is a value, not a section")):
        with pytest.raises(ConfigError, match=message):
            cfg.with_overrides({key: 1})
    with pytest.raises(ConfigError, match="model.adapter.ratio: expected a number in"):
        cfg.with_overrides({"model.adapter.ratio": 9})          # validated like a loaded file


def test_one_value_is_checked_against_its_field_alone():
    from aim_core.config import check_override

    assert check_override("optim.lr", "1e-3") == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="model.variant: expected one of"):
        check_override("model.variant", "giant")


def test_the_cli_reads_key_equals_yaml_value():
    import argparse

    from pipelines.cli import parse_setting

    assert parse_setting("optim.lr=1e-3") == ("optim.lr", "1e-3")   # YAML 1.1: float() later
    assert parse_setting("data.crop_scale=[0.5, 1]") == ("data.crop_scale", [0.5, 1])
    assert parse_setting("run.use_gpu=null") == ("run.use_gpu", None)
    with pytest.raises(argparse.ArgumentTypeError, match="key.path=value"):
        parse_setting("optim.lr")


@pytest.mark.parametrize("placement,blocks", [
    ("all", list(range(12))),
    ("top:6", [6, 7, 8, 9, 10, 11]),
    ("bottom:6", [0, 1, 2, 3, 4, 5]),
    ("every:2", [1, 3, 5, 7, 9, 11]),
    ([0, 11, 11], [0, 11]),
])
def test_placement_resolves_to_block_indices(placement, blocks):
    assert parse_placement(placement, 12) == blocks


def test_placement_beyond_the_backbone_is_an_error():
    with pytest.raises(ConfigError, match="13 blocks of 12"):
        parse_placement("top:13", 12)
    with pytest.raises(ConfigError, match=r"\[12\] out of range"):
        parse_placement([12], 12)


def test_base_files_are_merged_section_by_section(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  num_classes: 400\n  num_frames: 8\noptim:\n  epochs: 30\n")
    child = write(tmp_path, "_base_: base.yaml\nmodel:\n  num_frames: 16\n")
    cfg = Config.load(child)
    assert (cfg.model.num_classes, cfg.model.num_frames, cfg.optim.epochs) == (400, 16, 30)


@pytest.mark.parametrize("text,message", [
    ("", "cfg.yaml: the file is empty"),
    ("# only a comment\n", "cfg.yaml: the file is empty"),
    ("optim:\n  lr: 1e-3\n  lr: 3e-4\n", r"cfg.yaml:3:3: duplicate key 'lr' \(first given on line 2\)"),
    ("optim: {lr: 1e-3\n", r"cfg.yaml:2:1: "),
    ("model:\n\tnum_classes: 3\n", r"cfg.yaml:2:1: found character '\\t'"),
    ("_base_: 3\n", "_base_: expected a file name or a list of file names, got 3"),
    ("_base_: [base.yaml, {a: 1}]\n", "_base_: expected a file name"),
    ("- model\n- optim\n", "the top level must be a mapping of sections"),
])
def test_unusable_config_files_are_one_line_errors_naming_the_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        Config.load(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_a_config_that_is_not_utf8_says_so(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 16 is 0xe9\)"):
        Config.load(path)
