"""The CUDA transfer path: Loader(device=...), pinned batch slots (the C loader's ans_host_pinning
through the extension's cudart trampolines) and pin_memory=True.

The first tests run anywhere: parameter checks, and the pinning plumbing driven by stand-in
"cudart" functions made with ctypes (they record every call). The tests marked needs_cuda run on a
machine with a CUDA device and compare every device batch with the CPU loader's batch of the same
seed, byte for byte.
"""

from __future__ import annotations

import ctypes
import threading
import warnings

import numpy as np
import pytest
from test_loader import CATS, N_VARS, data, loader, make_adata, write  # noqa: F401 (data: fixture)

import annstream
from annstream import _core

try:
    import torch
except Exception:  # noqa: BLE001
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
HAVE_CUDA = torch is not None and torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device (torch.cuda)")

def dense_of(X) -> np.ndarray:
    X = X.cpu()
    return (X.to_dense() if X.layout == torch.sparse_csr else X).numpy()


# --------------------------------------------------------------------------------------------------
# anywhere


@needs_torch
def test_device_parameter_errors():
    missing = "/nonexistent/annstream/store.zarr"  # checked before any I/O
    with pytest.raises(ValueError, match="output='torch'"):
        annstream.Loader(missing, device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        annstream.Loader(missing, output="torch", device="banana")
    with pytest.raises(ValueError, match="'cpu' or a CUDA device"):
        annstream.Loader(missing, output="torch", device="meta")
    if not HAVE_CUDA:
        with pytest.raises(RuntimeError, match="is_available"):
            annstream.Loader(missing, output="torch", device="cuda")
    else:
        with pytest.raises(ValueError, match="CUDA devices"):
            annstream.Loader(missing, output="torch", device=f"cuda:{torch.cuda.device_count()}")


@needs_torch
def test_device_cpu_is_the_plain_torch_loader(data):
    _, paths, _ = data
    a = [b["X"].to_dense() for b in loader(paths, output="torch", device="cpu")]
    b = [b["X"].to_dense() for b in loader(paths, output="torch")]
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.device.type == "cpu"
        assert torch.equal(x, y)


def test_pin_argument_is_checked(data):
    _, paths, _ = data
    stores = [annstream.open(p) for p in paths]
    try:
        cs = [s._core for s in stores]
        with pytest.raises(ValueError, match="null function address"):
            _core.loader(cs, batch_size=16, chunk_size=8, preload_nchunks=4, pin=(0, 1, 2, 0))
        with pytest.raises(TypeError):
            _core.loader(cs, batch_size=16, chunk_size=8, preload_nchunks=4, pin=(1, 2))
        with pytest.raises(ValueError, match="negative device"):
            _core.loader(cs, batch_size=16, chunk_size=8, preload_nchunks=4, pin=(1, 2, 3, -1))
    finally:
        for s in stores:
            s.close()


class FakeCudart:
    """cudaSetDevice / cudaHostRegister / cudaHostUnregister stand-ins (ctypes callbacks, called
    from the loader's C threads) that record what a driver would see."""

    SET = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)
    REG = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint)
    UNREG = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

    def __init__(self, fail_code: int = 0) -> None:
        self.lock = threading.Lock()
        self.live: dict[int, int] = {}
        self.devices: set[int] = set()
        self.flags: set[int] = set()
        self.calls = self.unregs = self.bad = 0
        self.fail_code = fail_code
        self._set = self.SET(self._set_device)
        self._reg = self.REG(self._register)
        self._unreg = self.UNREG(self._unregister)

    def _set_device(self, dev):
        with self.lock:
            self.devices.add(dev)
        return 0

    def _register(self, ptr, size, flags):
        with self.lock:
            self.calls += 1
            if self.fail_code:
                return self.fail_code
            self.flags.add(flags)
            if ptr % 4096 or size % 4096 or any(p < ptr + size and ptr < p + n
                                               for p, n in self.live.items()):
                self.bad += 1
            self.live[ptr] = size
        return 0

    def _unregister(self, ptr):
        with self.lock:
            self.unregs += 1
            if self.live.pop(ptr, None) is None:
                self.bad += 1
        return 0

    def pin(self, device: int):
        def addr(f):
            return ctypes.cast(f, ctypes.c_void_p).value

        return (addr(self._set), addr(self._reg), addr(self._unreg), device)

    def covers(self, buf, nbytes: int) -> bool:
        ptr = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        with self.lock:
            return any(p <= ptr and ptr + nbytes <= p + n for p, n in self.live.items())


