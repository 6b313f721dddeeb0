"""The data a run read, as MLflow dataset inputs: they show under the run's Datasets, digest and
split sizes beside the scores, and runs can be searched by them.

Two inputs per run: the whole set (context ``training``; digest: the manifest's for a prepared set,
see :mod:`pipelines.data.identity`) and its validation split (context ``validation``; digest: of
the videos the numbers were measured on). The set's digest is also the run tag
``dataset_digest``, which registered model versions copy.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from pipelines.data.identity import DataIdentity

DIGEST_TAG = "dataset_digest"


class VideoDataSet(MetaDataset):
    """A data set logged by name, digest and profile only: the videos stay where they are."""

    def __init__(self, root: str, name: str, digest: str, profile: dict[str, Any]):
        with warnings.catch_warnings():   # a local path fits several equivalent source kinds
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(root)
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def log_data_identity(identity: DataIdentity) -> None:
    """Log both inputs and the digest tag to the active run."""
    profile = {"kind": identity.kind, "classes": identity.classes,
               **{f"{s}_videos": n for s, n in identity.split_sizes.items()},
               **{f"{s}_digest": d for s, d in identity.split_digests.items()}, **identity.profile}
    whole = VideoDataSet(identity.root, identity.name, identity.digest, profile)
    val = VideoDataSet(identity.root, f"{identity.name}:val", identity.split_digests["val"],
                       {"kind": identity.kind, "videos": identity.split_sizes["val"],
                        "of": identity.digest})
    mlflow.log_input(whole, context="training")
    mlflow.log_input(val, context="validation")
    mlflow.set_tag(DIGEST_TAG, identity.digest)
