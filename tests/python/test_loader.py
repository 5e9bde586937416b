"""annstream.Loader: iteration, sampling semantics, partitions, resume, obs / index, torch and the
DataLoader, custom samplers, errors. Stores are written by the real anndata.

Every store's X is CSR float32 whose column 0 holds (global row + 1), so each batch tells which
rows it holds; obsm/emb is dense (n, 2, 3) holding global row * 10 + position.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import annstream

try:
    import torch as torch_mod
except Exception:  # noqa: BLE001
    torch_mod = None
needs_torch = pytest.mark.skipif(torch_mod is None, reason="torch is not installed")

N_VARS = 12
SIZES = (300, 450, 700)
CONTAINERS = ("zarr2", "zarr3", "h5ad")
CATS = (["a", "b"], ["b", "c"], ["a", "d"])
VAR_NAMES = [f"gene{i:02d}" for i in range(N_VARS)]

# small loads so that a few hundred rows make many loads and batches
SMALL = dict(batch_size=16, chunk_size=8, preload_nchunks=4)


def make_adata(offset: int, n: int, cats: list[str], seed: int, var_names=VAR_NAMES) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    dense = np.zeros((n, N_VARS), dtype=np.float32)
    dense[:, 0] = np.arange(offset, offset + n) + 1
    mask = rng.random((n, N_VARS - 1)) < 0.3
    dense[:, 1:][mask] = rng.integers(1, 50, mask.sum())
    X = sp.csr_matrix(dense)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.array(cats, dtype=object)[rng.integers(0, len(cats), n)],
                                        categories=cats),
            "score": rng.random(n),
        },
        index=[f"cell{offset + i}" for i in range(n)],
    )
    var = pd.DataFrame(index=list(var_names))
    emb = (np.arange(offset, offset + n)[:, None, None] * 10
           + np.arange(6).reshape(1, 2, 3)).astype(np.float64)
    counts = (dense * 2).astype(np.int32)
    return ad.AnnData(X=X, obs=obs, var=var, obsm={"emb": emb}, layers={"counts": counts})


def write(adata: ad.AnnData, path: Path, container: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if container == "h5ad":
            adata.write_h5ad(path)
        else:
            fmt = 2 if container == "zarr2" else 3
            old = ad.settings.zarr_write_format
            ad.settings.zarr_write_format = fmt
            try:
                adata.write_zarr(path, chunks=(32, N_VARS))
            finally:
                ad.settings.zarr_write_format = old
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    paths, adatas, offset = [], [], 0
    for i, (n, container) in enumerate(zip(SIZES, CONTAINERS)):
        a = make_adata(offset, n, CATS[i], seed=i)
        ext = ".h5ad" if container == "h5ad" else ".zarr"
        paths.append(write(a, root / f"s{i}{ext}", container))
        adatas.append(a)
        offset += n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = ad.concat(adatas, merge="same")
    return root, paths, full


def loader(paths, **kw) -> annstream.Loader:
    opts = dict(SMALL, seed=7)
    opts.update(kw)
    return annstream.Loader(paths, **opts)


def rows_of(X) -> np.ndarray:
    """Global rows encoded in column 0 of a batch."""
    col = X[:, 0].toarray().ravel() if sp.issparse(X) else np.asarray(X)[:, 0]
    return col.astype(np.int64) - 1


def epoch_rows(ld) -> list[np.ndarray]:
    return [b["index"].copy() for b in ld]


# --------------------------------------------------------------------------------------------------
# core iteration


def test_exactly_once_shuffled(data):
    _, paths, full = data
    ld = loader(paths, return_index=True)
    assert ld.n_obs == full.n_obs and ld.n_vars == N_VARS
    assert list(ld.var_names) == VAR_NAMES
    seen, n_batches = [], 0
    for b in ld:
        X = b["X"]
        assert isinstance(X, sp.csr_matrix) and X.shape[1] == N_VARS
        assert X.dtype == np.float32
        np.testing.assert_array_equal(rows_of(X), b["index"])
        assert b["index"].dtype == np.int64
        assert b["obs"] is None
        np.testing.assert_array_equal(X.toarray(), full.X[b["index"]].toarray())
        seen.append(b["index"].copy())
        n_batches += 1
    allrows = np.concatenate(seen)
    np.testing.assert_array_equal(np.sort(allrows), np.arange(full.n_obs))
    assert not np.array_equal(allrows, np.arange(full.n_obs))  # shuffled
    assert n_batches == len(ld) == -(-full.n_obs // 16)


def test_sequential_order_equals_anndata(data):
    _, paths, full = data
    ld = loader(paths, shuffle=False, return_index=True)
    Xs = [b["X"] for b in ld]
    got = sp.vstack(Xs).toarray()
    np.testing.assert_array_equal(got, full.X.toarray())


def test_index_absent_without_return_index(data):
    _, paths, _ = data
    b = next(iter(loader(paths)))
    assert b["index"] is None and b["obs"] is None
    assert rows_of(b["X"]).shape == (16,)


def test_determinism_across_threads_and_prefetch(data):
    _, paths, _ = data
    a = epoch_rows(loader(paths, return_index=True, threads=1, prefetch=1))
    b = epoch_rows(loader(paths, return_index=True, threads=4, prefetch=3))
    c = epoch_rows(loader(paths, return_index=True))
    assert len(a) == len(b) == len(c)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_epochs_differ_and_set_epoch(data):
    _, paths, full = data
    ld = loader(paths, return_index=True)
    e0 = np.concatenate(epoch_rows(ld))
    assert ld.epoch == 1  # advanced after the full pass
    e1 = np.concatenate(epoch_rows(ld))
    assert ld.epoch == 2
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(np.sort(e1), np.arange(full.n_obs))
    ld.set_epoch(0)
    np.testing.assert_array_equal(np.concatenate(epoch_rows(ld)), e0)
    assert ld.epoch == 0  # pinned by set_epoch: no automatic advance
    np.testing.assert_array_equal(np.concatenate(epoch_rows(ld)), e0)
    other = loader(paths, return_index=True)
    other.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate(epoch_rows(other)), e1)


def test_seed_none_draws_a_seed(data):
    _, paths, _ = data
    a = annstream.Loader(paths, **SMALL, return_index=True)
    b = annstream.Loader(paths, **SMALL, return_index=True)
    assert a.state_dict()["seed"] != b.state_dict()["seed"]
    c = annstream.Loader(paths, **SMALL, return_index=True, seed=a.seed)
    np.testing.assert_array_equal(np.concatenate(epoch_rows(a)), np.concatenate(epoch_rows(c)))


@pytest.mark.parametrize("drop_last", [False, True])
def test_len_and_drop_last(data, drop_last):
    _, paths, full = data
    ld = loader(paths, batch_size=32, drop_last=drop_last, return_index=True)
    sizes = [b["X"].shape[0] for b in ld]
    assert len(sizes) == len(ld)
    if drop_last:
        assert all(s == 32 for s in sizes) and len(sizes) == full.n_obs // 32
    else:
        assert sizes[:-1] == [32] * (len(sizes) - 1)
        assert sum(sizes) == full.n_obs


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_disjoint_equal_counts(data, drop_last):
    _, paths, full = data
    per = full.n_obs // 3
    counts, sets = [], []
    for rank in range(3):
        ld = loader(paths, rank=rank, world_size=3, return_index=True, drop_last=drop_last)
        rows = epoch_rows(ld)
        assert len(rows) == len(ld)
        counts.append(len(rows))
        sets.append(np.concatenate(rows))
    assert counts[0] == counts[1] == counts[2]
    union = np.concatenate(sets)
    assert len(np.unique(union)) == len(union)  # disjoint
    expected = per - per % 16 if drop_last else per
    assert all(len(s) == expected for s in sets)


def test_distributed_from_environment(data, monkeypatch):
    _, paths, _ = data
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ld = loader(paths)
    st = ld.state_dict()
    assert (st["partition"], st["n_partitions"]) == (1, 2)
    with pytest.raises(ValueError):
        loader(paths, rank=2, world_size=2)


def test_resume_mid_epoch(data):
    _, paths, _ = data
    ld = loader(paths, return_index=True)
    list(ld)  # epoch 0
    head, state = [], None
    for i, b in enumerate(ld):  # epoch 1
        head.append(b["index"].copy())
        if i == 10:
            state = ld.state_dict()
            break
    assert state["epoch"] == 1 and state["batches_yielded"] == 11
    ref = loader(paths, return_index=True)
    ref.set_epoch(1)
    full_epoch = epoch_rows(ref)
    state = json.loads(json.dumps(state))  # survives a round trip through JSON
    new = loader(paths, return_index=True, seed=123)  # the state's seed wins
    new.load_state_dict(state)
    assert new.state_dict()["batches_yielded"] == 11
    rest = epoch_rows(new)
    assert len(rest) == len(full_epoch) - 11
    for x, y in zip(head + rest, full_epoch):
        np.testing.assert_array_equal(x, y)
    assert new.epoch == 2  # the resumed pass completed epoch 1
    assert len(new) == len(full_epoch)
    with pytest.raises(ValueError, match="parameters"):
        loader(paths, batch_size=32).load_state_dict(state)
    with pytest.raises(ValueError, match="partition"):
        loader(paths, rank=1, world_size=2).load_state_dict(state)


def test_obs_and_index_match_anndata(data):
    _, paths, full = data
    ld = loader(paths, obs=["cell_type", "score"], return_index=True)
    assert isinstance(ld.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert set(ld.obs["cell_type"].cat.categories) == {"a", "b", "c", "d"}
    n = 0
    for b in ld:
        idx = b["index"]
        obs = b["obs"]
        assert isinstance(obs, pd.DataFrame) and list(obs.columns) == ["cell_type", "score"]
        assert isinstance(obs["cell_type"].dtype, pd.CategoricalDtype)
        assert set(obs["cell_type"].cat.categories) == {"a", "b", "c", "d"}
        expected = full.obs.iloc[idx]
        assert list(obs.index) == list(expected.index)
        assert list(obs["cell_type"].astype(str)) == list(expected["cell_type"].astype(str))
        np.testing.assert_array_equal(obs["score"].to_numpy(), expected["score"].to_numpy())
        np.testing.assert_array_equal(rows_of(b["X"]), idx)
        n += len(idx)
    assert n == full.n_obs


def test_obs_without_return_index(data):
    _, paths, full = data
    b = next(iter(loader(paths, obs="cell_type")))
    assert b["index"] is None
    assert list(b["obs"].index) == list(full.obs_names[rows_of(b["X"])])


def test_dense_nd_obsm(data):
    _, paths, full = data
    ld = loader(paths, x="obsm/emb", return_index=True)
    total = 0
    for b in ld:
        X = b["X"]
        assert isinstance(X, np.ndarray) and X.shape[1:] == (2, 3) and X.dtype == np.float64
        np.testing.assert_array_equal(X, full.obsm["emb"][b["index"]])
        total += X.shape[0]
    assert total == full.n_obs


def test_densify_and_dtype(data):
    _, paths, full = data
    ld = loader(paths, densify=True, dtype="float64", return_index=True)
    for b in ld:
        X = b["X"]
        assert isinstance(X, np.ndarray) and X.dtype == np.float64 and X.shape[1] == N_VARS
        np.testing.assert_array_equal(X, full.X[b["index"]].toarray())
    b = next(iter(loader(paths, dtype=np.int32)))
    assert b["X"].dtype == np.int32


def test_stores_and_single_source(data):
    _, paths, full = data
    opened = [annstream.open(p) for p in paths]
    try:
        a = epoch_rows(loader(opened, return_index=True))
        b = epoch_rows(loader(paths, return_index=True))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        single = loader(paths[1], shuffle=False)
        got = sp.vstack([bb["X"] for bb in single]).toarray()
        np.testing.assert_array_equal(got, full.X[300:750].toarray())
    finally:
        for s in opened:
            s.close()


def test_collection_directory(tmp_path):
    import zarr

    coll = tmp_path / "coll"
    g = zarr.open_group(str(coll), mode="w", zarr_format=3)
    g.attrs.update({"encoding-type": "annbatch-preshuffled", "encoding-version": "0.1.0"})
    sizes = [120, 80, 200]
    old = ad.settings.zarr_write_format
    ad.settings.zarr_write_format = 3
    offset, adatas = 0, []
    try:
        # written out of order: the loader orders the dataset_i children by i, not by listing
        for i in (1, 0, 2):
            n = sizes[i]
            off = sum(sizes[:i])
            a = make_adata(off, n, CATS[i], seed=10 + i)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a.write_zarr(coll / f"dataset_{i}", chunks=(16, N_VARS))
            adatas.append(a)
            offset += n
    finally:
        ad.settings.zarr_write_format = old
    ld = loader(coll, shuffle=False, return_index=True, obs="cell_type")
    assert ld.n_obs == sum(sizes)
    assert [Path(s.path).name for s in ld.stores] == ["dataset_0", "dataset_1", "dataset_2"]
    idx = np.concatenate([rows_of(b["X"]) for b in ld])
    np.testing.assert_array_equal(idx, np.arange(sum(sizes)))
    np.testing.assert_array_equal(np.concatenate(epoch_rows(ld)), np.arange(sum(sizes)))
    ld.close()


def test_replacement(data):
    _, paths, full = data
    ld = loader(paths, replacement=True, num_samples=320, return_index=True)
    rows = epoch_rows(ld)
    assert len(rows) == len(ld) == 20
    allrows = np.concatenate(rows)
    assert len(allrows) == 320 and allrows.max() < full.n_obs


# --------------------------------------------------------------------------------------------------
# lifetime


def test_batches_outlive_loader_and_buffers_not_reused(data):
    _, paths, full = data
    ld = loader(paths, return_index=True, prefetch=1)
    kept = []
    for b in ld:
        kept.append((b["X"], b["index"]))  # hold every batch: the loader must not reuse them
    ld.close()
    assert ld.closed
    for X, idx in kept:
        np.testing.assert_array_equal(rows_of(X), idx)
        np.testing.assert_array_equal(X.toarray(), full.X[idx].toarray())
    with pytest.raises(ValueError, match="closed"):
        iter(ld)
    ld.close()  # idempotent


def test_close_during_iteration(data):
    _, paths, _ = data
    ld = loader(paths)
    it = iter(ld)
    first = next(it)
    ld.close()
    with pytest.raises(RuntimeError):
        next(it)
    assert first["X"].shape[0] == 16


def test_new_iteration_invalidates_old(data):
    _, paths, _ = data
    ld = loader(paths)
    it1 = iter(ld)
    next(it1)
    it2 = iter(ld)
    next(it2)
    with pytest.raises(RuntimeError, match="another iteration"):
        next(it1)


def test_pickle_round_trip(data):
    _, paths, _ = data
    ld = loader(paths, return_index=True, obs="cell_type")
    clone = pickle.loads(pickle.dumps(ld))
    for x, y in zip(epoch_rows(ld), epoch_rows(clone)):
        np.testing.assert_array_equal(x, y)
    clone.close()


# --------------------------------------------------------------------------------------------------
# errors


def test_bad_parameters_before_io(tmp_path, data):
    _, paths, _ = data
    missing = tmp_path / "does-not-exist.zarr"  # parameters are checked before opening anything
    for kw, exc in [
        (dict(batch_size=0), ValueError),
        (dict(chunk_size=0), ValueError),
        (dict(preload_nchunks=0), ValueError),
        (dict(prefetch=0), ValueError),
        (dict(output="jax"), ValueError),
        (dict(batch_size=24), ValueError),  # does not divide 8 * 4
        (dict(dtype="complex64"), ValueError),
        (dict(replacement=True, shuffle=False), ValueError),
        (dict(num_samples=10), ValueError),
        (dict(rank=3, world_size=2), ValueError),
        (dict(batch_size=1.5), TypeError),
        (dict(pin_memory=True), ValueError),  # only with output="torch"
    ]:
        with pytest.raises(exc):
            loader(missing, **kw)
    with pytest.raises(FileNotFoundError):
        loader(missing)
    with pytest.raises(KeyError, match="obsm/nope"):
        loader(paths, x="obsm/nope")
    with pytest.raises(KeyError, match="nope"):
        loader(paths, obs=["cell_type", "nope"])
    with pytest.raises(ValueError):
        loader([])


def test_mismatched_var_names(tmp_path, data):
    _, paths, _ = data
    other = write(make_adata(0, 50, ["a"], 3, var_names=[f"g{i}" for i in range(N_VARS)]),
                  tmp_path / "other.zarr", "zarr3")
    with pytest.raises(ValueError, match="var names"):
        loader([paths[0], other])


def test_producer_error_is_format_error(tmp_path, data):
    _, paths, _ = data
    import shutil

    p = tmp_path / "broken.zarr"
    shutil.copytree(paths[0], p)
    chunks = sorted(f for f in (p / "X" / "data").iterdir() if not f.name.startswith("."))
    for f in chunks:
        b = bytearray(f.read_bytes())
        b[: min(16, len(b))] = b"\xff" * min(16, len(b))
        f.write_bytes(bytes(b))
    ld = loader(p)  # metadata only: fine
    with pytest.raises(annstream.FormatError, match="broken.zarr"):
        for _ in ld:
            pass
    ld.close()


# --------------------------------------------------------------------------------------------------
# custom sampler


class ClassBalanced:
    """Toy class-balanced sampler: each load takes 2 batches of one class, classes round-robin."""

    def __init__(self, labels, batch_size, n_loads, seed=0):
        self.labels = np.asarray(labels)
        self.classes = np.unique(self.labels)
        self.bs = batch_size
        self.n_loads = n_loads
        self.seed = seed

    def __len__(self):
        return 2 * self.n_loads

    def plans(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        for k in range(self.n_loads):
            cls = self.classes[k % len(self.classes)]
            rows = rng.choice(np.flatnonzero(self.labels == cls), 2 * self.bs, replace=False)
            ranges = np.stack([rows, np.ones_like(rows)], axis=1)  # single-row ranges
            order = rng.permutation(len(rows))
            bounds = np.array([0, self.bs, 2 * self.bs])
            yield ranges, order, bounds


def test_custom_sampler(data):
    _, paths, full = data
    labels = full.obs["cell_type"].astype(str).to_numpy()
    sampler = ClassBalanced(labels, 8, n_loads=10)
    ld = annstream.Loader(paths, sampler=sampler, return_index=True, obs=["cell_type"], prefetch=1)
    assert len(ld) == 20
    batches = list(ld)
    assert len(batches) == 20
    for b in batches:
        assert b["X"].shape[0] == 8
        np.testing.assert_array_equal(rows_of(b["X"]), b["index"])
        assert b["obs"]["cell_type"].nunique() == 1
    # resume inside a plan
    ld.set_epoch(3)
    it = iter(ld)
    head = [next(it)["index"].copy() for _ in range(5)]
    state = ld.state_dict()
    rest = [b["index"].copy() for b in it]
    new = annstream.Loader(paths, sampler=sampler, return_index=True, obs=["cell_type"])
    new.load_state_dict(state)
    again = epoch_rows(new)
    assert len(head) + len(rest) == 20
    for x, y in zip(again, rest):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(TypeError):
        annstream.Loader(paths, sampler=object())


def test_custom_sampler_bad_plan(data):
    _, paths, full = data

    class Bad:
        def plans(self, epoch):
            yield np.array([[full.n_obs - 1, 5]]), np.arange(5), np.array([0, 5])

    with pytest.raises(ValueError):
        list(annstream.Loader(paths, sampler=Bad()))


# --------------------------------------------------------------------------------------------------
# torch


@needs_torch
def test_is_iterable_dataset(data):
    _, paths, _ = data
    assert isinstance(loader(paths), torch_mod.utils.data.IterableDataset)


@needs_torch
def test_torch_sparse_and_dense_zero_copy(data):
    _, paths, full = data
    ld = loader(paths, output="torch", return_index=True)
    it = ld._generate()
    b = next(it)
    X = b["X"]
    assert X.layout == torch_mod.sparse_csr and tuple(X.shape) == (16, N_VARS)
    assert isinstance(b["index"], torch_mod.Tensor)
    idx = b["index"].numpy()
    np.testing.assert_array_equal(X.to_dense().numpy(), full.X[idx].toarray())
    dense = loader(paths, output="torch", densify=True, dtype="float32", return_index=True)
    for bd in dense:
        T = bd["X"]
        assert T.layout == torch_mod.strided and T.dtype == torch_mod.float32
        np.testing.assert_array_equal(T.numpy(), full.X[bd["index"].numpy()].toarray())
        break
    # zero-copy: the tensor's memory is the C batch buffer
    ld2 = loader(paths, x="obsm/emb", output="torch")
    c = ld2._acquire(0, 1)
    c.set_epoch(0)
    raw = c.next()
    conv = ld2._convert(raw)
    assert conv["X"].data_ptr() == raw.data_address
    sparse = loader(paths, output="torch")
    c2 = sparse._acquire(0, 1)
    c2.set_epoch(0)
    raw2 = c2.next()
    conv2 = sparse._convert(raw2)
    assert conv2["X"].values().data_ptr() == raw2.data_address
    del raw, raw2
    for each in (ld, dense, ld2, sparse):
        each.close()
    # the tensors keep the batch alive, also past close()
    np.testing.assert_array_equal(conv["X"].numpy()[:, 0, 0] % 10, 0)
    assert conv2["X"].to_dense().shape == (16, N_VARS)


@needs_torch
def test_dataloader_fork_workers(data):
    _, paths, full = data
    import multiprocessing as mp

    from torch.utils.data import DataLoader

    for shuffle in (True, False):
        ld = loader(paths, shuffle=shuffle, return_index=True)
        list(ld)  # the parent iterated first: its (idle) C loader must not matter in the workers
        dl = DataLoader(ld, batch_size=None, num_workers=2,
                        multiprocessing_context=mp.get_context("fork"), timeout=60)
        idx = []
        for b in dl:
            rows = np.asarray(b["index"])
            np.testing.assert_array_equal(rows_of(b["X"]), rows)
            idx.append(rows)
        allrows = np.concatenate(idx)
        per = full.n_obs // 2  # the sampler skips the n_obs % 2 remainder
        assert len(allrows) == 2 * per
        assert len(np.unique(allrows)) == len(allrows)  # each row at most once
        if not shuffle:
            np.testing.assert_array_equal(np.sort(allrows), np.arange(2 * per))


@needs_torch
def test_dataloader_torch_output(data):
    _, paths, full = data
    from torch.utils.data import DataLoader

    ld = loader(paths, x="obsm/emb", output="torch", return_index=True, drop_last=True)
    n = 0
    for b in DataLoader(ld, batch_size=None, num_workers=2, timeout=60):
        assert b["X"].shape == (16, 2, 3)
        np.testing.assert_array_equal(b["X"].numpy(), full.obsm["emb"][b["index"].numpy()])
        n += 1
    assert n == 2 * ((full.n_obs // 2) // 16)


@needs_torch
@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 CPUs
@pytest.mark.parametrize("workers,persistent", [(2, False), (3, True)])
def test_stateful_dataloader_resumes_inside_workers(data, workers, persistent):
    _, paths, _ = data
    import multiprocessing as mp

    def make(seed=7):
        return annstream.StatefulDataLoader(
            loader(paths, return_index=True, seed=seed), num_workers=workers,
            multiprocessing_context=mp.get_context("fork"), persistent_workers=persistent,
            timeout=60,
        )

    def one_pass(dl, stop=None):
        out, state = [], None
        for i, b in enumerate(dl):
            out.append(np.asarray(b["index"]).copy())
            if stop is not None and i + 1 == stop:
                state = dl.state_dict()
                break
        return out, state

    ref = make()
    passes = [one_pass(ref)[0] for _ in range(3)]
    # the epoch advances from pass to pass (unlike a plain DataLoader over a Loader)
    assert not np.array_equal(np.concatenate(passes[0]), np.concatenate(passes[1]))
    per_pass = len(passes[1])
    stop = 5  # not a multiple of the worker count: the resumed pass starts mid-round
    assert stop % workers != 0 and stop < per_pass

    dl = make()
    one_pass(dl)
    head, state = one_pass(dl, stop)
    assert state["num_workers"] == workers and state["batches_yielded"] == stop
    assert state["loader"]["epoch"] == 1
    state = json.loads(json.dumps(state))

    new = make(seed=123)  # the state's seed wins
    assert new.state_dict()["loader"]["epoch"] == 0
    new.load_state_dict(state)
    assert new.state_dict()["batches_yielded"] == stop
    rest, _ = one_pass(new)
    assert len(head) + len(rest) == per_pass
    for x, y in zip(head + rest, passes[1]):
        np.testing.assert_array_equal(x, y)
    # and on with the next epoch, as the uninterrupted run did
    after, _ = one_pass(new)
    assert len(after) == len(passes[2])
    for x, y in zip(after, passes[2]):
        np.testing.assert_array_equal(x, y)

    with pytest.raises(ValueError, match="num_workers"):
        annstream.StatefulDataLoader(loader(paths, return_index=True), num_workers=1,
                                     timeout=60).load_state_dict(state)
    if persistent:
        with pytest.raises(ValueError, match="before the first pass"):
            new.load_state_dict(state)


@needs_torch
def test_stateful_dataloader_rejects_what_it_cannot_resume(data):
    _, paths, _ = data
    ld = loader(paths)
    with pytest.raises(ValueError, match="batch_size"):
        annstream.StatefulDataLoader(ld, batch_size=4)
    with pytest.raises(TypeError, match="annstream.Loader"):
        annstream.StatefulDataLoader([1, 2, 3])
    dl = annstream.StatefulDataLoader(ld, num_workers=2)
    state = dl.state_dict()
    assert state["batches_yielded"] == 0 and state["num_workers"] == 2
    state["batches_yielded"] = 10**6
    with pytest.raises(ValueError, match="exceeds"):
        dl.load_state_dict(state)
    # without workers the Loader's own state describes the position
    dl0 = annstream.StatefulDataLoader(loader(paths, return_index=True))
    it = iter(dl0)
    first = [np.asarray(next(it)["index"]).copy() for _ in range(3)]
    st = dl0.state_dict()
    assert st == {"num_workers": 0, "loader": dl0.dataset.state_dict()}
    assert st["loader"]["batches_yielded"] == 3
    del it
    again = annstream.StatefulDataLoader(loader(paths, return_index=True))
    again.load_state_dict(st)
    ref = epoch_rows(loader(paths, return_index=True))
    for x, y in zip(first + [np.asarray(b["index"]) for b in again], ref):
        np.testing.assert_array_equal(x, y)


def test_works_without_torch(data):
    _, paths, _ = data
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import annstream, numpy as np\n"
        f"ld = annstream.Loader({[str(p) for p in paths]!r}, batch_size=16, chunk_size=8, "
        "preload_nchunks=4, return_index=True)\n"
        "rows = np.concatenate([b['index'] for b in ld])\n"
        "assert len(np.unique(rows)) == ld.n_obs == len(rows)\n"
        "try:\n"
        "    annstream.Loader(ld.stores, output='torch')\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_annstream_does_not_import_torch():
    code = "import sys, annstream; assert 'torch' not in sys.modules; annstream.Loader; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _producer_threads() -> set[str]:
    """Thread ids of this process's loader producer threads."""
    found = set()
    for t in Path("/proc/self/task").iterdir():
        try:
            if (t / "comm").read_text().strip() == "annstream-load":
                found.add(t.name)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_no_producer_thread_left_after_a_pass(data):
    import gc

    _, paths, _ = data
    gc.collect()
    base = _producer_threads()  # other tests' loaders may still be winding down: only new ones

    def new():
        return _producer_threads() - base

    ld = loader(paths)
    list(ld)
    assert not new()
    for i, _ in enumerate(ld):
        if i == 3:
            break
    assert not new()  # leaving the loop early stops it too
    it = iter(ld)
    next(it)
    assert len(new()) == 1
    it.close()
    assert not new()


