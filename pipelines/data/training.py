"""The data a training run reads: its two Ray datasets, the epoch clock, the class names, and the
reports of what was left out, in stream and parquet modes alike.

- ``stream``: every readable video once per epoch, a fresh temporal sample and augmentation each
  time (:func:`pipelines.data.clips.training_dataset`);
- ``parquet``: the clips stored by ``aim-video ingest``, augmented afresh each epoch
  (:func:`pipelines.data.clips.shard_training_dataset`).

Validation is the test views of the val split either way. Both datasets go to the
``TorchTrainer`` with :class:`EveryRowOnce`, which splits them across the workers without dropping
rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import ray.train

from aim_core.annotations import AnnotationError
from aim_core.config import Config

from pipelines import console
from pipelines.data import clips, shards
from pipelines.data.epochs import EpochClock
from pipelines.data.identity import DataIdentity, shards_identity, stream_identity
from pipelines.data.scan import read_videos
from pipelines.runtime import on_this_node


class EveryRowOnce(ray.train.DataConfig):
    """Ray Train's split of every dataset across the workers (one streaming split per dataset,
    locality-aware), but with ``equal=False``.

    Ray Train's default split (``equal=True``) evens the workers' row counts by dropping up to
    ``num_workers - 1`` rows an epoch: a training video left out of its epoch and, worse, a
    validation view left out of the accuracy reported for the run. Here every row reaches one
    worker; shares then differ by up to a block, and the training step keeps the workers in step
    (:meth:`pipelines.train.worker.Step.epoch`) while evaluation gathers per-video sums.
    """

    def configure(self, datasets: dict[str, ray.data.Dataset], world_size: int,
                  worker_handles: Any, worker_node_ids: list[str] | None, **kwargs: Any
                  ) -> list[dict[str, Any]]:
        hints = worker_node_ids if self._enable_shard_locality else None
        shards: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            ds = dataset.copy(dataset)
            if ds.name is None:
                ds.set_name(name)
            ds.context.execution_options = self._resolve_execution_options(name)
            for rank, split in enumerate(ds.streaming_split(world_size, equal=False,
                                                            locality_hints=hints)):
                shards[rank][name] = split
        return shards


@dataclass
class TrainingData:
    datasets: dict[str, ray.data.Dataset]     # "train" and "val", split across the workers
    clock: Any                                # the EpochClock actor the decode tasks read
    class_names: list[str]
    train_clips: int                          # per epoch: the steps per epoch follow from it
    train_videos: list[dict[str, Any]]        # the videos trained on (data-fraction studies)
    reports: dict[str, dict[str, Any]]        # ingest reports by split
    identity: DataIdentity                    # name, digest and split sizes, for MLflow


def training_data(cfg: Config) -> TrainingData:
    """Scan (stream) or store (parquet) both splits, report them, and build the datasets."""
    clock = EpochClock.options(**on_this_node()).remote()   # a node lost spares it
    if cfg.data.mode == "parquet":
        return _from_shards(cfg, clock)
    train, class_map, train_report = read_videos(cfg, "train")
    val, _, val_report = read_videos(cfg, "val", class_map)
    for report in (train_report, val_report):
        console.say(report.summary())
    if not train:
        raise AnnotationError(f"data.root: no readable training video under {cfg.data.root} "
                              f"(see the ingest report above)")
    return TrainingData({"train": clips.training_dataset(cfg, train, clock),
                         "val": clips.evaluation_dataset(cfg, val)}, clock, class_map.names,
                        len(train), train, {"train": train_report.to_dict(),
                                            "val": val_report.to_dict()},
                        stream_identity(cfg, class_map.names, {"train": train, "val": val}))


def _from_shards(cfg: Config, clock: Any) -> TrainingData:
    out = shards.default_output_dir(cfg)
    folders = {split: shards.materialize(cfg, split, out) for split in ("train", "val")}
    reports = {split: shards.read_report(folder) for split, folder in folders.items()}
    for report in reports.values():
        console.say(report.summary())
    stored = {split: shards.read_shards(folder) for split, folder in folders.items()}
    class_map = shards.load_class_map(out)
    plans = {split: shards.read_plan(folder) for split, folder in folders.items()}
    train_clips = reports["train"].clips or 0
    return TrainingData({"train": clips.shard_training_dataset(cfg, stored["train"], train_clips,
                                                               clock),
                         "val": clips.shard_evaluation_dataset(cfg, stored["val"])}, clock,
                        class_map.names, train_clips, [],
                        {split: r.to_dict() for split, r in reports.items()},
                        shards_identity(cfg, class_map.names, plans))
