"""Write the dataset x backbone x frames presets on top of the files in base/.

Run after editing base/ or the tables below: ``python configs/generate_presets.py``.
"""

from pathlib import Path

HERE = Path(__file__).parent
DATASETS = {"k400": "kinetics400", "k700": "kinetics700", "ssv2": "ssv2", "diving48": "diving48"}
BACKBONES = {"vitb16": "clip_vitb16", "vitl14": "clip_vitl14"}
INTERVAL = {8: 16, 16: 8, 32: 4}  # Kinetics dense sampling, appendix A.1 (ignored by uniform)

# What the released configs (taoyang1122/adapt-image-models, configs/recognition/vit/) set for one
# dataset x backbone pair only: section -> YAML lines, each saying which file it follows.
LR_MULT = "lr_mult: {backbone: 0.1}      # paramwise_cfg 'backbone': lr_mult=0.1 in %s"
PAIRS = {
    ("k400", "vitl14"): {
        "data": ["pca_lighting: 0.1             # ColorJitter() (PCA lighting noise) in "
                 "vitclip_large_k400.py"],
        "optim": [LR_MULT % "vitclip_large_k400.py"],
    },
    ("ssv2", "vitl14"): {
        "model": ["adapter:",
                  "  temporal_adapters: 2      # the paper's 50M tunable params need 2; "
                  "vitclip_large_sthv2.py has 1"],
        "optim": [LR_MULT % "vitclip_large_sthv2.py"],
    },
    ("diving48", "vitb16"): {
        "data": ["test_crops: 3                 # ThreeCrop in vitclip_base_diving48.py "
                 "(its README reports 1x1)"],
    },
}


def preset(name: str, dataset: str, backbone: str, frames: int, interval: int,
           pair: dict[str, list[str]]) -> str:
    sections = {"model": [f"num_frames: {frames}"], "data": [f"frame_interval: {interval}"],
                "optim": [], "run": [f"name: {name}"]}
    for section, lines in pair.items():
        sections[section] += lines
    body = "".join(f"{section}:\n" + "".join(f"  {line}\n" for line in lines)
                   for section, lines in sections.items() if lines)
    return (f"# {dataset}, CLIP {backbone}, {frames} frames (written by generate_presets.py)\n"
            f"_base_: [base/{BACKBONES[backbone]}.yaml, base/{dataset}.yaml]\n{body}")


if __name__ == "__main__":
    for short, dataset in DATASETS.items():
        for bb in BACKBONES:
            for frames, interval in INTERVAL.items():
                name = f"{short}_{bb}_{frames}f"
                text = preset(name, dataset, bb, frames, interval, PAIRS.get((short, bb), {}))
                (HERE / f"{name}.yaml").write_text(text)
