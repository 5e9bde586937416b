"""obs / var / raw var data frames against anndata's own reading of the same store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from stores import CONTAINERS, SPECS

STORE_CASES = [(c, s) for c in CONTAINERS for s in SPECS]
RAW_CASES = [(c, s) for c in CONTAINERS for s, spec in SPECS.items() if spec.has_raw]
COLUMN_CASES = [
    (c, s, col)
    for c in CONTAINERS
    for s, spec in SPECS.items()
    for col in spec.obs_columns
]


def _case_id(case) -> str:
    return "/".join(str(x) for x in case)


@pytest.mark.parametrize("case", STORE_CASES, ids=_case_id)
def test_read_obs(stores, case):
    container, spec_name = case
    _, adata = stores.get(spec_name, container)
    got = stores.open(spec_name, container).read_obs()
    pd.testing.assert_frame_equal(got, adata.obs)
    assert got.index.name == adata.obs.index.name
    assert list(got.columns) == list(SPECS[spec_name].obs_columns)


@pytest.mark.parametrize("case", STORE_CASES, ids=_case_id)
def test_read_var(stores, case):
    container, spec_name = case
    _, adata = stores.get(spec_name, container)
    got = stores.open(spec_name, container).read_var()
    pd.testing.assert_frame_equal(got, adata.var)
    assert got.index.name == adata.var.index.name
    assert list(got.columns) == list(SPECS[spec_name].var_columns)


@pytest.mark.parametrize("case", RAW_CASES, ids=_case_id)
def test_read_raw_var(stores, case):
    container, spec_name = case
    _, adata = stores.get(spec_name, container)
    got = stores.open(spec_name, container).read_var(raw=True)
    pd.testing.assert_frame_equal(got, adata.raw.var)
    assert got.index.name == adata.raw.var.index.name


@pytest.mark.parametrize("container", CONTAINERS)
def test_no_raw_var(stores, container):
    store = stores.open("dense_x", container)
    with pytest.raises(KeyError):
        store.read_var(raw=True)


@pytest.mark.parametrize("case", COLUMN_CASES, ids=_case_id)
def test_read_one_obs_column(stores, case):
    """Each column kind on its own (a failure names the kind that is wrong)."""
    container, spec_name, column = case
    _, adata = stores.get(spec_name, container)
    got = stores.open(spec_name, container).read_obs(columns=[column])
    pd.testing.assert_frame_equal(got, adata.obs[[column]])
    # the column's array type is exactly anndata's
    assert type(got[column].array) is type(adata.obs[column].array)
    assert got[column].dtype == adata.obs[column].dtype


@pytest.mark.parametrize("container", CONTAINERS)
def test_column_subset_and_order(stores, container):
    _, adata = stores.get("main", container)
    store = stores.open("main", container)
    cols = ["nstr", "cat", "f64", "nint"]  # not the stored order
    pd.testing.assert_frame_equal(store.read_obs(columns=cols), adata.obs[cols])
    pd.testing.assert_frame_equal(store.read_obs(columns=("i8",)), adata.obs[["i8"]])
    pd.testing.assert_frame_equal(store.read_obs(columns="i8"), adata.obs[["i8"]])
    pd.testing.assert_frame_equal(
        store.read_var(columns=["means", "gene_type"]), adata.var[["means", "gene_type"]]
    )
    pd.testing.assert_frame_equal(
        store.read_var(columns=["gene_ids"], raw=True), adata.raw.var[["gene_ids"]]
    )


@pytest.mark.parametrize("container", CONTAINERS)
def test_no_columns(stores, container):
    _, adata = stores.get("main", container)
    store = stores.open("main", container)
    got = store.read_obs(columns=[])
    assert got.shape == (adata.n_obs, 0)
    pd.testing.assert_index_equal(got.index, adata.obs.index)
    # a store whose obs has no columns at all
    _, adata = stores.get("no_x", container)
    pd.testing.assert_frame_equal(stores.open("no_x", container).read_obs(), adata.obs)


@pytest.mark.parametrize("container", CONTAINERS)
def test_unknown_column(stores, container):
    store = stores.open("main", container)
    with pytest.raises(KeyError, match="nope"):
        store.read_obs(columns=["cat", "nope"])
    with pytest.raises(KeyError, match="nope"):
        store.read_var(columns=["nope"])
    with pytest.raises(TypeError):
        store.read_obs(columns=[1, 2])


@pytest.mark.parametrize("container", CONTAINERS)
def test_frame_values_details(stores, container):
    """Spot checks independent of pandas' comparison: NA positions, category order, codes -1."""
    _, adata = stores.get("main", container)
    df = stores.open("main", container).read_obs()
    exp = adata.obs
    np.testing.assert_array_equal(df["nint"].isna().to_numpy(), exp["nint"].isna().to_numpy())
    np.testing.assert_array_equal(df["nbool"].isna().to_numpy(), exp["nbool"].isna().to_numpy())
    np.testing.assert_array_equal(df["nstr"].isna().to_numpy(), exp["nstr"].isna().to_numpy())
    assert df["cat_ord"].cat.ordered
    assert list(df["cat_ord"].cat.categories) == ["lo", "mid", "hi"]
    assert (df["cat_na"].cat.codes == -1).sum() == (exp["cat_na"].cat.codes == -1).sum() > 0
    assert df["cat_num"].cat.categories.dtype == exp["cat_num"].cat.categories.dtype
    assert df["u64"].to_numpy().max() == np.iinfo(np.uint64).max
    assert df["str"].dtype == object
    # results are the caller's: writable
    df.loc[df.index[0], "f32"] = 1.0
