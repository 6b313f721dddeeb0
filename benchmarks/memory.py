"""Peak memory of live tensors on any device, the CPU included.

CUDA has ``torch.cuda.max_memory_allocated``; the CPU has no allocator statistics, and the resident
set size counts whatever the C heap keeps after tensors are freed (it differed by up to 1 GiB
between two models with the same tensors here). This mode records every storage an op creates and
forgets it when the storage is freed, so its peak is the CPU analogue of ``max_memory_allocated``:
the bytes of tensors alive at once, independent of the allocator.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


class LiveTensorPeak(TorchDispatchMode):
    """Tracks the bytes of tensor storages created while active; ``peak`` is their maximum.

    Tensors that exist before (weights, optimizer state, inputs) are passed as ``existing``: ops
    that write into them in place (the optimizer step) must not count them as new memory.
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, int] = {}
        self._existing = {t.untyped_storage().data_ptr() for t in existing}

    def _freed(self, key: int, nbytes: int) -> None:
        if self._tracked.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
            if nbytes == 0 or key in self._tracked or key in self._existing:
                continue
            self._tracked[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            # Python storage objects live exactly as long as the storage: the finaliser runs on free
            weakref.finalize(st, self._freed, key, nbytes)
        return out
