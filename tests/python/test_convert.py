"""annstream.convert: inputs written by anndata (zarr v3, zarr v2, h5ad; CSR, CSC, dense X), the
collection read back by anndata and by annstream. Every input row carries a unique obs "key", so
each output row is matched to its source and compared value by value after mapping to the output
var."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import annstream


def _make(n: int, genes: list[str], in_id: int, cats: list[str], fmt: str, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = rng.random((n, len(genes))).astype(np.float32)
    x[x < 0.7] = 0
    x = x * 100 + (x > 0)
    obs = pd.DataFrame(
        {
            "key": np.arange(n, dtype=np.int64) + in_id * 1_000_000,
            "ct": pd.Categorical(rng.choice(cats, n), categories=cats),
            "score": rng.random(n),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    X = {"csr": sp.csr_matrix(x), "csc": sp.csc_matrix(x), "dense": x}[fmt]
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
    a.obsm["emb"] = np.stack([obs["key"].to_numpy(np.float64), -obs["key"].to_numpy(np.float64)], 1)
    a.layers["counts"] = sp.csr_matrix(np.round(x).astype(np.int32))
    return a


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert_inputs")
    a = _make(300, [f"g{i}" for i in range(10)], 0, ["T", "B", "NK"], "csr", 1)
    b = _make(200, [f"g{i}" for i in range(14, 4, -1)], 1, ["Mono", "B"], "csc", 2)
    c = _make(150, [f"g{i}" for i in (3, 20, 7)], 2, ["B", "DC"], "dense", 3)
    pa, pb, pc = d / "a.zarr", d / "b.h5ad", d / "c.zarr"
    ad.settings.zarr_write_format = 3
    a.write_zarr(pa)
    b.write_h5ad(pb)
    ad.settings.zarr_write_format = 2
    try:
        c.write_zarr(pc)
    finally:
        ad.settings.zarr_write_format = 3
    return [(pa, a), (pb, b), (pc, c)]


def _datasets(out: Path) -> list[ad.AnnData]:
    names = sorted((p.name for p in out.iterdir() if p.name.startswith("dataset_")),
                   key=lambda s: int(s.split("_")[1]))
    assert names == [f"dataset_{i}" for i in range(len(names))]
    return [ad.read_zarr(out / n) for n in names]


def _check(out: Path, srcs, var_names: list[str], layers=False, obsm=False, ids=None) -> ad.AnnData:
    parts = _datasets(out)
    for p in parts:
        assert list(p.var_names) == var_names
    full = ad.concat(parts, merge="same")
    total = sum(a.n_obs for _, a in srcs)
    assert full.n_obs == total
    keys = full.obs["key"].to_numpy()
    assert len(np.unique(keys)) == total
    # src_path and categories
    for s, (path, a) in enumerate(srcs):
        sel = (keys // 1_000_000) == (s if ids is None else ids[s])
        assert sel.sum() == a.n_obs
        assert set(full.obs["src_path"][sel].astype(str)) == {str(path)}
        rows = keys[sel] % 1_000_000
        assert np.array_equal(full.obs["ct"][sel].astype(str).to_numpy(),
                              a.obs["ct"].astype(str).to_numpy()[rows])
        assert np.allclose(full.obs["score"][sel].to_numpy(), a.obs["score"].to_numpy()[rows])
        # X mapped to the output var: genes the input lacks are zeros, dropped genes gone
        src_x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
        ref = pd.DataFrame(src_x, columns=list(a.var_names)).reindex(columns=var_names,
                                                                     fill_value=0).to_numpy()
        got = full.X[np.flatnonzero(sel)]
        got = got.toarray() if sp.issparse(got) else np.asarray(got)
        assert np.array_equal(got, ref[rows])
        if layers:
            refc = pd.DataFrame(a.layers["counts"].toarray(), columns=list(a.var_names)).reindex(
                columns=var_names, fill_value=0).to_numpy()
            gotc = full.layers["counts"][np.flatnonzero(sel)]
            gotc = gotc.toarray() if sp.issparse(gotc) else np.asarray(gotc)
            assert np.array_equal(gotc, refc[rows])
        if obsm:
            assert np.array_equal(full.obsm["emb"][np.flatnonzero(sel)], a.obsm["emb"][rows])
    # unified categories: first-seen order
    seen: list[str] = []
    for _, a in srcs:
        for c in a.obs["ct"].cat.categories:
            if c not in seen:
                seen.append(c)
    for p in parts:
        assert list(p.obs["ct"].cat.categories) == seen
    assert full.obs_names.is_unique
    return full


def test_union(inputs, tmp_path):
    out = tmp_path / "coll.zarr"
    annstream.convert([p for p, _ in inputs], out, seed=1, dataset_size=128, progress=False,
                      layers=["counts"], obsm=["emb"], threads=2)
    var = [f"g{i}" for i in range(10)] + [f"g{i}" for i in (14, 13, 12, 11, 10)] + ["g20"]
    full = _check(out, inputs, var, layers=True, obsm=True)
    assert len(_datasets(out)) == 6  # 650 rows / 128
    # uniform shuffle sanity: adjacent rows come from the same input about as often as chance
    src = full.obs["key"].to_numpy() // 1_000_000
    p = np.bincount(src) / len(src)
    same = np.mean(src[1:] == src[:-1])
    assert abs(same - np.sum(p * p)) < 0.1
    assert not np.all(np.diff(full.obs["key"].to_numpy()) > 0)
    # annbatch's layout and annstream's own reader
    import zarr

    root = zarr.open_group(out, mode="r")  # through the consolidated metadata
    assert root.attrs["encoding-type"] == "annbatch-preshuffled"
    assert root.metadata.consolidated_metadata is not None
    via_root = ad.io.read_elem(root["dataset_1"])
    assert via_root.n_obs == 128 and list(via_root.var_names) == var
    with annstream.open(out / "dataset_0") as st:
        X = st["X"].read_rows([0, 1, 2])
        assert X.shape == (3, len(var))


def test_intersection_and_list(inputs, tmp_path):
    out = tmp_path / "inter.zarr"
    annstream.convert([p for p, _ in inputs[:2]], out, var="intersection", dataset_size=10_000,
                      progress=False)
    _check(out, inputs[:2], [f"g{i}" for i in range(5, 10)])
    out2 = tmp_path / "list.zarr"
    annstream.convert([p for p, _ in inputs], out2, var=["g20", "g3", "g99", "g12"],
                      dataset_size="16KiB", progress=False)
    _check(out2, inputs, ["g20", "g3", "g99", "g12"])
    assert len(_datasets(out2)) > 1


def test_dense_inputs_give_dense_x(inputs, tmp_path):
    out = tmp_path / "dense.zarr"
    annstream.convert([inputs[2][0]], out, dataset_size=100, progress=False, obsm=["emb"])
    parts = _datasets(out)
    assert all(isinstance(p.X, np.ndarray) for p in parts)
    _check(out, inputs[2:], ["g3", "g20", "g7"], obsm=True, ids=[2])


def test_small_memory_budget(inputs, tmp_path):
    out = tmp_path / "small.zarr"
    calls = []
    annstream.convert([p for p, _ in inputs], out, dataset_size=400, memory=65536,
                      compressor="zstd", progress=lambda d, t: calls.append((d, t)))
    var = [f"g{i}" for i in range(10)] + [f"g{i}" for i in (14, 13, 12, 11, 10)] + ["g20"]
    full = _check(out, inputs, var)
    assert calls and calls[-1] == (650, 650)
    # 650 rows > memory / 128: the keyed bijection (not the Fisher-Yates table) shuffled them
    src = full.obs["key"].to_numpy() // 1_000_000
    p = np.bincount(src) / len(src)
    assert abs(np.mean(src[1:] == src[:-1]) - np.sum(p * p)) < 0.1
    assert not [p for p in tmp_path.iterdir() if p.name != "small.zarr"]


def test_overwrite_refused_and_replaced(inputs, tmp_path):
    out = tmp_path / "ow.zarr"
    paths = [p for p, _ in inputs[:1]]
    annstream.convert(paths, out, dataset_size=100, progress=False)
    with pytest.raises(FileExistsError):
        annstream.convert(paths, out, progress=False)
    annstream.convert(paths, out, dataset_size=50, overwrite=True, progress=False)
    assert len(_datasets(out)) == 6
    with pytest.raises(FileNotFoundError):
        annstream.convert([tmp_path / "missing.zarr"], tmp_path / "x.zarr", progress=False)
    with pytest.raises(ValueError):
        annstream.convert(paths, tmp_path / "y.zarr", var="outer", progress=False)


def test_append_keeps_new_genes(inputs, tmp_path):
    out = tmp_path / "app.zarr"
    annstream.convert([inputs[0][0]], out, dataset_size=100, progress=False)
    annstream.convert([inputs[1][0]], out, dataset_size=100, append=True, progress=False)
    parts = _datasets(out)
    full = ad.concat(parts, merge="same")
    assert full.n_obs == 500
    assert list(parts[0].var_names) == [f"g{i}" for i in range(10)] + [
        f"g{i}" for i in (14, 13, 12, 11, 10)]
    assert set(full.obs["src_path"].astype(str)) == {str(inputs[0][0]), str(inputs[1][0])}


@pytest.mark.parametrize("phase", ["scatter", "write"])
def test_interrupted_run_leaves_nothing_valid(inputs, tmp_path, phase):
    """SIGKILL while scattering rows (pass 1) or while writing datasets (pass 2): no output, only
    clearly temporary siblings; a rerun succeeds."""
    out = tmp_path / "killed.zarr"
    cond = "True" if phase == "scatter" else "done > total // 2 + 100"
    script = textwrap.dedent(f"""
        import sys, time, annstream
        def cb(done, total):
            if {cond}:
                print("started", done, total, flush=True)
                time.sleep(0.5)
        annstream.convert({[str(p) for p, _ in inputs]!r}, {str(out)!r}, dataset_size=64,
                          memory=65536, progress=cb)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    line = proc.stdout.readline().split()
    assert line[:1] == [b"started"]
    if phase == "write":
        assert int(line[1]) > int(line[2]) // 2
    time.sleep(0.1)  # inside the progress call: the conversion cannot finish meanwhile
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(".runs-" in n or ".tmp-" in n for n in left), left
    if phase == "write":
        assert any(".tmp-" in n for n in left)  # the collection being written
        for n in left:
            assert not (tmp_path / n / "zarr.json").exists()
    annstream.convert([p for p, _ in inputs], out, dataset_size=64, progress=False)
    assert len(_datasets(out)) == 11


