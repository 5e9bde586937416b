"""Concurrency and lifetime of annstream.Loader (issue 5, item 4).

Several loaders over one store and one path at once from several Python threads; a store closed
under a loader; iterators abandoned mid-epoch; KeyboardInterrupt (a real SIGINT and
_thread.interrupt_main); interpreter exit with live producer threads; batch views that outlive the
loader; producer errors; torch DataLoader workers forked from a parent whose loader threads are
running. Nothing may crash, hang or leak a thread: every wait has a timeout, and an autouse
watchdog dumps the stacks and ends the run if a test hangs anyway.

The stores are written by the real anndata. X is CSR float32 whose column 0 holds (global row + 1),
so every batch says which rows it holds; obsm/emb is dense (n, 2, 3) = global row * 10 + position.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stores import _write_zarr as write_zarr_chunked

import annstream

try:
    import torch as torch_mod
except Exception:  # noqa: BLE001
    torch_mod = None
needs_torch = pytest.mark.skipif(torch_mod is None, reason="torch is not installed")
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="counting native threads needs Linux /proc"
)
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork")
# GCC 12's libasan (the ASan tier, tools/sanitize.sh) does not hold its allocator's locks across
# fork(): a child forked while another thread is inside malloc can block for good inside libasan
# itself (seen in gdb: SizeClassAllocator64::GetFromAllocator in the child's first new thread).
# These tests fork while other threads are busy on purpose; they run in the plain and TSan tiers.
fork_busy_unsafe_runtime = pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="gcc's libasan can deadlock in a child forked while other threads allocate",
)

N_VARS = 10
SIZES = (150, 120, 90)
CONTAINERS = ("zarr2", "zarr3", "h5ad")
SMALL = dict(batch_size=16, chunk_size=8, preload_nchunks=4)
PRODUCER = "annstream-load"  # the name of a loader's producer thread
WAIT = 30  # seconds: any single wait longer than this is a hang

# what must never appear on a subprocess's stderr
CRASH_MARKERS = (
    "Fatal Python error",
    "Segmentation fault",
    "AddressSanitizer",
    "LeakSanitizer",
    "ThreadSanitizer",
    "runtime error:",
    "Exception ignored",
    "terminate called",
    "Aborted",
)


@pytest.fixture(autouse=True)
def watchdog():
    """Last resort against a hang: dump every thread's stack and end the run after 120 s."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def make_adata(offset: int, n: int, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    dense = np.zeros((n, N_VARS), dtype=np.float32)
    dense[:, 0] = np.arange(offset, offset + n) + 1
    mask = rng.random((n, N_VARS - 1)) < 0.3
    dense[:, 1:][mask] = rng.integers(1, 50, mask.sum())
    obs = pd.DataFrame(
        {"label": pd.Categorical(rng.choice(["a", "b", "c"], n))},
        index=[f"cell{offset + i}" for i in range(n)],
    )
    var = pd.DataFrame(index=[f"gene{i}" for i in range(N_VARS)])
    emb = (np.arange(offset, offset + n)[:, None, None] * 10
           + np.arange(6).reshape(1, 2, 3)).astype(np.float64)
    return ad.AnnData(X=sp.csr_matrix(dense), obs=obs, var=var, obsm={"emb": emb})


def write(adata: ad.AnnData, path: Path, container: str) -> Path:
    """h5ad, or zarr with small chunks (16 values per chunk of a 1-D array, 8 rows per chunk of
    a dense one): many chunks per load, so the decoding pools have work to share."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if container == "h5ad":
            adata.write_h5ad(path)
        else:
            fmt = 2 if container == "zarr2" else 3
            with ad.settings.override(zarr_write_format=fmt):
                write_zarr_chunked(adata, path, fmt, sharded=False)
    return path


def read_back(path: Path) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(paths, expected): three stores (zarr v2, zarr v3, h5ad) and anndata's reading of their
    concatenation."""
    root = tmp_path_factory.mktemp("concurrency")
    paths, offset = [], 0
    for i, (n, container) in enumerate(zip(SIZES, CONTAINERS)):
        ext = ".h5ad" if container == "h5ad" else ".zarr"
        paths.append(write(make_adata(offset, n, seed=i), root / f"s{i}{ext}", container))
        offset += n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = ad.concat([read_back(p) for p in paths], merge="same")
    assert full.n_obs == sum(SIZES)
    return paths, full


def loader(sources, **kw) -> annstream.Loader:
    opts = dict(SMALL, seed=11)
    opts.update(kw)
    return annstream.Loader(sources, **opts)


