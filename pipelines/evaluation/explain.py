"""``aim-video explain``: last-block attention maps of one video, as in the paper's Fig. 4.

Each model sees the video as its own test config prepares it (short-side resize, centre crop,
CLIP normalisation) with its own frame count, so a frozen space-only 8-frame model and a 16-frame
AIM model can be compared on the same video. Which frames: by default ``T`` frames spread evenly
over the whole video (segment middles, as the uniform sampler's test view), so both rows of a
comparison span the same action; with ``frames_from_config`` the first temporal test view of the
model's own sampler, exactly what evaluation feeds it (for dense Kinetics sampling, a window).

Outputs, in ``out_dir``:
- ``<video>_attention.png``: one row per model (frames as columns) with the CLS-to-patch attention
  overlaid, plus a temporal-saliency row for models with temporal attention;
- ``<video>_attention.gif``: the overlaid frames as an animation, models side by side.
Maps are min-max scaled per frame for display (their absolute values are in
:func:`aim_core.attention.cls_attention_maps`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from aim_core.attention import AttentionMaps, cls_attention_maps  # noqa: E402
from aim_core.config import Config  # noqa: E402
from aim_core.inference import Inference, default_device  # noqa: E402
from aim_core.transforms import build_test_transform, to_model_input  # noqa: E402
from aim_core.video import (clip_indices, decode_frames, open_video_source,  # noqa: E402
                            probe_video, uniform_indices)

CMAP = "jet"
OVERLAY_ALPHA = 0.45
GIF_SIDE = 224          # GIF panels are upscaled to this many pixels (tiny models see 32 px)
GIF_FRAME_MS = 400


@dataclass
class Explained:
    """One model's view of the video and what its last block attended to."""

    label: str
    frames: np.ndarray          # uint8 (T, S, S, 3): the centre-cropped frames the model saw
    indices: list[int]          # their positions in the video
    maps: AttentionMaps
    prediction: str             # "class (prob)"


# ----------------------------------------------------------------------------------------------
# Frames and maps
# ----------------------------------------------------------------------------------------------

def frame_indices(cfg: Config, num_video_frames: int, from_config: bool) -> list[int]:
    """Evenly spread segment middles, or the first test view of ``cfg``'s sampler."""
    t = cfg.model.num_frames
    if from_config:
        return clip_indices(cfg.data, num_video_frames, t, train=False)[0]
    return uniform_indices(num_video_frames, t, train=False)


def load_clip(video: str | os.PathLike[str], cfg: Config, from_config: bool = False
              ) -> tuple[np.ndarray, list[int]]:
    """The centre-crop frames uint8 ``(T, S, S, 3)`` a model sees, and their frame indices."""
    with open_video_source(os.fspath(video)) as source:
        indices = frame_indices(cfg, probe_video(source).num_frames, from_config)
        frames = decode_frames(source, indices, short_side=cfg.data.short_side,
                               threads=cfg.data.decode_threads)
    transform = build_test_transform(replace(cfg.data, test_crops=1), cfg.model.image_size)
    return transform(frames)[0].numpy(), indices


def model_label(ref: str, cfg: Config) -> str:
    """``aim (spatial+temporal+joint)`` or ``frozen_space_only``, frames, and where it came from."""
    m = cfg.model
    variant = f"aim ({'+'.join(m.adapter.adaptations) or 'none'})" if m.variant == "aim" \
        else m.variant
    name = ref if ref.startswith(("models:/", "runs:/")) else "/".join(Path(ref).parts[-2:])
    return f"{variant}, {m.num_frames} frames [{name}]"


def describe_prediction(logits: torch.Tensor, class_names: Sequence[str] | None) -> str:
    probs = logits.softmax(dim=-1)
    top = int(probs.argmax())
    name = class_names[top] if class_names else f"class_{top}"
    return f"{name} ({float(probs[top]):.2f})"


def explain_model(model: torch.nn.Module, cfg: Config, class_names: Sequence[str] | None,
                  video: str | os.PathLike[str], label: str, from_config: bool = False
                  ) -> Explained:
    frames, indices = load_clip(video, cfg, from_config)
    inference = Inference.for_config(cfg, next(model.parameters()).device)
    clip = to_model_input(torch.from_numpy(frames)[None].to(inference.device))
    with inference.autocast():  # the precision eval and predict use for this config
        maps = cls_attention_maps(model, clip)
    return Explained(label, frames, indices, maps,
                     describe_prediction(maps["logits"], class_names))


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------

def upsample(maps: torch.Tensor, size: int) -> np.ndarray:
    """``(T, g, g)`` maps to ``(T, size, size)`` in [0, 1], bilinear, min-max scaled per frame."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return ((up - lo) / (hi - lo).clamp_min(1e-12)).numpy()


def overlay(frames: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 ``(T, S, S, 3)`` frames blended with ``(T, S, S)`` [0, 1] heat through the colormap."""
    colours = colormaps[CMAP](heat)[..., :3] * 255.0
    return ((1 - alpha) * frames + alpha * colours).clip(0, 255).astype(np.uint8)


