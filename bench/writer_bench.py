#!/usr/bin/env python3
"""Writer benchmark: annstream convert vs annbatch DatasetCollection.add_adatas (issue 4 item 8).

    .venv/bin/python bench/writer_bench.py                       # 3 x 340k cells, ~1k nnz/cell
    .venv/bin/python bench/writer_bench.py --n-obs 5000 --tools annstream3,annbatch   # smoke run

Inputs: N .h5ad files (default 3 x 340 000 cells, 20 000 genes each, input i holds genes
gene_{i*2000} .. gene_{i*2000+19999}: partial overlap, union 24 000), X CSR float32 counts from
make_data.generate_block (mean_umis 2200 -> ~1 000 nnz/cell), int32 indices, int64 indptr, obs
cell_type (categorical, 8 types) + total_counts, written with h5py block by block (bounded memory,
uncompressed chunked datasets) in anndata's on-disk layout; obs/var/uns... with anndata's write_elem.
Cached under bench/data/writer_in_*.h5ad (a .json beside each is written last).

Runs, each in a fresh subprocess, inputs evicted from the page cache before each:
  annstream1  .venv/bin/annstream convert IN0 -o OUT --dataset-size ROWS --seed 0     (1 input)
  annstream3  .venv/bin/annstream convert IN0 IN1 IN2 -o OUT --dataset-size ROWS --seed 0
  annbatch    writer_annbatch_worker.py write OUT IN0 IN1 IN2 --dataset-size SIZE (zarrs pipeline)
Wall time and peak RSS (ru_maxrss of the child from os.wait4), then checks of both outputs
(writer_annbatch_worker.py check: rows, nnz, var, anndata.read_zarr of one dataset, one annbatch
Loader batch, sum of X over all datasets and 300 rows per dataset compared with the input rows). Prints a markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from annbatch_worker import dir_files, evict  # noqa: E402
from make_data import Spec, generate_block, generate_csr, n_blocks, _profiles  # noqa: E402

DATA = BENCH_DIR / "data"
ANNSTREAM = REPO / ".venv" / "bin" / "annstream"
ABPY = REPO / ".bench-annbatch-venv" / "bin" / "python"
WORKER = BENCH_DIR / "writer_annbatch_worker.py"
GEN_VERSION = 1


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Inputs


def input_spec(i: int, a) -> Spec:
    return Spec(n_obs=a.n_obs, n_vars=a.n_vars, seed=i, mean_umis=a.mean_umis)


def input_path(i: int, a) -> Path:
    return DATA / f"writer_in_v{GEN_VERSION}_n{a.n_obs}_g{a.n_vars}_u{a.mean_umis:g}_off{i * a.gene_shift}_s{i}.h5ad"


def write_h5ad(path: Path, spec: Spec, offset: int, prefix: str, nice: int = 0) -> dict:
    import h5py
    import numpy as np
    import pandas as pd
    from anndata.io import write_elem

    if nice:
        os.nice(nice)
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".tmp")
    cdfs = _profiles(spec)
    codes, libs = [], []
    indptr = np.zeros(spec.n_obs + 1, dtype=np.int64)
    nnz = 0
    xsum = 0.0
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        X = f.create_group("X")
        X.attrs["encoding-type"] = "csr_matrix"
        X.attrs["encoding-version"] = "0.1.0"
        X.attrs["shape"] = np.array([spec.n_obs, spec.n_vars], dtype=np.int64)
        ch = 1 << 18
        d = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype="f4", chunks=(ch,))
        ix = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="i4", chunks=(ch,))
        row = 0
        for b in range(n_blocks(spec)):
            row_nnz, indices, data, ct, lib = generate_block(spec, b, cdfs)
            n = indices.size
            d.resize((nnz + n,))
            ix.resize((nnz + n,))
            d[nnz:] = data
            ix[nnz:] = indices
            np.cumsum(row_nnz, out=indptr[row + 1 : row + 1 + row_nnz.size])
            indptr[row + 1 : row + 1 + row_nnz.size] += nnz
            row += row_nnz.size
            nnz += n
            xsum += float(data.sum(dtype=np.float64))
            codes.append(ct)
            libs.append(lib)
        X.create_dataset("indptr", data=indptr)
        obs = pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(np.concatenate(codes), categories=[f"type_{t}" for t in range(8)]),
                "total_counts": np.concatenate(libs),
            },
            index=pd.Index([f"{prefix}cell_{r}" for r in range(spec.n_obs)]),
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index([f"gene_{offset + k}" for k in range(spec.n_vars)])))
        for k in ("uns", "obsm", "varm", "layers", "obsp", "varp"):
            write_elem(f, k, {})
    os.replace(tmp, path)
    meta = {"gen_version": GEN_VERSION, "n_obs": spec.n_obs, "n_vars": spec.n_vars, "gene_offset": offset,
            "nnz": nnz, "x_sum": xsum, "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0,
            "spec": spec.__dict__ if hasattr(spec, "__dict__") else None}
    path.with_name(path.name + ".json").write_text(json.dumps(meta))
    return meta


def verify_small() -> None:
    """Write a 3000-cell input and read it back with anndata.read_h5ad."""
    import anndata as ad
    import numpy as np

    spec = Spec(n_obs=3000, n_vars=500, seed=7, mean_umis=600, block_rows=1024)
    p = DATA / "writer_verify_small.h5ad"
    write_h5ad(p, spec, 100, "v_")
    adata = ad.read_h5ad(p)
    ref = generate_csr(spec)
    assert adata.shape == (3000, 500), adata.shape
    assert (adata.X != ref).nnz == 0 and adata.X.dtype == np.float32
    assert str(adata.obs["cell_type"].dtype) == "category" and adata.var_names[0] == "gene_100"
    assert adata.obs_names.is_unique
    log("small h5ad verified with anndata.read_h5ad:", adata)


def ensure_inputs(a) -> list[tuple[Path, dict]]:
    todo = []
    out = []
    for i in range(a.n_inputs):
        p = input_path(i, a)
        mp = p.with_name(p.name + ".json")
        if p.exists() and mp.exists():
            out.append((p, json.loads(mp.read_text())))
        else:
            todo.append(i)
            out.append((p, None))
    if todo:
        log(f"generating inputs {todo} ({a.gen_procs} processes, nice {a.nice}) ...")
        with ProcessPoolExecutor(max_workers=a.gen_procs) as ex:
            futs = {i: ex.submit(write_h5ad, input_path(i, a), input_spec(i, a), i * a.gene_shift, f"in{i}_", a.nice)
                    for i in todo}
            for i, fu in futs.items():
                m = fu.result()
                out[i] = (input_path(i, a), m)
                log(f"input {i}: {m['n_obs']} cells, nnz {m['nnz']}, {m['bytes'] / 1e9:.2f} GB, {m['seconds']:.0f} s")
    return out


# --------------------------------------------------------------------------------------------------
# Runs


def run_measured(cmd: list[str], timeout: float | None) -> dict:
    """Run cmd in a fresh process; wall time and ru_maxrss of the child via os.wait4."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # drain pipes in threads so the child never blocks
    import threading

    buf = {"out": [], "err": []}
    ths = [threading.Thread(target=lambda s, k: buf[k].extend(s), args=(p.stdout, "out"), daemon=True),
           threading.Thread(target=lambda s, k: buf[k].extend(s), args=(p.stderr, "err"), daemon=True)]
    for t in ths:
        t.start()
    killed = False
    peak = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0, "VmRSS": 0}

    def sample():
        try:
            for line in open(f"/proc/{p.pid}/status"):
                k, _, v = line.partition(":")
                if k in peak:
                    peak[k] = max(peak[k], int(v.split()[0]))
        except (OSError, ValueError):
            pass

    while True:
        sample()
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if timeout and time.perf_counter() - t0 > timeout:
            p.kill()
            killed = True
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in ths:
        t.join(5)
    return {"cmd": cmd, "wall_s": wall, "rc": p.returncode, "killed_timeout": killed,
            "peak_rss_mib": ru.ru_maxrss / 1024,
            "sampled_peak_kib": peak, "cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime,
            "stdout": "".join(buf["out"])[-4000:], "stderr": "".join(buf["err"])[-3000:]}