def test_pinning_through_the_extension(data):
    """The extension's trampolines: each slot buffer is registered once (page-aligned whole pages,
    portable flag, the device made current first) and unregistered when freed, also for batches
    still held when the C loader is dropped."""
    _, paths, full = data
    import gc

    stores = [annstream.open(p) for p in paths]
    fake = FakeCudart()
    try:
        c = _core.loader([s._core for s in stores], batch_size=16, chunk_size=8, preload_nchunks=4,
                         shuffle=True, seed=3, return_index=True, threads=2, pin=fake.pin(5))
        held, n_rows = [], 0
        for epoch in range(2):
            gen = c.set_epoch(epoch)
            while (b := c.next(gen)) is not None:
                fmt, shape, dtype, idt, data_, indices, indptr, rows = b.parts()
                isz = np.dtype(idt).itemsize
                nnz = memoryview(data_).nbytes // np.dtype(dtype).itemsize
                assert fake.covers(data_, nnz * np.dtype(dtype).itemsize)
                assert fake.covers(indices, nnz * isz)
                assert fake.covers(indptr, (shape[0] + 1) * isz)
                assert fake.covers(rows, shape[0] * 8)
                idx = np.frombuffer(rows, dtype=np.int64)
                import scipy.sparse as sp

                X = sp.csr_matrix((np.frombuffer(data_, dtype=dtype),
                                   np.frombuffer(indices, dtype=idt),
                                   np.frombuffer(indptr, dtype=idt)), shape=shape)
                np.testing.assert_array_equal(X.toarray(), full.X[idx].toarray())
                n_rows += shape[0]
                if epoch == 1 and len(held) < 3:
                    held.append(b)
                del b, data_, indices, indptr, rows, X, idx
        assert n_rows == 2 * full.n_obs
        assert fake.calls > 0 and fake.devices == {5} and fake.flags == {1}
        c.close()
        del c
        gc.collect()
        assert fake.live  # the held batches keep theirs
        held.clear()
        gc.collect()
        assert not fake.live
        assert fake.unregs == fake.calls and fake.bad == 0
    finally:
        for s in stores:
            s.close()


def test_pinning_failure_is_an_error(data):
    _, paths, _ = data
    stores = [annstream.open(p) for p in paths]
    fake = FakeCudart(fail_code=2)  # cudaErrorMemoryAllocation
    try:
        c = _core.loader([s._core for s in stores], batch_size=16, chunk_size=8, preload_nchunks=4,
                         seed=3, pin=fake.pin(0))
        gen = c.set_epoch(0)
        with pytest.raises(MemoryError, match="pinning .* returned 2"):
            c.next(gen)
        c.close()
        assert not fake.live and fake.unregs == 0
    finally:
        for s in stores:
            s.close()


@pytest.fixture
def fake_cuda(monkeypatch):
    """Loader(device="cuda") on a machine without CUDA: torch.cuda's streams and events become
    stand-ins, the "device" is the CPU, and the slot pinning goes to FakeCudart. What this checks
    is annstream's side of the path: the one-batch lookahead, batch counting for resume, densify
    on the device, obs / index, and that every slot is pinned and unpinned."""
    import contextlib

    import annstream._cuda as cu

    class Event:
        def __init__(self):
            self.recorded = False

        def record(self, stream):
            self.recorded = True

        def query(self):
            return self.recorded

        def synchronize(self):
            assert self.recorded

    class Stream:
        def __init__(self, device=None):
            self.waited = 0

        def wait_event(self, ev):
            assert ev.recorded
            self.waited += 1

    current = Stream()
    fake = FakeCudart()
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
    monkeypatch.setattr(cu, "resolve_device", lambda torch_, d: torch.device("cpu"))
    monkeypatch.setattr(cu, "cudart_pinning", lambda torch_, d: fake.pin(0))
    return fake, current


@needs_torch
@pytest.mark.parametrize("cfg", [dict(), dict(densify=True, dtype="float64"),
                                 dict(x="obsm/emb", drop_last=True)])