def rows_of(X) -> np.ndarray:
    """Global rows encoded in column 0 of a batch."""
    if torch_mod is not None and isinstance(X, torch_mod.Tensor):
        X = X.to_dense().numpy() if X.layout != torch_mod.strided else X.numpy()
    col = X[:, 0].toarray().ravel() if sp.issparse(X) else np.asarray(X)[:, 0]
    return col.astype(np.int64) - 1


def check_batch(b, full) -> np.ndarray:
    """The batch's rows; asserts its values are anndata's values of those rows."""
    idx = np.asarray(b["index"])
    X = b["X"]
    np.testing.assert_array_equal(rows_of(X), idx)
    np.testing.assert_array_equal(X.toarray(), full.X[idx].toarray())
    return idx.copy()


def check_epoch(rows: list[np.ndarray], n: int) -> None:
    allrows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    assert len(allrows) == n, f"{len(allrows)} rows in the epoch, expected {n}"
    np.testing.assert_array_equal(np.sort(allrows), np.arange(n))  # every row exactly once


def native_threads() -> dict[str, str]:
    """This process's native threads: {tid: name}."""
    found = {}
    for t in Path("/proc/self/task").iterdir():
        try:
            found[t.name] = (t / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            pass
    return found


def settle_threads(expected: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
    """The threads not in ``expected`` once the count has come down to it (threads end
    asynchronously after a join returns to the kernel); returns the extra ones after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        extra = {t: n for t, n in native_threads().items() if t not in expected}
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)


def producers() -> set[str]:
    return {t for t, n in native_threads().items() if n == PRODUCER}


def producers_gone(before, timeout: float = 5.0) -> bool:
    """True once no producer thread beyond ``before`` is left. A joined thread can stay listed
    in /proc for a moment after pthread_join returns: poll briefly instead of looking once."""
    deadline = time.monotonic() + timeout
    while producers() - set(before):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def run_script(code: str, *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a hang fails the test (the child is killed)."""
    try:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the script hung (> {timeout} s); stderr so far:\n{e.stderr}")


def assert_clean_stderr(err: str) -> None:
    for marker in CRASH_MARKERS:
        assert marker not in err, f"{marker!r} on stderr:\n{err}"


def in_threads(fns, timeout: float = WAIT) -> list:
    """Run each fn in its own thread, all at once; their results (or exceptions, re-raised here).
    A thread still running after ``timeout`` fails the test."""
    results: list = [None] * len(fns)
    errors: list = [None] * len(fns)
    start = threading.Barrier(len(fns))

    def run(i, fn):
        try:
            start.wait(timeout)
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a loader thread hung"
    for e in errors:
        if e is not None:
            raise e
    return results


# --------------------------------------------------------------------------------------------------
# several loaders at once


def test_several_loaders_same_store_and_path_concurrently(data):
    paths, full = data
    n = full.n_obs
    stores = [annstream.open(p, threads=2) for p in paths]
    try:
        # over the same open Store objects (sharing their decoding pools) and over the same paths
        # (each loader opening its own stores); own gathering pools and the stores' pools
        loaders = [loader(stores, seed=s, return_index=True, threads=t)
                   for s, t in [(1, 0), (2, 2), (3, 0)]]
        loaders += [loader(paths, seed=s, return_index=True, threads=t)
                    for s, t in [(4, 0), (5, 3)]]
        dense = loader(stores, x="obsm/emb", seed=6, return_index=True, prefetch=1)

        def epochs(ld, k=2):
            def fn():
                out = []
                for _ in range(k):
                    rows = [check_batch(b, full) for b in ld]
                    check_epoch(rows, n)
                    out.append(np.concatenate(rows))
                return out
            return fn

        def dense_epoch():
            rows = []
            for b in dense:
                idx = b["index"]
                np.testing.assert_array_equal(b["X"], full.obsm["emb"][idx])
                rows.append(idx.copy())
            check_epoch(rows, n)
            return np.concatenate(rows)

        got = in_threads([epochs(ld) for ld in loaders] + [dense_epoch])
        # each loader's order is its own (seed, epoch) order, whatever ran beside it
        for ld, (e0, e1) in zip(loaders, got[:-1]):
            assert not np.array_equal(e0, e1)  # the epoch advanced
            alone = loader(paths, seed=ld.seed, return_index=True)
            np.testing.assert_array_equal(np.concatenate([b["index"] for b in alone]), e0)
            alone.close()
        assert len({tuple(e0[:20]) for e0, _ in got[:-1]}) == len(loaders)  # different seeds
        for ld in [*loaders, dense]:
            ld.close()
        assert not any(s.closed for s in stores)  # a loader never closes a store it was given
    finally:
        for s in stores:
            s.close()


def test_one_loader_driven_from_two_threads(data):
    """One thread drives a loader. Two threads iterating the same Loader at once: the iteration
    started last wins and sees every row exactly once; the older one gets RuntimeError ("another
    iteration started") and never takes a batch of the newer stream."""
    paths, full = data
    before = producers()
    ld = loader(paths, return_index=True, prefetch=1)
    outcomes = []
    lock = threading.Lock()

    def drive():
        rows = []
        try:
            for b in ld:
                rows.append(check_batch(b, full))
        except RuntimeError as e:
            assert "another iteration" in str(e), e
            with lock:
                outcomes.append("interrupted")
            return
        check_epoch(rows, full.n_obs)  # a finished pass lost no batch to the other thread
        with lock:
            outcomes.append("done")

    for _ in range(15):
        in_threads([drive, drive])
    assert len(outcomes) == 30 and outcomes.count("done") >= 15, outcomes
    ld.close()
    gc.collect()
    assert producers_gone(before), "a producer thread outlived its closed loader"


@posix_only
@fork_busy_unsafe_runtime
def test_fork_while_other_threads_read(data):
    """fork() while other threads are inside reads of the same stores (an h5ad and a zarr store;
    libhdf5 holds its own lock during a read): the child builds a loader over the inherited
    stores and reads a whole epoch, never finding a lock copied locked."""
    paths, _ = data
    stores = [annstream.open(paths[2], threads=2), annstream.open(paths[0], threads=2)]
    n = SIZES[2] + SIZES[0]
    stop = threading.Event()
    # Whatever a loader imports is imported here first: a fork() while another thread is inside
    # an import leaves the child blocked on that module's import lock (CPython, not annstream).
    loader(stores, seed=0).close()

    def spin(seed):
        ld = loader(stores, seed=seed, threads=2)
        while not stop.is_set():
            for _ in ld:
                if stop.is_set():
                    break
        ld.close()

    readers = [threading.Thread(target=spin, args=(s,), daemon=True) for s in (1, 2)]
    for t in readers:
        t.start()
    failures = []
    try:
        time.sleep(0.1)
        for k in range(150):
            pid = os.fork()
            if pid == 0:  # the child: never returns into pytest
                status = 4
                try:
                    c = loader(stores, seed=k, return_index=True)
                    rows = np.concatenate([b["index"] for b in c])
                    status = 0 if np.array_equal(np.sort(rows), np.arange(n)) else 3
                finally:
                    os._exit(status)
            deadline = time.monotonic() + 10
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    if status != 0:
                        failures.append(f"fork {k}: child exit status {status}")
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    failures.append(f"fork {k}: the child hung")
                    break
                time.sleep(0.002)
            if failures:
                break
    finally:
        stop.set()
        for t in readers:
            t.join(WAIT)
        for s in stores:
            s.close()
    assert not failures, failures
    assert not any(t.is_alive() for t in readers)


@fork_busy_unsafe_runtime
def test_forked_child_reopens_its_stores(data):
    """A Store (and an Element taken from it) used in a forked child opens its path again there:
    the parent's C handles - whose locks a parent thread may hold at the fork - are never touched
    by the child, and using one directly raises RuntimeError instead of risking a hang."""
    paths, _ = data
    store = annstream.open(paths[1], threads=2)
    element = store["X"]
    expected = element.read_rows(np.arange(20)).toarray()
    parent_handle = store._c
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            element.read_rows(np.arange(SIZES[1]))

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        for k in range(20):
            pid = os.fork()
            if pid == 0:
                status = 9
                try:
                    ok = np.array_equal(element.read_rows(np.arange(20)).toarray(), expected)
                    ok &= np.array_equal(store["X"].read_rows(np.arange(20)).toarray(), expected)
                    ok &= len(store.read_obs()) == SIZES[1] and store._c is not parent_handle
                    try:
                        parent_handle.element("X")
                        ok = False
                    except RuntimeError as e:
                        ok &= "forked child" in str(e)
                    status = 0 if ok else 3
                finally:
                    os._exit(status)
            deadline = time.monotonic() + 10
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert status == 0, f"fork {k}: child exit status {status}"
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    pytest.fail(f"fork {k}: the child hung")
                time.sleep(0.002)
    finally:
        stop.set()
        t.join(WAIT)
    assert store._c is parent_handle  # the parent keeps its own handle
    store.close()


# --------------------------------------------------------------------------------------------------
# a store closed under a loader


def test_store_closed_before_iteration(data):
    """The loader holds its own references to what it reads: closing the Store objects it was
    built on does not affect it (no use after free); the store itself is closed for direct use."""
    paths, full = data
    stores = [annstream.open(p, threads=2) for p in paths]
    ld = loader(stores, return_index=True)
    for s in stores:
        s.close()
    assert all(s.closed for s in stores)
    with pytest.raises(ValueError, match="closed"):
        stores[0]["X"]
    for _ in range(2):  # two epochs, the producer restarted in between
        check_epoch([check_batch(b, full) for b in ld], full.n_obs)
    ld.close()


def test_store_closed_mid_epoch(data):
    paths, full = data
    stores = [annstream.open(p, threads=2) for p in paths]
    ld = loader(stores, return_index=True, prefetch=1)
    it = iter(ld)
    rows = [check_batch(next(it), full) for _ in range(3)]
    for s in stores:  # the producer is reading ahead right now
        s.close()
    rows += [check_batch(b, full) for b in it]
    check_epoch(rows, full.n_obs)
    check_epoch([check_batch(b, full) for b in ld], full.n_obs)  # and the next epoch
    ld.close()


def test_store_closed_then_loader_needs_a_new_c_loader(data):
    """A Loader that must build a new C loader (here: a new seed from load_state_dict) over a
    closed store raises a clear ValueError naming the store, not a crash."""
    paths, full = data
    store = annstream.open(paths[0])
    ld = loader(store, return_index=True)
    other = loader(paths[0], seed=99, return_index=True)
    state = other.state_dict()
    state["fingerprint"] = ld.state_dict()["fingerprint"]
    store.close()
    ld.load_state_dict(state)  # a new seed: the C loader is rebuilt on the next iter()
    with pytest.raises(ValueError, match="closed") as excinfo:
        next(iter(ld))
    assert paths[0].name in str(excinfo.value)
    ld.close()
    other.close()


def test_store_closed_from_another_thread_while_iterating(data):
    paths, full = data
    stores = [annstream.open(p, threads=2) for p in paths]
    ld = loader(stores, return_index=True, prefetch=1)
    started = threading.Event()

    def consume():
        rows = []
        for b in ld:
            rows.append(check_batch(b, full))
            started.set()
            time.sleep(0.002)
        return rows

    def closer():
        assert started.wait(WAIT)
        for s in stores:
            s.close()

    rows, _ = in_threads([consume, closer])
    check_epoch(rows, full.n_obs)
    ld.close()


# --------------------------------------------------------------------------------------------------
# abandoned iterators, threads


@needs_proc
def test_abandoned_iterators_leak_no_thread(data):
    paths, full = data

    def cycle():
        store = annstream.open(paths[0], threads=3)
        ld = loader([store, paths[1]], return_index=True, threads=2)
        list(ld)
        ld.close()
        store.close()

    cycle()  # warm up: anything a library starts once per process is started now
    before = native_threads()
    assert producers_gone(before)

    store = annstream.open(paths[0], threads=3)  # 2 decoding threads live with this store
    ld = loader([store, paths[1]], return_index=True, threads=2)  # 1 gathering thread
    for i, b in enumerate(ld):  # break out of a for loop
        check_batch(b, full)
        if i == 2:
            break
    del b
    assert producers_gone(before), "the producer outlived the abandoned loop"
    it = iter(ld)
    next(it)
    assert len(producers() - set(before)) == 1
    del it  # an iterator dropped mid-epoch
    gc.collect()
    assert producers_gone(before)
    it = iter(ld)
    next(it)
    it2 = iter(ld)  # a new epoch started while the old iterator is alive
    check_epoch([check_batch(b, full) for b in it2], SIZES[0] + SIZES[1])
    del it, it2
    gc.collect()
    assert producers_gone(before)
    extra = settle_threads(before, timeout=0.5)
    # only pool threads (named annstream-<k>) may be new: 2 of `store` (threads=3), 1 of the
    # loader's own gathering pool (threads=2), 1 of the store it opened for paths[1] (one thread
    # per CPU, less the caller's, on a machine with 2 or more CPUs)
    assert all(name.startswith("annstream-") and name != PRODUCER for name in extra.values()), extra
    assert len(extra) <= 3 + max(1, (os.cpu_count() or 1)) - 1, extra
    ld.close()
    store.close()
    assert settle_threads(before) == {}, "threads left after everything was closed"


@needs_proc
def test_loader_dropped_without_close(data):
    paths, full = data
    before = native_threads()
    ld = loader(paths, return_index=True, threads=2)
    it = iter(ld)
    check_batch(next(it), full)
    assert producers() - set(before)
    del ld, it  # no close(): the C loader goes with the last reference
    assert settle_threads(before) == {}


@needs_proc
def test_loader_in_a_reference_cycle(data):
    paths, full = data
    before = native_threads()
    ld = loader(paths, return_index=True)
    it = iter(ld)
    check_batch(next(it), full)
    ld.cycle = [ld, it]  # only the cyclic collector can free these
    del ld, it
    assert settle_threads(before) == {}


# --------------------------------------------------------------------------------------------------
# KeyboardInterrupt


def _interrupt_script(paths, body: str) -> str:
    header = (
        "import os, sys, threading, time\n"
        "sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "import annstream\n"
        f"PATHS = {[str(p) for p in paths]!r}\n"
        f"N = {sum(SIZES)}\n"
        "def make(**kw):\n"
        "    opts = dict(batch_size=16, chunk_size=8, preload_nchunks=4, seed=3,\n"
        "                return_index=True)\n"
        "    opts.update(kw)\n"
        "    return annstream.Loader(PATHS, **opts)\n"
    )
    return header + textwrap.dedent(body)


def _sigint_when_ready(code: str, *args: str) -> tuple[subprocess.Popen, str, str, float]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        timer = threading.Timer(WAIT, proc.kill)  # never wait on a hung child forever
        timer.start()
        line = proc.stdout.readline().strip()
        timer.cancel()
        assert line == "iterating", (line, proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no exit {WAIT} s after SIGINT; stderr:\n{err}")
        return proc, out, err, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@posix_only
def test_sigint_uncaught_ends_the_process(data):
    """Ctrl-C while loaders iterate (in the main thread and in a daemon thread), not caught: the
    interpreter exits with KeyboardInterrupt, promptly and cleanly."""
    paths, _ = data
    code = _interrupt_script(paths, """
        def spin():
            ld = make(seed=4, threads=2)
            while True:
                for b in ld:
                    pass
        threading.Thread(target=spin, daemon=True).start()
        ld = make(prefetch=1)
        kept = []
        while True:
            for b in ld:
                if not kept:
                    print("iterating", flush=True)
                kept.append(b["X"])
                del kept[:-20]
    """)
    proc, out, err, took = _sigint_when_ready(code)
    assert proc.returncode in (-signal.SIGINT, 1, 130), (proc.returncode, err)
    assert "KeyboardInterrupt" in err, err
    assert_clean_stderr(err)
    assert took < WAIT


@posix_only
def test_sigint_caught_then_loader_reused(data):
    paths, _ = data
    code = _interrupt_script(paths, """
        ld = make(prefetch=1)
        first = True
        kept = None
        try:
            while True:
                for b in ld:
                    if first:
                        print("iterating", flush=True)
                        first = False
                    kept = (b["X"], b["index"], b["X"].toarray().copy())
        except KeyboardInterrupt:
            pass
        # the held batch is intact; the loader runs a whole new epoch, then closes cleanly
        X, idx, copy = kept
        assert np.array_equal(X.toarray(), copy)
        assert np.array_equal(copy[:, 0].astype(np.int64) - 1, idx)
        rows = np.concatenate([b["index"] for b in ld])
        assert np.array_equal(np.sort(rows), np.arange(N)), "not exactly once"
        ld.close()
        names = [open(f"/proc/self/task/{t}/comm").read().strip()
                 for t in os.listdir("/proc/self/task")]
        assert "annstream-load" not in names, names
        print("recovered", flush=True)
    """)
    proc, out, err, took = _sigint_when_ready(code)
    assert proc.returncode == 0, err
    assert out.strip() == "recovered"
    assert_clean_stderr(err)


@needs_proc
def test_interrupt_main_during_iteration(data):
    """_thread.interrupt_main() from a timer thread: KeyboardInterrupt leaves the loop, the
    producer stops, and the loader works again."""
    import _thread

    paths, full = data
    before = native_threads()
    ld = loader(paths, return_index=True, prefetch=1)
    iterating = threading.Event()

    def fire():
        if iterating.wait(WAIT):
            time.sleep(0.05)
            _thread.interrupt_main()

    timer = threading.Thread(target=fire, daemon=True)
    timer.start()
    deadline = time.monotonic() + WAIT
    seen = 0
    with pytest.raises(KeyboardInterrupt):
        while True:  # until interrupted (the timer always fires once `iterating` is set)
            for b in ld:
                check_batch(b, full)
                seen += 1
                iterating.set()
                assert time.monotonic() < deadline, "interrupt_main never arrived"
    timer.join(WAIT)
    assert seen > 0
    gc.collect()
    assert producers_gone(before), "the producer survived the KeyboardInterrupt"
    state = ld.state_dict()
    ld.load_state_dict(state)  # continue where the interrupt left the epoch
    rest = [check_batch(b, full) for b in ld]
    assert len(rest) == len(ld) - state["batches_yielded"]
    check_epoch([check_batch(b, full) for b in ld], full.n_obs)  # and a whole next epoch
    ld.close()



def test_interrupt_while_next_waits(data):
    """Ctrl-C while next() waits for a batch that is not coming yet (a slow load): the wait is
    interrupted at once instead of when the batch is ready. A C loader in custom-plan mode with no
    plan pushed waits forever; a fallback timer ends its plans after 10 s, so the old behaviour
    (an uninterruptible wait) fails the test instead of hanging it."""
    import _thread

    class NoPlans:
        def plans(self, epoch):
            return iter(())

    paths, _ = data
    ld = annstream.Loader(paths, sampler=NoPlans(), batch_size=16)
    c = ld._make_c(0, 1)
    gen = c.set_epoch(0)
    fired = threading.Event()

    def interrupt():
        time.sleep(0.2)
        fired.set()
        _thread.interrupt_main()

    fallback = threading.Timer(10.0, lambda: c.end_plans(gen))
    fallback.start()
    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            c.next(gen)
    finally:
        fallback.cancel()
    took = time.monotonic() - t0
    assert fired.is_set()
    assert took < 5.0, took
    # the loader is still usable: ending the plans ends the stream
    c.end_plans(gen)
    assert c.next(gen) is None
    c.close()
    ld.close()

# --------------------------------------------------------------------------------------------------
# interpreter exit with live threads


EXIT_SCRIPT = """
mode = sys.argv[1]
stores = [annstream.open(p, threads=3) for p in PATHS]
loaders = [make(), make(seed=5, threads=2), annstream.Loader(stores, batch_size=16, chunk_size=8,
           preload_nchunks=4, seed=6), make(x="obsm/emb", prefetch=4)]
iters = [iter(ld) for ld in loaders]
held = [next(it) for it in iters]  # every producer is running, batches are held

cyc = make()  # a loader mid-epoch that only the cyclic collector could free
cyc_it = iter(cyc)
next(cyc_it)
cyc.self_ref = [cyc, cyc_it]
del cyc, cyc_it

started = threading.Event()
def spin(ld):
    while True:
        for b in ld:
            started.set()
threading.Thread(target=spin, args=(make(seed=7),), daemon=True).start()
threading.Thread(target=spin, args=(annstream.Loader(stores, batch_size=16, chunk_size=8,
                 preload_nchunks=4, seed=8, threads=2),), daemon=True).start()
def finite():
    for b in make(seed=9):
        time.sleep(0.001)
threading.Thread(target=finite).start()  # not a daemon: the exit waits for its epoch
assert started.wait(20)
print("ready", flush=True)
if mode == "exit":
    sys.exit(3)
if mode == "raise":
    raise RuntimeError("boom")
if mode == "osexit":
    sys.stdout.flush()
    os._exit(4)
"""


@posix_only
@pytest.mark.parametrize(("mode", "code"), [("normal", 0), ("exit", 3), ("raise", 1),
                                            ("osexit", 4)])
def test_interpreter_exit_with_live_threads(data, mode, code):
    paths, _ = data
    out = run_script(_interrupt_script(paths, EXIT_SCRIPT), mode)
    assert out.returncode == code, out.stderr
    assert out.stdout.strip() == "ready"
    if mode == "raise":
        assert "RuntimeError: boom" in out.stderr
        assert out.stderr.count("Traceback") == 1, out.stderr
    else:
        assert "Traceback" not in out.stderr, out.stderr
    assert_clean_stderr(out.stderr)


# --------------------------------------------------------------------------------------------------
# views outliving the loader


def test_numpy_views_outlive_the_loader(data):
    paths, full = data
    ld = loader(paths, return_index=True, prefetch=1)
    dense = loader(paths, x="obsm/emb", return_index=True, prefetch=1)
    it, dit = iter(ld), iter(dense)
    b, d = next(it), next(dit)
    X, idx, emb = b["X"], b["index"], d["X"]
    # keep only single parts of a batch: each must keep the whole batch alive
    indices, indptr, data_ = X.indices, X.indptr, X.data
    copies = [a.copy() for a in (X.toarray(), idx, emb, indices, indptr, data_)]
    addresses = {a.__array_interface__["data"][0] for a in (X.data, emb)}
    del b, d, X
    for _ in range(6):  # more batches through the same few slots
        nb, nd = next(it), next(dit)
        # a held buffer is never handed out again
        assert nb["X"].data.__array_interface__["data"][0] not in addresses
        assert nd["X"].__array_interface__["data"][0] not in addresses
    del nb, nd
    ld.close()
    dense.close()
    del ld, dense, it, dit
    gc.collect()
    junk = [np.full(4096, 7.0) for _ in range(64)]  # reuse of freed memory would show here
    again = loader(paths, return_index=True, prefetch=1)
    list(again)
    again.close()
    np.testing.assert_array_equal(emb, copies[2])
    np.testing.assert_array_equal(idx, copies[1])
    np.testing.assert_array_equal(indices, copies[3])
    np.testing.assert_array_equal(indptr, copies[4])
    np.testing.assert_array_equal(data_, copies[5])
    rebuilt = sp.csr_matrix((data_, indices, indptr), shape=copies[0].shape).toarray()
    np.testing.assert_array_equal(rebuilt, copies[0])
    np.testing.assert_array_equal(rebuilt, full.X[copies[1]].toarray())
    np.testing.assert_array_equal(emb, full.obsm["emb"][copies[1]])
    del junk


@needs_torch
def test_torch_views_outlive_the_loader(data):
    paths, full = data
    ld = loader(paths, output="torch", return_index=True, prefetch=1)
    dense = loader(paths, x="obsm/emb", output="torch", return_index=True, prefetch=1)
    it, dit = iter(ld), iter(dense)
    kept = []
    for _ in range(3):
        b, d = next(it), next(dit)
        X = b["X"]
        assert X.layout == torch_mod.sparse_csr
        # keep the tensors, or only one component of the sparse one
        cols = X.col_indices()
        kept.append((X, cols, d["X"], b["index"], d["index"],
                     X.to_dense().clone(), d["X"].clone(), b["index"].clone(), cols.clone()))
        for _ in range(4):  # draw more while holding
            next(it), next(dit)
    ld.close()
    dense.close()
    del ld, dense, it, dit, b, d, X
    gc.collect()
    again = loader(paths, x="obsm/emb", output="torch", prefetch=1)
    for _ in again:
        pass
    again.close()
    for X, cols, emb, idx, didx, X_copy, emb_copy, idx_copy, cols_copy in kept:
        assert torch_mod.equal(X.to_dense(), X_copy)
        assert torch_mod.equal(emb, emb_copy)
        assert torch_mod.equal(idx, idx_copy)
        assert torch_mod.equal(cols, cols_copy)
        np.testing.assert_array_equal(X.to_dense().numpy(), full.X[idx.numpy()].toarray())
        np.testing.assert_array_equal(emb.numpy(), full.obsm["emb"][didx.numpy()])


# --------------------------------------------------------------------------------------------------
# errors in the producer


def _break_chunk(path: Path, array: str, which: int) -> None:
    """Damage one chunk file of a 1-D zarr array (its first 16 bytes become 0xff)."""
    d = path / array
    chunks = sorted((f for f in d.rglob("*") if f.is_file() and not f.name.startswith(".")
                     and f.name != "zarr.json"), key=lambda f: int(f.name))
    f = chunks[which]
    b = bytearray(f.read_bytes())
    b[: min(16, len(b))] = b"\xff" * min(16, len(b))
    f.write_bytes(bytes(b))


@needs_proc
def test_producer_error_surfaces_in_next(data, tmp_path):
    paths, full = data
    before = native_threads()
    broken = tmp_path / "broken.zarr"
    shutil.copytree(paths[0], broken)
    _break_chunk(broken, "X/data", -3)  # a chunk near the end: the first loads are fine
    ld = loader([broken, paths[1]], shuffle=False, return_index=True, prefetch=1, threads=2)
    it = iter(ld)
    good = 0
    with pytest.raises(annstream.FormatError) as excinfo:
        for b in it:
            check_batch(b, full)  # the batches before the damaged chunk are right
            good += 1
    msg = str(excinfo.value)
    assert "broken.zarr" in msg and "X/data" in msg, msg
    assert good >= 1
    # the same error again on the next pass (no hang, no stale state), then a clean close
    with pytest.raises(annstream.FormatError, match="broken.zarr"):
        list(ld)
    t0 = time.monotonic()
    ld.close()
    assert time.monotonic() - t0 < 5
    assert settle_threads(before) == {}


def test_producer_errors_in_several_threads_stay_apart(data, tmp_path):
    """Two broken stores iterated at once from two threads: each thread's error names its own
    store (errors are per thread, never crossed)."""
    paths, full = data
    names = []
    for i in range(2):
        p = tmp_path / f"broken{i}.zarr"
        shutil.copytree(paths[i], p)
        _break_chunk(p, "X/data", i + 1)
        names.append(p)

    def run(p):
        def fn():
            for _ in range(5):
                ld = loader(p, return_index=True, threads=2)
                with pytest.raises(annstream.FormatError) as excinfo:
                    list(ld)
                ld.close()
                assert p.name in str(excinfo.value), excinfo.value
                other = names[1 - names.index(p)].name
                assert other not in str(excinfo.value)
            return True
        return fn

    assert in_threads([run(names[0]), run(names[1])]) == [True, True]


# --------------------------------------------------------------------------------------------------
# torch DataLoader workers (fork)


def _dataloader(ld, **kw):
    import multiprocessing as mp

    from torch.utils.data import DataLoader

    return DataLoader(ld, batch_size=None, num_workers=2,
                      multiprocessing_context=mp.get_context("fork"), timeout=WAIT, **kw)


def _partition_rows(paths, seed: int, epoch: int) -> set[int]:
    """Rows the two DataLoader workers together must yield for epoch ``epoch``."""
    rows = set()
    for w in range(2):
        ref = loader(paths, seed=seed, rank=w, world_size=2, return_index=True)
        ref.set_epoch(epoch)
        rows |= set(np.concatenate([b["index"] for b in ref]).tolist())
        ref.close()
    return rows


def _worker_epoch(dl, full) -> np.ndarray:
    rows = []
    for b in dl:
        idx = np.asarray(b["index"])
        np.testing.assert_array_equal(rows_of(b["X"]), idx)
        np.testing.assert_array_equal(b["X"].toarray(), full.X[idx].toarray())
        rows.append(idx)
    allrows = np.concatenate(rows)
    assert len(np.unique(allrows)) == len(allrows)  # each row at most once
    assert len(allrows) == 2 * (full.n_obs // 2)
    return allrows


@needs_torch
@posix_only
@fork_busy_unsafe_runtime
def test_dataloader_fork_while_parent_iterates(data):
    """The parent's loader is mid-epoch (producer and pool threads running) when the DataLoader
    forks its workers: the workers build their own C loaders and yield right rows; the parent's
    iteration goes on undisturbed."""
    paths, full = data
    stores = [annstream.open(p, threads=2) for p in paths]
    ld = loader(stores, seed=21, return_index=True, threads=2)
    it = iter(ld)
    parent_rows = [check_batch(next(it), full) for _ in range(3)]
    assert producers()
    worker_rows = _worker_epoch(_dataloader(ld), full)
    assert set(worker_rows.tolist()) == _partition_rows(paths, 21, 0)
    parent_rows += [check_batch(b, full) for b in it]  # the parent's stream was not disturbed
    check_epoch(parent_rows, full.n_obs)
    ld.close()
    for s in stores:
        s.close()


@needs_torch
@posix_only
@pytest.mark.parametrize("persistent", [True, False])
def test_dataloader_two_epochs(data, persistent):
    paths, full = data
    before = producers()
    ld = loader(paths, seed=22, return_index=True)
    for b in ld:  # the parent iterated a whole epoch first: threads started and stopped
        pass
    assert ld.epoch == 1
    dl = _dataloader(ld, persistent_workers=persistent)
    e1 = _worker_epoch(dl, full)  # the workers copy the parent's epoch 1
    if not persistent:
        ld.set_epoch(2)  # fresh workers each epoch: they copy the parent's epoch again
    # persistent workers keep their loaders, which advance to epoch 2 by themselves
    e2 = _worker_epoch(dl, full)
    assert set(e1.tolist()) == _partition_rows(paths, 22, 1)
    assert set(e2.tolist()) == _partition_rows(paths, 22, 2)
    assert not np.array_equal(e1, e2)  # a new order
    del dl
    gc.collect()
    ld.close()
    assert producers_gone(before)
