#!/usr/bin/env python3
"""Read a whole sharded blosc-lz4 CSR X in large row slices: annstream vs zarr-python + zarrs.

Every reader reads rows [0, n_obs) of X in slices of --slice-rows rows and builds one scipy
csr_matrix per slice:

  annstream            annstream.open(path, threads=T)["X"].read_rows(slice(a, b))
  zarrs                zarr-python with codec_pipeline.path = zarrs.ZarrsCodecPipeline (strict, so it
                       can not silently fall back), threading.max_workers = T: X/indptr read once, then
                       per slice data[indptr[a]:indptr[b]], indices[...] and a csr_matrix, which is what
                       anndata's backed CSR read does
  zarr-python          the same with zarr-python's default BatchedCodecPipeline (context)
  zarr-python-fused    the same with zarr-python's FusedCodecPipeline, if this zarr has it (context)
  anndata-zarrs        anndata.io.sparse_dataset(zarr group X)[a:b] with the zarrs pipeline (context)

Each reader runs in its own subprocess (no shared zarr config or thread pools).  Every worker first
reads X once, untimed, to warm the page cache and to check the result (nnz and sum of data against the
generator's numbers, sum of indices across readers).  Then come N rounds; in each, every worker does
one timed pass, in an order rotated every round, so that all readers see the same background load.
A pass is timed from opening the store to the last slice.  Reported: median wall seconds, GB/s of
uncompressed X (data + indices + indptr as stored), the ratio of each reader's time to annstream's
(first --threads value), the fastest pass, and the median CPU seconds (user + sys of the worker
process, all threads) of a pass, which is less sensitive than wall time to other load on the machine.

    bench/setup_venvs.sh && .bench-venv/bin/python bench/read_bench.py
    .bench-venv/bin/python bench/read_bench.py --n-obs 20000 --repeats 1      # quick
    .bench-venv/bin/python bench/read_bench.py --readers annstream,zarrs --threads 1,0

The store comes from bench/make_data.py (cached under bench/data/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import make_data  # noqa: E402

ALL_READERS = ["annstream", "zarrs", "zarr-python", "zarr-python-fused", "anndata-zarrs"]
DEFAULT_READERS = ["annstream", "zarrs", "zarr-python", "anndata-zarrs"]
MAIN_READERS = {"annstream", "zarrs"}  # the ones run at each --threads value


# --------------------------------------------------------------------------------------------------
# Worker side: one reader, one thread setting, in this process.


def _slices(n_obs: int, step: int):
    for a in range(0, n_obs, step):
        yield a, min(a + step, n_obs)


def _make_annstream(path: str, threads: int | None):
    import annstream

    def run(check: bool):
        kw = {} if threads is None else {"threads": threads}
        store = annstream.open(path, **kw)
        X = store["X"]
        n_obs = X.shape[0]
        tot = [0, 0.0, 0]
        for a, b in _slices(n_obs, SLICE_ROWS):
            m = X.read_rows(slice(a, b))
            tot[0] += m.nnz
            if check:
                _check_slice(m, a, b)
                tot[1] += float(m.data.sum(dtype="float64"))
                tot[2] += int(m.indices.sum(dtype="int64"))
        close = getattr(store, "close", None)
        if close is not None:
            close()
        return tot

    def info():
        import annstream

        kw = {} if threads is None else {"threads": threads}
        s = annstream.open(path, **kw)
        out = {"annstream": getattr(annstream, "__version__", "?")}
        for attr in ("threads", "n_threads"):
            v = getattr(s, attr, None)
            if v is not None and not callable(v):
                out["threads_effective"] = v
                break
        return out

    return run, info


def _zarr_config(reader: str, threads: int | None) -> dict:
    cfg: dict = {"threading.max_workers": threads}
    if reader in ("zarrs", "anndata-zarrs"):
        cfg["codec_pipeline.path"] = "zarrs.ZarrsCodecPipeline"
        cfg["codec_pipeline.strict"] = True  # raise instead of silently falling back to zarr-python
    elif reader == "zarr-python-fused":
        cfg["codec_pipeline.path"] = "zarr.core.codec_pipeline.FusedCodecPipeline"
        cfg["codec_pipeline.max_workers"] = threads
    else:
        cfg["codec_pipeline.path"] = "zarr.core.codec_pipeline.BatchedCodecPipeline"
    return cfg


def _pipeline_name(arr) -> str:
    aa = getattr(arr, "async_array", None) or getattr(arr, "_async_array")
    p = aa.codec_pipeline
    name = f"{type(p).__module__}.{type(p).__name__}"
    if type(p).__name__ == "ZarrsCodecPipeline" and getattr(p, "impl", None) is None:
        name += " (NO RUST IMPL: fell back)"
    return name


def _make_zarr(path: str, threads: int | None, reader: str):
    import numpy as np
    import scipy.sparse as sp
    import zarr

    if reader in ("zarrs", "anndata-zarrs"):
        import zarrs  # noqa: F401  (registers nothing, but fail early if it is missing)
    zarr.config.set(_zarr_config(reader, threads))
    X_attrs = json.loads((Path(path) / "X" / "zarr.json").read_text())["attributes"]
    n_obs, n_vars = X_attrs["shape"]

    def run_zarr(check: bool):
        g = zarr.open_group(path, mode="r")["X"]
        data, indices = g["data"], g["indices"]
        indptr = g["indptr"][:]
        tot = [0, 0.0, 0]
        for a, b in _slices(n_obs, SLICE_ROWS):
            s0, s1 = int(indptr[a]), int(indptr[b])
            m = sp.csr_matrix((data[s0:s1], indices[s0:s1], indptr[a : b + 1] - s0), shape=(b - a, n_vars))
            tot[0] += m.nnz
            if check:
                _check_slice(m, a, b)
                tot[1] += float(m.data.sum(dtype=np.float64))
                tot[2] += int(m.indices.sum(dtype=np.int64))
        return tot

    def run_anndata(check: bool):
        import anndata as ad

        ds = ad.io.sparse_dataset(zarr.open_group(path, mode="r")["X"])
        tot = [0, 0.0, 0]
        for a, b in _slices(n_obs, SLICE_ROWS):
            m = ds[a:b]
            tot[0] += m.nnz
            if check:
                _check_slice(m, a, b)
                tot[1] += float(m.data.sum(dtype=np.float64))
                tot[2] += int(m.indices.sum(dtype=np.int64))
        return tot

    def info():
        g = zarr.open_group(path, mode="r")["X"]
        out = {"zarr": zarr.__version__, "pipeline": _pipeline_name(g["data"]),
               "config_pipeline": zarr.config.get("codec_pipeline.path"),
               "config_max_workers": zarr.config.get("threading.max_workers")}
        if reader in ("zarrs", "anndata-zarrs"):
            import zarrs

            out["zarrs"] = zarrs.__version__
        if reader == "anndata-zarrs":
            import anndata as ad

            out["anndata"] = ad.__version__
        return out

    return (run_anndata if reader == "anndata-zarrs" else run_zarr), info


def _check_slice(m, a: int, b: int) -> None:
    import scipy.sparse as sp

    assert sp.issparse(m) and m.format == "csr", type(m)
    assert m.shape[0] == b - a, (m.shape, a, b)
    assert str(m.dtype) == "float32", m.dtype
    assert m.indptr[0] == 0 and m.indptr[-1] == m.nnz


SLICE_ROWS = 16384


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def worker(args) -> int:
    """Line protocol on stdin/stdout: the driver sends "warm", "time" or "quit"; every answer is one
    line "RESULT {json}"."""
    global SLICE_ROWS
    SLICE_ROWS = args.slice_rows
    threads = None if args.threads == 0 else args.threads

    def reply(obj) -> None:
        print("RESULT " + json.dumps(obj), flush=True)

    try:
        if args.worker == "annstream":
            run, info = _make_annstream(args.path, threads)
        else:
            run, info = _make_zarr(args.path, threads, args.worker)
        reply({"info": info()})
    except Exception as e:
        import traceback

        reply({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]})
        return 0
    nnz = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        try:
            t0, c0 = time.perf_counter(), _cpu_seconds()
            tot = run(cmd == "warm")
            dt, dc = time.perf_counter() - t0, _cpu_seconds() - c0
            if cmd == "warm":
                nnz = tot[0]
                reply({"seconds": dt, "cpu_seconds": dc,
                       "check": {"nnz": tot[0], "data_sum": tot[1], "indices_sum": tot[2]}})
            else:
                if tot[0] != nnz:
                    raise AssertionError(f"nnz {tot[0]} != {nnz} of the checked pass")
                reply({"seconds": dt, "cpu_seconds": dc})
        except Exception as e:
            import traceback

            reply({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]})
    try:
        import resource

        reply({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    except Exception:
        reply({})
    return 0


# --------------------------------------------------------------------------------------------------
# Driver side


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "env": {k: os.environ[k] for k in ("GLIBC_TUNABLES", "RAYON_NUM_THREADS", "OMP_NUM_THREADS",
                                            "BLOSC_NTHREADS", "ZARR_THREADING__MAX_WORKERS") if k in os.environ},
    }


def annstream_build() -> dict:
    """Which sources the installed annstream was built from (bench/setup_venvs.sh stamps the venv)."""
    out = {}
    stamp = Path(sys.prefix) / ".bench-annstream-src"
    if stamp.is_file():
        out["sources_sha1"] = stamp.read_text().strip()
    try:
        out["git_head"] = subprocess.run(["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def package_versions() -> dict:
    from importlib import metadata

    out = {}
    for p in ("annstream", "zarr", "zarrs", "anndata", "numpy", "scipy", "numcodecs"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


class Worker:
    """One reader at one thread setting, in its own process (no shared zarr config or thread pools)."""

    def __init__(self, python: str, reader: str, threads: int, args, path: Path):
        self.reader, self.threads = reader, threads
        cmd = [python, str(Path(__file__).resolve()), "--worker", reader, "--threads", str(threads),
               "--path", str(path), "--slice-rows", str(args.slice_rows)]
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore")
        import tempfile

        self.errfile = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errfile,
                                     text=True, env=env)
        self.res: dict = {"reader": reader, "threads": threads}

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.errfile.seek(0)
                err = self.errfile.read()
                lines = [ln for ln in err.splitlines() if ln.strip()]
                last = lines[-1] if lines else ""
                if "No module named 'annstream'" in last:
                    last = "annstream is not installed in this venv (run bench/setup_venvs.sh)"
                return {"error": f"worker exited {self.proc.poll()}: {last}", "traceback": err[-3000:]}
            if line.startswith("RESULT "):
                return json.loads(line[7:])

    def ask(self, cmd: str) -> dict:
        if self.res.get("error"):
            return self.res
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        out = self._read()
        if out.get("error"):
            self.res["error"] = out["error"]
            self.res["traceback"] = out.get("traceback", "")
        return out

    def start(self) -> None:
        out = self._read()
        if out.get("error"):
            self.res.update(out)
        else:
            self.res["info"] = out["info"]

    def close(self) -> None:
        if self.proc.poll() is None:
            out = self.ask("quit") if not self.res.get("error") else {}
            if "maxrss_mib" in out:
                self.res["maxrss_mib"] = out["maxrss_mib"]
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except Exception:
                self.proc.kill()
        self.errfile.close()


def label(r: dict) -> str:
    t = r["threads"]
    return f"{r['reader']} (threads={'default' if t == 0 else t})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    make_data.add_spec_args(p)
    p.add_argument("--slice-rows", type=int, default=16384, help="rows per read (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per reader; the median is reported (default %(default)s)")
    p.add_argument("--readers", default=",".join(DEFAULT_READERS), help=f"comma list from {ALL_READERS} (default %(default)s)")
    p.add_argument("--threads", default="0,1",
                   help="thread settings for annstream and zarrs; 0 = the reader's default (all CPUs) (default %(default)s)")
    p.add_argument("--path", help="read this store instead of generating one (must be a make_data store)")
    p.add_argument("--json-out", help="also write the full results JSON here")
    p.add_argument("--worker", choices=ALL_READERS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.threads = int(args.threads)
        return worker(args)

    log = lambda *m: print(*m, file=sys.stderr, flush=True)  # noqa: E731
    if args.path:
        path = Path(args.path)
        meta = make_data.read_meta(path)
        if meta is None:
            p.error(f"{path} has no {make_data.META_NAME}")
    else:
        path, meta = make_data.ensure_store(make_data.spec_from_args(args), args.data_dir, log=log)
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    for r in readers:
        if r not in ALL_READERS:
            p.error(f"unknown reader {r}")
    thread_settings = [int(t) for t in args.threads.split(",")]

    runs = []
    for r in readers:
        for t in (thread_settings if r in MAIN_READERS else [0]):
            runs.append((r, t))
    ubytes = meta["x_uncompressed_bytes"]
    log(f"store {path}: {meta['n_obs']} x {meta['n_vars']}, nnz {meta['nnz']}, X {ubytes / 1e9:.2f} GB uncompressed, "
        f"{meta['x_stored_bytes'] / 1e9:.2f} GB on disk; slices of {args.slice_rows} rows; {args.repeats} repeats")

    # All workers start together; then one checked warm-up pass each, then `repeats` rounds in which
    # every worker does one timed pass (rotating the order every round), so all readers see the same
    # background load, which matters on a shared machine.
    load_before = os.getloadavg()
    workers = [Worker(sys.executable, r, t, args, path) for r, t in runs]
    for w in workers:
        w.start()
    for w in workers:
        out = w.ask("warm")
        if "seconds" in out:
            w.res["warmup_s"] = out["seconds"]
            w.res["check"] = out["check"]
    w_ok = [w for w in workers if not w.res.get("error")]
    for rep in range(args.repeats):
        k = rep % max(1, len(w_ok))
        for w in w_ok[k:] + w_ok[:k]:
            out = w.ask("time")
            if "seconds" in out:
                w.res.setdefault("times_s", []).append(out["seconds"])
                w.res.setdefault("cpu_s", []).append(out["cpu_seconds"])
    for w in workers:
        w.close()

    results = []
    for w in workers:
        res = w.res
        if res.get("times_s") and not res.get("error"):
            res["median_s"] = statistics.median(res["times_s"])
            res["median_cpu_s"] = statistics.median(res["cpu_s"])
            res["gb_per_s"] = ubytes / res["median_s"] / 1e9
            c = res["check"]
            problems = []
            if c["nnz"] != meta["nnz"]:
                problems.append(f"nnz {c['nnz']} != {meta['nnz']}")
            if abs(c["data_sum"] - meta["data_sum"]) > 1e-9 * max(1.0, meta["data_sum"]):
                problems.append(f"data sum {c['data_sum']} != {meta['data_sum']}")
            if problems:
                res["error"] = "wrong result: " + "; ".join(problems)
            log(f"  {label(res):34s} {res['median_s']:7.3f} s  {res['gb_per_s']:6.2f} GB/s  cpu {res['median_cpu_s']:6.3f} s  "
                f"(min {min(res['times_s']):.3f}, max {max(res['times_s']):.3f}, warm-up {res['warmup_s']:.2f} s)")
        else:
            log(f"  {label(res):34s} FAILED: {res.get('error')}")
        results.append(res)

    # readers must agree on the indices too
    isums = {r["check"]["indices_sum"] for r in results if "check" in r}
    if len(isums) > 1:
        for r in results:
            if "check" in r:
                r.setdefault("error", "")
                r["error"] += f" indices sum {r['check']['indices_sum']} differs between readers"

    base = next((r for r in results if r["reader"] == "annstream" and r["threads"] == thread_settings[0] and "median_s" in r), None)
    for r in results:
        if base and "median_s" in r:
            r["time_vs_annstream"] = r["median_s"] / base["median_s"]

    mach = machine_info()
    mach["loadavg_1min_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    vers = package_versions()
    print()
    print(f"Machine: {mach['cpu']}, {mach['nproc']} CPUs, {mach['ram_gib']} GiB RAM, Linux {mach['kernel']}, "
          f"Python {mach['python']}; {mach['date']}; load average {mach['loadavg_1min_before_after'][0]} before, "
          f"{mach['loadavg_1min_before_after'][1]} after" + (f"; env {mach['env']}" if mach["env"] else ""))
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v))
    print(f"Data: {meta['n_obs']} x {meta['n_vars']} float32 CSR, nnz {meta['nnz']} ({meta['nnz_per_row_mean']:.0f}/row), "
          f"X {ubytes / 1e9:.2f} GB uncompressed / {meta['x_stored_bytes'] / 1e9:.2f} GB stored; sharded "
          f"(shard {meta['shard_elems']} elements, inner chunk {meta['chunk_elems']}), blosc lz4 clevel "
          f"{meta['spec']['clevel']} shuffle; read in slices of {args.slice_rows} rows, warm page cache, "
          f"median of {args.repeats}")
    print()
    print("| reader | threads | median s | GB/s | time / annstream | min s | CPU s (user+sys) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        t = "default" if r["threads"] == 0 else str(r["threads"])
        name = r["reader"]
        if "median_s" in r and not r.get("error"):
            ratio = f"{r['time_vs_annstream']:.2f}x" if "time_vs_annstream" in r else "-"
            print(f"| {name} | {t} | {r['median_s']:.3f} | {r['gb_per_s']:.2f} | {ratio} | {min(r['times_s']):.3f} "
                  f"| {r['median_cpu_s']:.2f} |")
        else:
            print(f"| {name} | {t} | failed: {(r.get('error') or '?')[:80]} | | | | |")
    print()
    summary = {
        "bench": "read_bench",
        "machine": mach,
        "versions": vers,
        "annstream_build": annstream_build(),
        "store": str(path),
        "meta": {k: v for k, v in meta.items() if k != "spec"} | {"spec": meta.get("spec")},
        "slice_rows": args.slice_rows,
        "repeats": args.repeats,
        "results": [{k: v for k, v in r.items() if k != "traceback"} for r in results],
    }
    print("JSON " + json.dumps(summary))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**summary, "results": results}, indent=1) + "\n")
    for r in results:
        if r.get("traceback"):
            log(f"--- {label(r)} traceback ---\n{r['traceback']}")
    failed = [r for r in results if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