def test_device_path_with_stand_in_cuda(data, fake_cuda, cfg):
    import gc

    _, paths, _ = data
    fake, current = fake_cuda
    dev = loader(paths, output="torch", device="cuda", return_index=True, obs=["cell_type"], **cfg)
    cpu = loader(paths, output="torch", return_index=True, obs=["cell_type"], **cfg)
    for _ in range(2):
        got, want = list(dev), list(cpu)
        assert len(got) == len(want) == len(dev)
        for g, w in zip(got, want):
            assert g["X"].layout == (torch.strided if cfg else w["X"].layout)
            np.testing.assert_array_equal(dense_of(g["X"]), dense_of(w["X"]))
            np.testing.assert_array_equal(g["index"].numpy(), w["index"].numpy())
            assert g["obs"]["cell_type"].tolist() == w["obs"]["cell_type"].tolist()
    assert current.waited == 2 * len(dev)
    # resume mid-epoch: the batch staged ahead is not counted as yielded
    dev.set_epoch(0)
    it = iter(dev)
    first = [next(it)["index"].numpy().copy() for _ in range(3)]
    state = dev.state_dict()
    assert state["batches_yielded"] == 3
    it.close()
    again = loader(paths, output="torch", device="cuda", return_index=True, obs=["cell_type"],
                   **cfg)
    again.load_state_dict(state)
    rest = [b["index"].numpy().copy() for b in again]
    cpu.set_epoch(0)
    full = [b["index"].numpy() for b in cpu]
    assert len(first) + len(rest) == len(full)
    for a, b in zip(first + rest, full):
        np.testing.assert_array_equal(a, b)
    assert fake.calls > 0
    for ld in (dev, again, cpu):
        ld.close()
    del got, want, g, w, it
    gc.collect()
    assert not fake.live and fake.unregs == fake.calls and fake.bad == 0


@needs_torch
def test_device_path_read_error_after_the_same_batches(data, fake_cuda, tmp_path):
    """A read error surfaces after the batches that came before it, as on the CPU path (the batch
    staged ahead is handed out first)."""
    import anndata as ad
    import zarr

    p = tmp_path / "late_damage.zarr"
    a = make_adata(0, 300, CATS[0], seed=0)
    old = ad.settings.zarr_write_format
    ad.settings.zarr_write_format = 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.write_zarr(p)
            root = zarr.open_group(p, mode="r+", use_consolidated=False)
            del root["X"]
            ad.io.write_elem(root, "X", a.X, dataset_kwargs={"chunks": (64,)})  # many data chunks
            zarr.consolidate_metadata(p)
    finally:
        ad.settings.zarr_write_format = old
    chunks = sorted((f for f in (p / "X" / "data").iterdir() if f.name[0].isdigit()),
                    key=lambda f: int(f.name))
    assert len(chunks) > 4
    last = chunks[-1]
    last.write_bytes(b"\xff" * 16 + last.read_bytes()[16:])

    def count(**kw):
        ld = loader(p, shuffle=False, output="torch", return_index=True, **kw)
        n = 0
        with pytest.raises(annstream.FormatError, match="late_damage.zarr"):
            for b in ld:
                assert b["index"][0].item() == 16 * n
                n += 1
        ld.close()
        return n

    n_cpu = count()
    assert n_cpu > 2
    assert count(device="cuda") == n_cpu


# --------------------------------------------------------------------------------------------------
# on a CUDA device


CONFIGS = [
    dict(),                                             # CSR float32
    dict(densify=True, dtype="float32"),                # densified on the device
    dict(x="obsm/emb"),                                 # dense (n, 2, 3) float64
    dict(x="layers/counts", dtype="float32"),           # dense int32 -> float32 in C
    dict(x="obsm/emb", shuffle=False, drop_last=True),
]


@needs_cuda
@pytest.mark.parametrize("cfg", CONFIGS)
def test_cuda_batches_equal_the_cpu_loader(data, cfg):
    _, paths, full = data
    dev = loader(paths, output="torch", device="cuda", return_index=True, obs=["cell_type"], **cfg)
    cpu = loader(paths, output="torch", return_index=True, obs=["cell_type"], **cfg)
    assert len(dev) == len(cpu)
    for _ in range(2):  # two epochs: slots are recycled
        got = list(dev)
        want = list(cpu)
        assert len(got) == len(want) == len(dev)
        for g, w in zip(got, want):
            assert g["X"].device.type == "cuda" and g["index"].device.type == "cuda"
            if cfg.get("densify"):
                assert g["X"].layout == torch.strided and g["X"].shape == (w["X"].shape[0], N_VARS)
            assert g["X"].dtype == w["X"].dtype
            np.testing.assert_array_equal(dense_of(g["X"]), dense_of(w["X"]))
            np.testing.assert_array_equal(g["index"].cpu().numpy(), w["index"].numpy())
            assert g["obs"]["cell_type"].tolist() == w["obs"]["cell_type"].tolist()
    dev.close()
    cpu.close()


