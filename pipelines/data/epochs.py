"""The epoch clock: the one number the decode tasks of an epoch share.

A module of its own, importing only Ray: an actor's process imports the module that defines its
class, and this one would otherwise pay for torch, torchvision and PyAV (several seconds of CPU per
run) to hold an integer. How the clock is used is in :mod:`pipelines.data.clips`.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class EpochClock:
    """The epoch the decode tasks work for."""

    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int:
        return self.epoch