def last_json(s: str):
    for line in reversed(s.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in dir_files(path)) if path.exists() else 0


def machine() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
        mem_gib = int(mem) / 2**20
    except OSError:
        mem_gib = None
    return {"cpu": cpu, "nproc": os.cpu_count(), "ram_gib": mem_gib, "kernel": platform.release(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-inputs", type=int, default=3)
    p.add_argument("--n-obs", type=int, default=340_000, help="cells per input")
    p.add_argument("--n-vars", type=int, default=20_000)
    p.add_argument("--gene-shift", type=int, default=2_000)
    p.add_argument("--mean-umis", type=float, default=2200.0)
    p.add_argument("--dataset-size", default="262144", help="annstream --dataset-size (rows)")
    p.add_argument("--annbatch-dataset-size", default="2GB", help="annbatch dataset_size (size string or rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tools", default="annstream1,annstream3,annbatch")
    p.add_argument("--annbatch-timeout", type=float, default=25 * 60)
    p.add_argument("--gen-procs", type=int, default=2)
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--no-checks", action="store_true")
    p.add_argument("--checks-for", default="", help="comma list of tools to check (default: all)")
    p.add_argument("--json-out", default=str(DATA / "writer_results.json"))
    p.add_argument("--annstream-bin", default=str(ANNSTREAM),
                   help="the annstream tool to run (default: the one installed in .venv)")
    a = p.parse_args(argv)
    DATA.mkdir(parents=True, exist_ok=True)

    mach = machine()
    load_before = os.getloadavg()
    verify_small()
    inputs = ensure_inputs(a)
    paths = [str(pth) for pth, _ in inputs]
    in_rows = sum(m["n_obs"] for _, m in inputs)
    in_nnz = sum(m["nnz"] for _, m in inputs)
    union = len({a.gene_shift * i + k for i in range(a.n_inputs) for k in range(a.n_vars)})
    tag = f"n{a.n_obs}x{a.n_inputs}"
    res: dict = {"machine": mach, "inputs": [m for _, m in inputs], "input_rows": in_rows, "input_nnz": in_nnz,
                 "union_genes": union, "runs": {}}
    log(f"inputs: {in_rows} cells, nnz {in_nnz}, {sum(m['bytes'] for _, m in inputs) / 1e9:.2f} GB, union {union} genes")

    for tool in a.tools.split(","):
        if tool.startswith("annstream"):
            name, _, mem = tool.partition(":")  # annstream3:1GiB = 3 inputs, --memory 1GiB
            k = int(name.removeprefix("annstream") or a.n_inputs)
            out = DATA / f"writer_out_{tag}_annstream_{k}in.zarr"
            cmd = [a.annstream_bin, "convert", *paths[:k], "-o", str(out), "--dataset-size", a.dataset_size,
                   "--seed", str(a.seed), "--overwrite", "--quiet"] + (["--memory", mem] if mem else [])
            timeout = None
        elif tool == "annbatch":
            k = a.n_inputs
            out = DATA / f"writer_out_{tag}_annbatch.zarr"
            cmd = [str(ABPY), str(WORKER), "write", str(out), *paths, "--dataset-size", a.annbatch_dataset_size,
                   "--seed", str(a.seed)]
            timeout = a.annbatch_timeout
        else:
            raise SystemExit(f"unknown tool {tool}")
        shutil.rmtree(out, ignore_errors=True)
        for pth in paths[:k]:
            evict(pth)
        # the previous run's buffered output (annbatch writes 2.5 GB through the page cache) is
        # still being written back for seconds after it exits: flush it so that the next run
        # does not share the disk with it
        t_sync = time.perf_counter()
        os.sync()
        sync_s = time.perf_counter() - t_sync
        log(f"{tool}: {' '.join(cmd)}")
        r = run_measured(cmd, timeout)
        r["sync_before_s"] = sync_s
        r.update(tool=tool, n_inputs=k, out=str(out), out_bytes=du(out), loadavg_after=os.getloadavg(),
                 inner=last_json(r["stdout"]))
        log(f"{tool}: rc {r['rc']} wall {r['wall_s']:.1f} s peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"out {r['out_bytes'] / 1e9:.2f} GB{' KILLED (timeout)' if r['killed_timeout'] else ''}")
        if r["rc"] != 0:
            log(r["stderr"][-2000:])
        if not a.no_checks and r["rc"] == 0 and (not a.checks_for or tool in a.checks_for.split(",")):
            c = run_measured([str(ABPY), str(WORKER), "check", str(out), "--read-one", "--loader", "--deep", *paths[:k]], 900)
            r["check"] = last_json(c["stdout"]) or {"rc": c["rc"], "stderr": c["stderr"][-2000:]}
            ck = r["check"]
            log(f"{tool} check: {json.dumps({x: ck.get(x) for x in ('n_datasets', 'n_obs', 'nnz', 'n_var', 'var_gene_range', 'read_one', 'loader', 'deep')})[:1500]}")
        key, n = tool, 2
        while key in res["runs"]:
            key, n = f"{tool}#{n}", n + 1
        res["runs"][key] = r
        Path(a.json_out).write_text(json.dumps(res, indent=1))

    res["loadavg_before"] = load_before
    res["loadavg_after"] = os.getloadavg()
    # table
    base = res["runs"].get(f"annstream{a.n_inputs}") or next(iter(res["runs"].values()), None)
    print(f"\nMachine: {mach['cpu']}, {mach['nproc']} CPUs, {mach['ram_gib']:.1f} GiB RAM, kernel {mach['kernel']}, "
          f"{mach['date_utc']} UTC; load avg before {load_before[0]:.2f}, after {res['loadavg_after'][0]:.2f}")
    print(f"Inputs: {a.n_inputs} x {a.n_obs} cells = {in_rows} cells, {a.n_vars} genes each (shift {a.gene_shift}, "
          f"union {union}), nnz {in_nnz} ({in_nnz / in_rows:.0f}/cell)\n")
    print("| run | inputs | wall s | ratio vs annstream | peak RSS MiB | rows out | nnz out | var out | datasets | output GB | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tool, r in res["runs"].items():
        ck = r.get("check") or {}
        ratio = r["wall_s"] / base["wall_s"] if base and base["rc"] == 0 else float("nan")
        notes = []
        if r["killed_timeout"]:
            notes.append("killed at timeout")
        if r["rc"] != 0:
            notes.append(f"rc {r['rc']}")
        inner = r.get("inner") or {}
        if inner.get("rows_for_size"):
            notes.append(f"dataset_size {inner['dataset_size_arg']} = {inner['rows_for_size']['rows']} rows")
        sp_ = r.get("sampled_peak_kib") or {}
        notes.append(f"sampled RssAnon {sp_.get('RssAnon', 0) / 1024:.0f} MiB, RssFile {sp_.get('RssFile', 0) / 1024:.0f} MiB")
        print(f"| {tool} | {r['n_inputs']} | {r['wall_s']:.1f} | {ratio:.2f} | {r['peak_rss_mib']:.0f} | {ck.get('n_obs')} | "
              f"{ck.get('nnz')} | {ck.get('n_var')} | {ck.get('n_datasets')} | {r['out_bytes'] / 1e9:.2f} | {'; '.join(notes)} |")
    Path(a.json_out).write_text(json.dumps(res, indent=1))
    print("JSON " + json.dumps({k: v for k, v in res.items() if k != "runs"} | {
        "runs": {t: {x: r.get(x) for x in ("wall_s", "rc", "peak_rss_mib", "sampled_peak_kib", "cpu_user_s", "cpu_sys_s", "out_bytes", "killed_timeout", "inner")}
                 for t, r in res["runs"].items()}}))
    return 0 if all(r["rc"] == 0 for r in res["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