def test_keyboard_interrupt_cancels(inputs, tmp_path):
    out = tmp_path / "cancel.zarr"

    def cb(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        annstream.convert([p for p, _ in inputs], out, dataset_size=64, progress=cb)
    assert not out.exists()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("sorted_", [False, True], ids=["unsorted", "sorted"])
def test_values_exact_bit_for_bit(tmp_path, sorted_):
    """The run files store small integer values in 1 or 2 bytes and the columns as deltas: every
    value must come back with the same bits (-0.0, NaN, infinities, 255/256, 65535/65536,
    fractions, negatives), for every value type, explicit zeros and unsorted input columns
    included."""
    special = np.array([0.0, -0.0, 1.0, 2.0, 255.0, 256.0, 65535.0, 65536.0, 0.5, -1.0, np.nan,
                        np.inf, -np.inf, 1e-30, 3e38, 7.0], dtype=np.float32)
    n, genes = 64, [f"g{i}" for i in range(300)]
    rng = np.random.default_rng(5)
    rows_i, rows_j, vals = [], [], []
    for r in range(n):
        k = rng.integers(0, 40)
        cols = rng.choice(len(genes), size=k, replace=False)  # unsorted within the row
        rows_i += [r] * k
        rows_j += list(cols)
        vals += list(special[rng.integers(0, len(special), size=k)])
    x = sp.csr_matrix((np.array(vals, np.float32), (rows_i, rows_j)), shape=(n, len(genes)))
    # coo -> csr sorts; rebuild with each row's columns in random order and explicit zeros kept
    indptr, indices, data = [0], [], []
    for r in range(n):
        sel = np.flatnonzero(np.array(rows_i) == r)
        perm = rng.permutation(sel)
        indices += [rows_j[i] for i in perm]
        data += [vals[i] for i in perm]
        indptr.append(len(indices))
    x = sp.csr_matrix((np.array(data, np.float32), np.array(indices, np.int32),
                       np.array(indptr, np.int64)), shape=(n, len(genes)))
    assert not x.has_sorted_indices
    if sorted_:  # the one-pass path for sorted float32 rows
        x.sort_indices()
    obs = pd.DataFrame({"key": np.arange(n, dtype=np.int64)}, index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))
    big = rng.integers(-2**40, 2**40, size=(n, len(genes)), dtype=np.int64)
    big[rng.random(big.shape) < 0.8] = 0
    big[0, :5] = [1, 255, 256, 65535, 65536]
    a.layers["i64"] = big
    f64 = x.astype(np.float64)
    f64.data[::3] = np.array([65535.0, 65536.0, -0.0, 1.0 / 3])[np.arange(len(f64.data[::3])) % 4]
    a.layers["f64"] = f64
    a.layers["u16"] = sp.csr_matrix(np.abs(big[:, :]) % 70000 % 65536).astype(np.uint16)
    src = tmp_path / "special.h5ad"
    a.write_h5ad(src)
    out = tmp_path / "special.zarr"
    annstream.convert([src], out, dataset_size=20, seed=3, progress=False,
                      layers=["i64", "f64", "u16"], memory=65536)
    parts = _datasets(out)
    assert len(parts) == 4
    full = ad.concat(parts, merge="same")
    keys = full.obs["key"].to_numpy()
    assert sorted(keys) == list(range(n))
    assert list(full.var_names) == genes

    def rows_of(m, r):
        m = sp.csr_matrix(m) if not sp.issparse(m) else m
        s, e = m.indptr[r], m.indptr[r + 1]
        return m.indices[s:e], m.data[s:e]

    def canon(m, r):  # the input row, columns sorted (stable: duplicates keep their order)
        ind, dat = rows_of(m, r)
        o = np.argsort(ind, kind="stable")
        return ind[o], dat[o]

    for i, k in enumerate(keys):
        for name, got_m, ref_m in [("X", full.X, a.X), ("f64", full.layers["f64"], a.layers["f64"]),
                                   ("u16", full.layers["u16"], a.layers["u16"])]:
            gi, gd = rows_of(got_m, i)
            ri, rd = canon(ref_m, k)
            assert np.array_equal(gi, ri), (name, k)
            assert gd.dtype == rd.dtype, name
            assert gd.tobytes() == rd.tobytes(), (name, k)
        got_big = full.layers["i64"][i]
        got_big = got_big.toarray().ravel() if sp.issparse(got_big) else np.asarray(got_big).ravel()
        assert np.array_equal(got_big, big[k])