@needs_torch
def test_pin_memory_without_cuda_is_a_no_op(data):
    _, paths, full = data
    ld = loader(paths, x="obsm/emb", output="torch", pin_memory=True, return_index=True)
    b = next(iter(ld))
    np.testing.assert_array_equal(b["X"].numpy(), full.obsm["emb"][b["index"].numpy()])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_interrupts_the_loop(data):
    import signal
    import time

    _, paths, _ = data
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import annstream\n"
        f"ld = annstream.Loader({[str(p) for p in paths]!r}, batch_size=16, chunk_size=8, "
        "preload_nchunks=4)\n"
        "kept = []\n"
        "try:\n"
        "    while True:\n"
        "        for b in ld:\n"
        "            if not kept: print('ready', flush=True)\n"
        "            kept.append(b['X'])\n"
        "            kept = kept[-50:]\n"
        "except KeyboardInterrupt:\n"
        "    ld.close()\n"
        "    assert kept[-1].shape[1] == 12  # held batches stay valid after close\n"
        "    print('interrupted', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "interrupted"


def test_state_after_leaving_the_loop_early(data):
    _, paths, _ = data
    ld = loader(paths, return_index=True)
    full = epoch_rows(loader(paths, return_index=True))
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for b in ld:
            seen.append(b["index"].copy())
            if len(seen) == 7:
                raise KeyboardInterrupt  # as if Ctrl-C hit the training step
    state = ld.state_dict()
    assert (state["epoch"], state["batches_yielded"]) == (0, 7)
    ld.load_state_dict(state)  # continue where the loop stopped
    seen += epoch_rows(ld)
    assert len(seen) == len(full)
    for x, y in zip(seen, full):
        np.testing.assert_array_equal(x, y)
    assert ld.epoch == 1
    restarted = epoch_rows(ld)  # a plain iter() runs the next epoch from its start
    assert len(restarted) == len(full)


