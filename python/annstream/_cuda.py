"""The CUDA transfer path of annstream.Loader(device="cuda").

The C loader gathers each batch into its own slot buffers. With a CUDA device those slots are
pinned (page-locked) once, when a slot is allocated or grows, through the CUDA runtime that torch
loaded (``cudaHostRegister``, called from the loader's C threads; see ``ans_host_pinning`` in
annstream.h). A batch then goes to the GPU with one asynchronous copy per buffer, straight out of
the slot: no staging copy on the host.

:class:`DeviceFeed` runs those copies one batch ahead of the consumer on a copy stream of its own,
so that batch k+1 crosses PCIe while the model works on batch k. A slot goes back to the C loader
only once the copy out of it has completed (its CUDA event), never while the GPU may still read it.
"""

from __future__ import annotations

import collections
import ctypes
import os
import warnings
from typing import Any

import numpy as np

from ._loader import _csr_tensor  # _cuda is imported by _loader only once that is loaded

__all__ = ["DeviceFeed", "cudart_pinning", "resolve_device"]


def resolve_device(torch: Any, device: Any):
    """``device`` as a torch.device with an index (cuda) or None for the CPU; raises ValueError for
    what torch cannot parse or kinds other than cpu / cuda, RuntimeError when CUDA is unusable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device {device!r} is not a torch device: {e}") from None
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu' or a CUDA device, not {str(dev)!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(dev)!r}: torch cannot use CUDA here (torch.cuda.is_available() is False)"
        )
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(
            f"device={str(dev)!r}: there are {torch.cuda.device_count()} CUDA devices"
        )
    return torch.device("cuda", index)


def _cudart_library() -> ctypes.CDLL | None:
    """The libcudart this process already loaded (torch's), else one the loader can find."""
    paths = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                name = line.rsplit(None, 1)[-1] if "libcudart" in line else ""
                if os.path.basename(name).startswith("libcudart.so") and name not in paths:
                    paths.append(name)
    except OSError:
        pass
    for name in [*paths, "libcudart.so.13", "libcudart.so.12", "libcudart.so"]:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if all(hasattr(lib, f) for f in ("cudaSetDevice", "cudaHostRegister",
                                         "cudaHostUnregister")):
            return lib
    return None


def cudart_pinning(torch: Any, device) -> tuple[int, int, int, int] | None:
    """(cudaSetDevice, cudaHostRegister, cudaHostUnregister addresses, device index) for the C
    loader's ``pin`` argument, or None (with a warning) when no CUDA runtime library can be found:
    batches are then copied from pageable memory, which is correct but slower."""
    torch.cuda.init()
    lib = _cudart_library()
    if lib is None:
        warnings.warn(
            "annstream: libcudart was not found in this process, so the loader's batch memory "
            "is not pinned; copies to the GPU go through pageable memory (slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None

    def addr(fn):
        return ctypes.cast(fn, ctypes.c_void_p).value

    return (addr(lib.cudaSetDevice), addr(lib.cudaHostRegister), addr(lib.cudaHostUnregister),
            int(device.index))


class _Staged:
    __slots__ = ("fmt", "shape", "gpu", "event", "keep", "obs")

    def __init__(self, fmt, shape, gpu, event, keep, obs):
        self.fmt, self.shape, self.gpu, self.event, self.keep, self.obs = (
            fmt, shape, gpu, event, keep, obs)


class DeviceFeed:
    """Copies C batches to a CUDA device one batch ahead of the consumer.

    ``stage(batch)`` issues the asynchronous copies of a C batch on the feed's copy stream and
    records an event; ``finish(staged)`` makes the consumer's current stream wait for that event
    and returns the batch dict of device tensors. The C batch (``keep``) is held until its event has
    completed; at most ``max_inflight`` finished batches wait for theirs before the host blocks.
    """

    def __init__(self, torch, device, *, densify_on_device: bool, return_index: bool,
                 obs_frame, max_inflight: int = 2) -> None:
        self.torch = torch
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self.densify = densify_on_device
        self.return_index = return_index
        self.obs_frame = obs_frame
        self.max_inflight = max_inflight
        self.inflight: collections.deque = collections.deque()

    def stage(self, batch) -> _Staged:
        torch = self.torch
        fmt, shape, dtype, index_dtype, data, indices, indptr, rows = batch.parts()
        index = np.frombuffer(rows, dtype=np.int64) if rows is not None else None
        cpu = [torch.from_numpy(np.frombuffer(data, dtype=dtype))]
        if fmt != "dense":
            cpu.append(torch.from_numpy(np.frombuffer(indptr, dtype=index_dtype)))
            cpu.append(torch.from_numpy(np.frombuffer(indices, dtype=index_dtype)))
        if self.return_index:
            cpu.append(torch.from_numpy(index))
        obs = self.obs_frame.iloc[index] if self.obs_frame is not None else None
        event = torch.cuda.Event()
        with torch.cuda.stream(self.stream):
            gpu = [t.to(self.device, non_blocking=True) for t in cpu]
            event.record(self.stream)
        return _Staged(fmt, tuple(shape), gpu, event, (batch, cpu), obs)

    def finish(self, s: _Staged) -> dict:
        torch = self.torch
        cur = torch.cuda.current_stream(self.device)
        cur.wait_event(s.event)
        for t in s.gpu:
            t.record_stream(cur)  # the allocator must not reuse them before cur is done with them
        if s.fmt == "dense":
            X = s.gpu[0].view(s.shape)
        else:
            X = _csr_tensor(torch, s.gpu[1], s.gpu[2], s.gpu[0], s.shape)
            if self.densify:
                X = X.to_dense()
        index = s.gpu[-1] if self.return_index else None
        self.inflight.append((s.event, s.keep))
        s.keep = None
        self._reap()
        return {"X": X, "obs": s.obs, "index": index}

    def _reap(self) -> None:
        q = self.inflight
        while q and (len(q) > self.max_inflight or q[0][0].query()):
            event, _ = q.popleft()
            event.synchronize()

    def drain(self, staged: _Staged | None = None) -> None:
        """Wait for every copy still in flight (the staged one too) and let their C batches go."""
        if staged is not None and staged.keep is not None:
            staged.event.synchronize()
            staged.keep = None
        while self.inflight:
            event, _ = self.inflight.popleft()
            event.synchronize()