def _rows(explained: Explained) -> list[tuple[str, np.ndarray]]:
    """(title, overlaid frames) rows of one model: spatial, then temporal saliency if any."""
    size = explained.frames.shape[1]
    rows = [(f"{explained.label}\nCLS attention; predicts {explained.prediction}",
             overlay(explained.frames, upsample(explained.maps["spatial"], size)))]
    saliency = explained.maps["temporal_saliency"]
    if saliency is not None:
        rows.append((f"{explained.label}\ntemporal saliency (1 - self-attention over frames)",
                     overlay(explained.frames, upsample(saliency, size))))
    return rows


def attention_figure(explained: Sequence[Explained]) -> Figure:
    """One row per model (and per temporal-saliency map), frames as columns (Fig. 4 layout)."""
    rows = [(row, e) for e in explained for row in _rows(e)]
    cols = max(e.frames.shape[0] for e in explained)
    fig = Figure(figsize=(1.6 * cols + 0.4, 2.0 * len(rows)), layout="constrained")
    subfigs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for subfig, ((title, images), e) in zip(subfigs, rows):
        subfig.suptitle(title, x=0.01, ha="left", fontsize=8)
        for c, ax in enumerate(subfig.subplots(1, cols, squeeze=False)[0]):
            ax.set_axis_off()
            if c < len(images):
                ax.imshow(images[c])
                ax.set_title(f"frame {e.indices[c]}", fontsize=7)
    return fig


def _gif_panel(explained: Explained, step: int, steps: int) -> Image.Image:
    """Frame of ``explained`` shown at animation ``step`` (models with fewer frames hold longer)."""
    t = explained.frames.shape[0]
    k = min(step * t // steps, t - 1)
    size = explained.frames.shape[1]
    image = overlay(explained.frames[k:k + 1], upsample(explained.maps["spatial"][k:k + 1], size))
    panel = Image.fromarray(image[0]).resize((GIF_SIDE, GIF_SIDE), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (GIF_SIDE, GIF_SIDE + 28), "white")
    canvas.paste(panel, (0, 28))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), explained.label.split(" [")[0][:40], fill="black")
    draw.text((4, 14), f"frame {explained.indices[k]}  {explained.prediction}"[:40], fill="black")
    return canvas


def attention_gif(explained: Sequence[Explained], path: str | Path) -> Path:
    """Animated GIF of the overlaid frames, models side by side; as many frames as the longest."""
    steps = max(e.frames.shape[0] for e in explained)
    frames = []
    for step in range(steps):
        panels = [_gif_panel(e, step, steps) for e in explained]
        sheet = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1),
                                  panels[0].height), "white")
        for i, panel in enumerate(panels):
            sheet.paste(panel, (i * (GIF_SIDE + 8), 0))
        frames.append(sheet)
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0,
                   disposal=2)
    return path


def write_pictures(explained: Sequence[Explained], out_dir: str | Path, stem: str
                   ) -> tuple[Path, Path]:
    """``<stem>_attention.png`` and ``<stem>_attention.gif`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{stem}_attention.png"
    attention_figure(explained).savefig(png, dpi=120)
    gif = attention_gif(explained, out / f"{stem}_attention.gif")
    return png, gif


# ----------------------------------------------------------------------------------------------
# aim-video explain
# ----------------------------------------------------------------------------------------------

def run_explain(video: str | os.PathLike[str], model_ref: str, compare_ref: str | None = None,
                out_dir: str | Path = "explain_results", frames_from_config: bool = False
                ) -> dict[str, object]:
    """Explain ``video`` with one or two models; write the pictures and log them to MLflow runs.

    Rows follow the arguments: ``model_ref`` first, ``compare_ref`` below it. Pictures are logged
    (under ``explain/``) to the run of each model that came from MLflow. Returns the paths, the
    per-model predictions and the runs logged to.
    """
    from pipelines.tracking.references import is_mlflow_uri, resolve_model, source_run_id
    from pipelines.tracking.runs import configure, log_file

    refs = [r for r in (model_ref, compare_ref) if r is not None]
    if any(is_mlflow_uri(r) for r in refs):
        configure()  # resolve against $MLFLOW_TRACKING_URI or ./mlflow.db
    device = default_device()
    explained = []
    for ref in refs:
        model, cfg, class_names = resolve_model(ref, device=device)
        explained.append(explain_model(model, cfg, class_names, video, model_label(ref, cfg),
                                       frames_from_config))
        del model
    png, gif = write_pictures(explained, out_dir, Path(os.fspath(video)).stem)
    runs = [run for ref in refs if is_mlflow_uri(ref) and (run := source_run_id(ref))]
    for run in dict.fromkeys(runs):
        for path in (png, gif):
            log_file(path, "explain", run_id=run)
    return {"png": png, "gif": gif, "predictions": {e.label: e.prediction for e in explained},
            "logged_to_runs": list(dict.fromkeys(runs))}