def test_custom_sampler_partitions(data):
    _, paths, full = data
    calls = []

    class Aware:
        def plans(self, epoch, partition=0, n_partitions=1):
            calls.append((epoch, partition, n_partitions))
            start = partition * 32
            yield np.array([[start, 32]]), np.arange(32), np.array([0, 16, 32])

    ld = annstream.Loader(paths, sampler=Aware(), rank=1, world_size=2, return_index=True)
    rows = np.concatenate(epoch_rows(ld))
    np.testing.assert_array_equal(rows, np.arange(32, 64))
    assert calls == [(0, 1, 2)]
    with pytest.raises(ValueError, match="partition"):
        list(annstream.Loader(paths, sampler=ClassBalanced(np.zeros(full.n_obs), 8, 2),
                              rank=0, world_size=2))


@needs_torch
def test_torch_distributed_ranks(data, tmp_path):
    import socket

    _, paths, full = data
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import sys, numpy as np, torch.distributed as dist, annstream\n"
        "rank = int(sys.argv[1])\n"
        f"dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{port}', rank=rank, "
        "world_size=2)\n"
        f"ld = annstream.Loader({[str(p) for p in paths]!r}, batch_size=16, chunk_size=8, "
        "preload_nchunks=4, seed=5, return_index=True)\n"
        "st = ld.state_dict()\n"
        "assert (st['partition'], st['n_partitions']) == (rank, 2), st\n"
        "rows = np.concatenate([b['index'] for b in ld])\n"
        f"np.save(r'{tmp_path}' + f'/rank{{rank}}.npy', rows)\n"
        "dist.destroy_process_group()\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    r0, r1 = (np.load(tmp_path / f"rank{r}.npy") for r in range(2))
    assert len(r0) == len(r1) == full.n_obs // 2
    assert not set(r0.tolist()) & set(r1.tolist())