def _annbatch_python() -> str | None:
    env = os.environ.get("ANS_ANNBATCH_PYTHON")
    if env:
        return env
    default = Path(__file__).resolve().parents[2] / ".bench-annbatch-venv" / "bin" / "python"
    return str(default) if default.exists() else None


_ANNBATCH_READ = textwrap.dedent("""
    import sys
    import numpy as np
    import scipy.sparse as sp
    import annbatch

    coll = annbatch.DatasetCollection(sys.argv[1], mode="r")
    loader = annbatch.Loader(chunk_size=16, preload_nchunks=4, batch_size=32, shuffle=True,
                             drop_last=False, to=None, preload_to_gpu=False,
                             rng=np.random.default_rng(0))
    loader.use_collection(coll)
    keys, names, xs, var = [], [], [], None
    for b in loader:
        x = b["X"]
        xs.append(sp.csr_matrix(x) if sp.issparse(x) else sp.csr_matrix(np.asarray(x)))
        keys.append(b["obs"]["key"].to_numpy())
        names += [str(s) for s in b["obs"].index]
        var = [str(v) for v in b["var"].index]
    np.savez(sys.argv[2], keys=np.concatenate(keys), names=np.array(names),
             X=sp.vstack(xs).toarray(), var=np.array(var), n_obs=loader.n_obs)
""")


