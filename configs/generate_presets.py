"""Write the dataset x backbone x frames presets on top of the files in base/.

Run after editing base/: ``python configs/generate_presets.py``.
"""

from pathlib import Path

HERE = Path(__file__).parent
DATASETS = {"k400": "kinetics400", "k700": "kinetics700", "ssv2": "ssv2", "diving48": "diving48"}
BACKBONES = {"vitb16": "clip_vitb16", "vitl14": "clip_vitl14"}
INTERVAL = {8: 16, 16: 8, 32: 4}  # Kinetics dense sampling, appendix A.1 (ignored by uniform)

for short, dataset in DATASETS.items():
    for bb, backbone in BACKBONES.items():
        for frames, interval in INTERVAL.items():
            name = f"{short}_{bb}_{frames}f"
            (HERE / f"{name}.yaml").write_text(
                f"# {dataset}, CLIP {bb}, {frames} frames (written by generate_presets.py)\n"
                f"_base_: [base/{backbone}.yaml, base/{dataset}.yaml]\n"
                f"model:\n  num_frames: {frames}\n"
                f"data:\n  frame_interval: {interval}\n"
                f"run:\n  name: {name}\n")