def test_layer_with_dtype(data):
    _, paths, full = data
    ld = loader(paths, x="layers/counts", dtype="float32", return_index=True)
    n = 0
    for b in ld:
        X = b["X"]
        assert isinstance(X, np.ndarray) and X.dtype == np.float32 and X.shape[1] == N_VARS
        np.testing.assert_array_equal(X, full.layers["counts"][b["index"]].astype(np.float32))
        n += len(X)
    assert n == full.n_obs


def test_csc_cannot_be_streamed(tmp_path):
    a = make_adata(0, 40, ["a"], 4)
    a.X = sp.csc_matrix(a.X)
    p = write(a, tmp_path / "csc.zarr", "zarr3")
    with pytest.raises(annstream.FormatError, match="CSC"):
        loader(p)


def _multiblock_store(tmp_path, indices, bad_index=None):
    """A CSR store whose X/data (lz4, byte shuffle) and X/indices (`indices`: dtype, blosc cname,
    shuffle, typesize) are zarr v3 sharded arrays of 16k-value inner chunks (4 per shard) made of
    blosc blocks of 4 KiB, so that many rows cross a block boundary."""
    import zarr
    from zarr.codecs import BloscCodec

    rng = np.random.default_rng(7)
    n, g = 600, 400
    X = sp.random(n, g, density=0.25, format="csr", dtype=np.float32, random_state=rng)
    X.data[:] = rng.integers(1, 100, X.nnz)
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))
    path = tmp_path / "blocks.zarr"
    with ad.settings.override(zarr_write_format=3):
        adata.write_zarr(path)
    root = zarr.open_group(path, mode="r+")
    idtype, cname, shuffle, typesize = indices
    data_codec = BloscCodec(cname="lz4", clevel=3, shuffle="shuffle", blocksize=4096)
    index_codec = BloscCodec(cname=cname, clevel=3, shuffle=shuffle, typesize=typesize,
                             blocksize=4096)
    for name, dtype, codec in (("data", None, data_codec), ("indices", idtype, index_codec)):
        values = root["X"][name][...]
        if dtype is not None:
            values = values.astype(dtype)
        if name == "indices" and bad_index is not None:
            values[bad_index] = 60_000
        del root["X"][name]
        root["X"].create_array(name, data=values, shards=(4 * 16_000,), chunks=(16_000,),
                               compressors=codec)
    zarr.consolidate_metadata(path)
    return path, n