def test_annbatch_loader_reads_output(inputs, tmp_path):
    """annbatch's own Loader.use_collection(DatasetCollection(out, mode="r")) over annstream's
    output returns every row exactly once, with its values (checked against the inputs by key).
    annbatch needs Python >= 3.12, so it runs in a separate interpreter: ANS_ANNBATCH_PYTHON, or
    .bench-annbatch-venv/bin/python (tools/setup_annbatch.sh makes it)."""
    py = _annbatch_python()
    if not py:
        pytest.skip("no Python with annbatch (set ANS_ANNBATCH_PYTHON or run tools/setup_annbatch.sh)")
    probe = subprocess.run([py, "-c", "import annbatch"], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"{py} cannot import annbatch: {last[-300:]}")
    out = tmp_path / "coll.zarr"
    annstream.convert([p for p, _ in inputs], out, seed=4, dataset_size=128, progress=False)
    res = tmp_path / "annbatch.npz"
    r = subprocess.run([py, "-c", _ANNBATCH_READ, str(out), str(res)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(res)
    var = [f"g{i}" for i in range(10)] + [f"g{i}" for i in (14, 13, 12, 11, 10)] + ["g20"]
    assert list(got["var"]) == var
    total = sum(a.n_obs for _, a in inputs)
    keys = got["keys"]
    assert int(got["n_obs"]) == total and len(keys) == total
    assert len(np.unique(keys)) == total  # every row exactly once
    assert len(set(got["names"])) == total
    X = got["X"]
    for s, (_, a) in enumerate(inputs):
        sel = np.flatnonzero(keys // 1_000_000 == s)
        assert len(sel) == a.n_obs
        rows = keys[sel] % 1_000_000
        src_x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
        ref = pd.DataFrame(src_x, columns=list(a.var_names)).reindex(columns=var,
                                                                     fill_value=0).to_numpy()
        assert np.array_equal(X[sel], ref[rows])
        # obs names: the input's, with "-<input>" where an earlier input had the same name
        names = got["names"][sel]
        base = np.array([str(n).rsplit("-", 1)[0] if s > 0 else str(n) for n in names])
        assert np.array_equal(base, np.asarray(a.obs_names)[rows])


@pytest.mark.parametrize("shuffle", [True, False])
def test_groupby_stable_sort_within_datasets(inputs, tmp_path, shuffle):
    """groupby=["ct", "score"]: each dataset is the ungrouped conversion's dataset (same seed), stably
    sorted by the unified category order of ct, then by score - what pandas' stable sort of the
    output gives; the rows and values are unchanged."""
    srcs = inputs
    plain, grouped = tmp_path / "plain.zarr", tmp_path / "grouped.zarr"
    kw = dict(seed=5, dataset_size=160, shuffle=shuffle, progress=False)
    annstream.convert([p for p, _ in srcs], plain, **kw)
    annstream.convert([p for p, _ in srcs], grouped, groupby=["ct"], **kw)
    full = _check(grouped, srcs, [f"g{i}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 13, 12, 11,
                                                     10, 20)])
    assert full.n_obs == 650
    for p, g in zip(_datasets(plain), _datasets(grouped)):
        codes = p.obs["ct"].cat.codes.to_numpy()
        want = np.argsort(codes, kind="stable")
        assert np.array_equal(g.obs["key"].to_numpy(), p.obs["key"].to_numpy()[want])
        assert np.all(np.diff(g.obs["ct"].cat.codes.to_numpy()) >= 0)
        gx = g.X.toarray() if sp.issparse(g.X) else np.asarray(g.X)
        px = p.X.toarray() if sp.issparse(p.X) else np.asarray(p.X)
        assert np.array_equal(gx, px[want])
    # two columns: a categorical, then a float (ties broken by score, then the shuffled order)
    two = tmp_path / "two.zarr"
    annstream.convert([p for p, _ in srcs], two, groupby=["src_path", "score"], **kw)
    for p, g in zip(_datasets(plain), _datasets(two)):
        df = pd.DataFrame({"src": p.obs["src_path"].cat.codes.to_numpy(),
                           "score": p.obs["score"].to_numpy()})
        want = df.sort_values(["src", "score"], kind="stable").index.to_numpy()
        assert np.array_equal(g.obs["key"].to_numpy(), p.obs["key"].to_numpy()[want])


def test_groupby_errors(inputs, tmp_path):
    paths = [p for p, _ in inputs]
    with pytest.raises(ValueError, match="not among the obs columns"):
        annstream.convert(paths, tmp_path / "a.zarr", groupby="nope", progress=False)
    with pytest.raises(ValueError, match="not among the obs columns"):
        annstream.convert(paths, tmp_path / "b.zarr", obs=["key"], groupby=["ct"], progress=False)
    with pytest.raises(TypeError):
        annstream.convert(paths, tmp_path / "c.zarr", groupby=[3], progress=False)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_groupby_strings_and_missing_values(tmp_path):
    """groupby on a string column and on a nullable integer column with missing values: bytewise
    string order, missing values last; compared with pandas' stable sort of the ungrouped output."""
    rng = np.random.default_rng(7)
    paths = []
    for i in range(2):
        n = 120
        words = np.array(["beta", "alpha", "Gamma", "alp", "", "zeta"])
        nint = pd.array(rng.integers(0, 4, n), dtype="Int64")
        nint[rng.random(n) < 0.2] = pd.NA
        obs = pd.DataFrame({"key": np.arange(n) + 1000 * i, "word": words[rng.integers(0, 6, n)],
                            "level": nint}, index=[f"c{i}_{r}" for r in range(n)])
        a = ad.AnnData(X=sp.csr_matrix(rng.random((n, 5)).astype(np.float32)), obs=obs,
                       var=pd.DataFrame(index=[f"g{k}" for k in range(5)]))
        p = tmp_path / f"in{i}.zarr"
        a.write_zarr(p)
        paths.append(p)
    kw = dict(seed=3, dataset_size=100, progress=False)
    plain = tmp_path / "plain.zarr"
    annstream.convert(paths, plain, **kw)
    for cols in (["word"], ["level", "word"]):
        out = tmp_path / ("g_" + "_".join(cols) + ".zarr")
        annstream.convert(paths, out, groupby=cols, **kw)
        for p, g in zip(_datasets(plain), _datasets(out)):
            df = p.obs.reset_index(drop=True)
            if "word" in cols:
                df["word"] = df["word"].astype(str).map(lambda s: s.encode())  # bytewise order
            want = df.sort_values(cols, kind="stable", na_position="last").index.to_numpy()
            assert np.array_equal(g.obs["key"].to_numpy(), p.obs["key"].to_numpy()[want]), cols