@needs_cuda
def test_cuda_slot_memory_is_pinned(data):
    from annstream._cuda import cudart_pinning, resolve_device

    _, paths, _ = data
    stores = [annstream.open(p) for p in paths]
    try:
        pin = cudart_pinning(torch, resolve_device(torch, "cuda"))
        assert pin is not None, "libcudart not found in a process with CUDA torch"
        c = _core.loader([s._core for s in stores], batch_size=16, chunk_size=8, preload_nchunks=4,
                         seed=1, pin=pin)
        gen = c.set_epoch(0)
        b = c.next(gen)
        _, _, dtype, idt, data_, indices, indptr, _ = b.parts()
        for buf, dt in ((data_, dtype), (indices, idt), (indptr, idt)):
            assert torch.from_numpy(np.frombuffer(buf, dtype=dt)).is_pinned()
        plain = _core.loader([s._core for s in stores], batch_size=16, chunk_size=8,
                             preload_nchunks=4, seed=1)
        pb = plain.next(plain.set_epoch(0))
        assert not torch.from_numpy(np.frombuffer(pb.parts()[4], dtype=dtype)).is_pinned()
        del b, pb, data_, indices, indptr
        c.close()
        plain.close()
    finally:
        for s in stores:
            s.close()


@needs_cuda
def test_cuda_copies_are_ordered_before_the_consumer(tmp_path):
    """Big batches, prefetch 1, and a consumer stream kept busy: a slot reused before its copy
    finished, or a consumer not waiting for the copy, would show up as a batch that differs."""
    import anndata as ad

    rng = np.random.default_rng(0)
    n, d = 6144, 1024
    X = rng.standard_normal((n, d), dtype=np.float32)
    X[:, 0] = np.arange(n)
    p = write(ad.AnnData(X=X), tmp_path / "big.zarr", "zarr3")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        ld = annstream.Loader(p, batch_size=512, chunk_size=64, preload_nchunks=8, seed=5,
                              prefetch=1, output="torch", device="cuda")
        seen = []
        for b in ld:
            torch.cuda._sleep(2_000_000)  # the consumer's stream lags behind the copies
            x = b["X"] * 1.0
            seen.append(x.cpu().numpy())
    rows = np.concatenate([a[:, 0] for a in seen]).astype(np.int64)
    assert sorted(rows.tolist()) == list(range(n))
    for a in seen:
        np.testing.assert_array_equal(a, X[a[:, 0].astype(np.int64)])


@needs_cuda
def test_cuda_resume_mid_epoch(data):
    _, paths, _ = data
    ld = loader(paths, output="torch", device="cuda", return_index=True)
    full = [b["index"].cpu().numpy() for b in ld]
    ld.set_epoch(0)
    it = iter(ld)
    first = [next(it)["index"].cpu().numpy() for _ in range(5)]
    state = ld.state_dict()
    it.close()
    again = loader(paths, output="torch", device="cuda", return_index=True)
    again.load_state_dict(state)
    rest = [b["index"].cpu().numpy() for b in again]
    got = first + rest
    assert len(got) == len(full)
    for a, b in zip(got, full):
        np.testing.assert_array_equal(a, b)


@needs_cuda
def test_cuda_pin_memory_flag(data):
    _, paths, full = data
    for cfg in (dict(), dict(x="obsm/emb")):
        ld = loader(paths, output="torch", pin_memory=True, return_index=True, **cfg)
        n = 0
        for b in ld:
            X = b["X"]
            assert X.is_pinned()
            got = dense_of(X.cuda(non_blocking=True))
            want = (full.X[b["index"].numpy()].toarray() if not cfg
                    else full.obsm["emb"][b["index"].numpy()])
            np.testing.assert_array_equal(got, want)
            n += 1
        assert n == len(ld)


@needs_cuda
def test_cuda_dataloader_workers(data):
    """Workers with the DataLoader's own pin_memory; device= in a worker is a clear error."""
    import multiprocessing as mp

    from torch.utils.data import DataLoader

    _, paths, full = data
    ld = loader(paths, x="obsm/emb", output="torch", return_index=True)
    dl = DataLoader(ld, batch_size=None, num_workers=2, pin_memory=True,
                    multiprocessing_context=mp.get_context("fork"), timeout=120)
    n = 0
    for b in dl:
        assert b["X"].is_pinned()
        np.testing.assert_array_equal(b["X"].cuda().cpu().numpy(),
                                      full.obsm["emb"][b["index"].numpy()])
        n += 1
    assert n > 0
    bad = loader(paths, x="obsm/emb", output="torch", device="cuda")
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        next(iter(DataLoader(bad, batch_size=None, num_workers=1,
                             multiprocessing_context=mp.get_context("spawn"), timeout=120)))