# Indices: blosclz (decoded whole, then cut); lz4 uint16 with byte shuffle (decoded block by block
# and widened to int32 on the way into the batch); lz4 int64 without shuffle; lz4 with bit shuffle
# and lz4 with a shuffle typesize other than the element size (both decoded another way).
MULTIBLOCK_INDICES = [("int32", "blosclz", "shuffle", None), ("uint16", "lz4", "shuffle", None),
                      ("int64", "lz4", "noshuffle", None), ("int32", "lz4", "bitshuffle", None),
                      ("int32", "lz4", "shuffle", 8)]


@pytest.mark.parametrize("indices", MULTIBLOCK_INDICES, ids=lambda t: "-".join(map(str, t)))
def test_multiblock_blosc_chunks_match_anndata(tmp_path, indices):
    """Chunks several blosc blocks long: loads that need only part of a chunk decode only its
    blocks, straight into the batches where the codec allows; every batch row must equal
    anndata's row."""
    path, n = _multiblock_store(tmp_path, indices)
    expected = ad.read_zarr(path).X.toarray()
    for chunk, pre in ((16, 8), (5, 16), (64, 2)):
        ld = annstream.Loader(path, batch_size=8, chunk_size=chunk, preload_nchunks=pre,
                              seed=3, return_index=True)
        # the second epoch reads chunks in part: only the blocks it needs, behind their cached heads
        for epoch in range(2):
            ld.set_epoch(epoch)
            seen = np.zeros(n, dtype=int)
            for b in ld:
                np.testing.assert_array_equal(b["X"].toarray(), expected[b["index"]])
                seen[b["index"]] += 1
            assert (seen == 1).all()


def test_multiblock_index_out_of_range_is_an_error(tmp_path):
    """A uint16 column index past n_vars inside a block-by-block decoded (lz4, byte shuffle) chunk
    is caught on its way into the batch: FormatError naming the store, X and the reason, never a
    wrong batch."""
    path, n = _multiblock_store(tmp_path, ("uint16", "lz4", "shuffle", None), bad_index=15_000)
    ld = annstream.Loader(path, batch_size=64, chunk_size=16, preload_nchunks=8, seed=1)
    with pytest.raises(annstream.FormatError, match=r"blocks\.zarr: element 'X': a column index "
                       r"outside \[0, 400\)"):
        for _ in ld:
            pass
    with annstream.open(path) as store:
        with pytest.raises(annstream.FormatError, match="column index outside"):
            store["X"].read_rows(slice(None))
