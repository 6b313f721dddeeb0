"""``aim-video recipe``: what a preset resolves to, printed for the people who reproduce it."""

from __future__ import annotations

from pipelines.cli import main


def recipe(capsys, preset: str, *extra: str) -> dict[str, str]:
    """The printed lines by their heading (``test``, ``augment``, ``group 1`` ...); a line that
    starts with blanks continues the heading above it."""
    assert main(["recipe", f"configs/{preset}.yaml", *extra]) == 0
    lines: dict[str, str] = {}
    key = ""
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  group"):
            key = line.split(":")[0].strip()
        elif not line.startswith(" "):
            key = line.split()[0]
        lines[key] = lines.get(key, "") + line
    return lines


def test_vitl14_k400_recipe_shows_the_groups_the_schedule_and_the_lighting(capsys) -> None:
    out = recipe(capsys, "k400_vitl14_8f")
    assert "3 clips x 1 crop of 8 frames, dense, every 16 frames" in out["test"]
    assert "PCA lighting std 0.1" in out["augment"] and "horizontal flip p 0.5" in out["augment"]
    assert "from 0.1 x lr" in out["schedule"] and " 0: 3.00e-05," in out["schedule"]
    assert " 2.5: 2.97e-04," in out["schedule"]            # the epoch-2 cosine value: warm-up done
    assert out["group 1"].startswith("  group 1: lr 3.0e-04  wd 0.05  2 tensors 0.41M: head")
    assert out["group 2"].startswith("  group 2: lr 3.0e-05  wd 0.05")
    assert "ln_post" in out["group 2"] and "t_adapter 12.61M" in out["group 2"]


def test_ssv2_recipe_shows_imgaugs_flip_and_the_two_temporal_adapters(capsys) -> None:
    out = recipe(capsys, "ssv2_vitl14_8f")
    assert "2 temporal adapter(s)" in out["model"]
    assert "(the released rule)" in out["sampling"] and "1 clip x 3 crops" in out["test"]
    assert "no flip, imgaug RandAugment 4 of 18 ops at m7 of 30" in out["augment"]
    assert "its own flip p 0.5" in out["augment"]
    assert "50.46M" in out["group 2"]                        # with the head: the paper's 50M


def test_recipe_follows_overrides_and_our_decay_rule(capsys) -> None:
    out = recipe(capsys, "k700_vitb16_8f", "--set", "optim.no_weight_decay=1d_and_embeddings",
                 "--set", "data.rand_augment=rand-m7-n4")
    assert "3 clips x 3 crops" in out["test"]
    assert "torchvision RandAugment 4 ops at m7 of 10" in out["augment"]
    assert "wd 0 " in out["group 2"] and "temporal_embedding" in out["group 2"]


def test_recipe_reports_a_bad_value_by_field(capsys) -> None:
    args = ["recipe", "configs/ssv2_vitb16_8f.yaml", "--set", "data.rand_augment=official"]
    assert main(args) == 2
    assert "data.rand_augment: expected" in capsys.readouterr().err
