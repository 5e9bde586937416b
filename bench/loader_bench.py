#!/usr/bin/env python3
"""Shuffled mini-batch loading: annstream.Loader vs annbatch.Loader over the same annbatch collection.

Runs in the main venv (the orchestrator and the annstream worker); annbatch runs in its own venv
(bench/setup_annbatch.sh -> .bench-annbatch-venv), through bench/annbatch_worker.py.  Every
(system, configuration, cache state) runs in a fresh subprocess, so peak RSS is per process.

    .venv/bin/python bench/loader_bench.py                          # both configs, warm and cold
    .venv/bin/python bench/loader_bench.py --configs 32x256 --caches warm --epochs 1
    .venv/bin/python bench/loader_bench.py --systems annbatch        # annbatch's numbers only
    .venv/bin/python bench/loader_bench.py --n-obs 5000 --batch-size 1024 --configs 32x64   # smoke

Data: make_data.py's synthetic store (default 150k cells x 20k genes, ~1.56k nnz/cell, float32),
preshuffled into annbatch's DatasetCollection layout by annbatch itself (bench/annbatch_prep.py, run
in the annbatch venv, cached under bench/data/).  Both loaders read that collection.

Measured per run: one untimed warm-up epoch (``warm``) or a page-cache eviction of every file of the
collection before each timed epoch (``cold``, posix_fadvise DONTNEED), then ``--epochs`` full shuffled
epochs (batch_size 4096, shuffle, drop_last False): samples/s and batches/s (median epoch), time to
the first batch of an epoch, peak RSS of the worker process (ru_maxrss), CPU seconds per epoch.

annbatch:  annbatch.Loader(chunk_size, preload_nchunks, batch_size, shuffle=True, to=None,
           preload_to_gpu=False).use_collection(DatasetCollection(path)), zarrs codec pipeline on;
           batches are dicts with X a scipy csr_matrix (and obs rows, which annbatch yields by default).
annstream: annstream.Loader(path, batch_size=..., chunk_size=..., preload_nchunks=..., shuffle=True,
           seed=..., output="numpy"), batches are dicts with X a scipy csr_matrix.
           If annstream.Loader does not exist yet the row says so and annbatch's numbers still print.

Output: a markdown table, the machine, versions, and one ``JSON {...}`` line (``--json-out`` saves it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from annbatch_worker import evict, idle_load, median_or_none, peak_rss_mib, serve, time_epoch  # noqa: E402  (stdlib only)

NOT_AVAILABLE = "annstream.Loader not available yet"


# --------------------------------------------------------------------------------------------------
# annstream worker (runs in this file, in the main venv, in its own process)


def collection_obs_columns(coll: Path) -> list[str]:
    """obs column names of dataset_0 of an annbatch collection (its obs 'column-order' attribute)."""
    meta = json.loads((coll / "dataset_0" / "obs" / "zarr.json").read_text())
    return list(meta.get("attributes", {}).get("column-order", []))


def annstream_worker(args) -> int:
    def emit(obj):
        print(json.dumps(obj), flush=True)

    base = {
        "system": "annstream",
        "collection": str(args.collection),
        "chunk_size": args.chunk_size,
        "preload_nchunks": args.preload_nchunks,
        "batch_size": args.batch_size,
        "cache": args.cache,
        "threads": args.threads or None,
        "prefetch": args.prefetch,
        "pid": os.getpid(),
    }
    try:
        import annstream
    except Exception as e:  # noqa: BLE001  (a broken build must not stop the annbatch rows)
        emit({**base, "kind": "summary", "error": f"import annstream failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
        return 0
    if not hasattr(annstream, "Loader"):
        emit({**base, "kind": "summary", "error": NOT_AVAILABLE})
        return 0
    obs_cols = None
    if args.obs_mode == "all":  # the same columns annbatch's use_collection yields by default
        obs_cols = collection_obs_columns(Path(args.collection))
    base["obs"] = obs_cols is not None
    rss0 = peak_rss_mib()
    if args.cache == "cold":
        evict(args.collection)
    t0 = time.perf_counter()
    loader = annstream.Loader(
        str(args.collection),
        x="X",
        obs=obs_cols,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        preload_nchunks=args.preload_nchunks,
        shuffle=True,
        seed=args.seed,
        drop_last=False,
        output="numpy",
        threads=args.threads or None,
        prefetch=args.prefetch,
    )
    setup_s = time.perf_counter() - t0
    try:
        n_batches = len(loader)
    except TypeError:
        n_batches = None

    def epoch(timed: bool, index: int) -> dict:
        return time_epoch(loader, args, base, timed, index)

    results = []
    if args.cache == "warm":
        emit(epoch(False, -1))
    if args.serve:
        serve(emit, epoch, results, base)
    else:
        for e in range(args.epochs):
            r = epoch(True, e)
            results.append(r)
            emit(r)
    if not results:
        emit({**base, "kind": "summary", "error": "no timed epoch"})
        return 0

    def med(key):
        v = sorted(r[key] for r in results)
        return v[len(v) // 2]

    try:
        from importlib.metadata import version

        ver = version("annstream")
    except Exception:  # noqa: BLE001
        ver = getattr(annstream, "__version__", None)
    emit({
        **base, "kind": "summary", "n_batches": n_batches, "setup_s": setup_s, "samples_per_s": med("samples_per_s"),
        "batches_per_s": med("batches_per_s"), "first_batch_s": med("first_batch_s"),
        "best_samples_per_s": max(r["samples_per_s"] for r in results), "epochs": len(results),
        "rows_per_epoch": results[0]["rows"], "nnz_per_epoch": results[0]["nnz"], "cpu_s_per_epoch": med("cpu_s"), "other_cores": med("other_cores"), "steal_cores": med("steal_cores"),
        "idle_load": med("idle_load_before"), "read_mb_per_epoch": median_or_none([r.get("read_mb") for r in results]),
        "rss_before_mib": rss0, "peak_rss_mib": peak_rss_mib(),
        "versions": {"annstream": ver, "python": platform.python_version()},
    })
    return 0


# --------------------------------------------------------------------------------------------------
# Orchestrator


def fill_page_cache(coll: Path, how: str) -> dict:
    """Put the collection in the page cache in a known state before warm runs: evict it, then read
    every file sequentially (1 MiB reads: the kernel's readahead caches it in large folios, as a
    copy or a fresh write leaves it) or at random (256 KiB reads at shuffled offsets: small folios,
    as a cold epoch of a chunked-random loader leaves it). The state changes how much a read from
    the cache costs both loaders (a 256 KiB pread: about 11-15 us vs 36-50 us on this VM)."""
    import random

    t0 = time.perf_counter()
    evict(coll)
    rng = random.Random(0)
    nbytes = 0
    for f in sorted(p for p in coll.rglob("*") if p.is_file()):
        fd = os.open(f, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            step = 1 << 20 if how == "sequential" else 1 << 18
            offs = list(range(0, size, step))
            if how == "random":
                rng.shuffle(offs)
            for o in offs:
                nbytes += len(os.pread(fd, step, o))
        finally:
            os.close(fd)
    return {"warm_fill": how, "fill_bytes": nbytes, "fill_s": time.perf_counter() - t0}


def machine_info() -> dict:
    try:
        from read_bench import machine_info as mi  # the colleague's helper, if importable

        return mi()
    except Exception:  # noqa: BLE001
        pass
    cpu, mem = "?", None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = round(int(line.split()[1]) / 2**20, 1)
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "nproc": os.cpu_count(), "ram_gib": mem, "kernel": platform.release()}


def log(*m) -> None:
    print(*m, file=sys.stderr, flush=True)


def annbatch_python(args) -> str:
    if args.annbatch_python:
        return args.annbatch_python
    cp = subprocess.run([str(BENCH_DIR / "setup_annbatch.sh")], stdout=subprocess.PIPE, text=True)
    if cp.returncode != 0:
        raise SystemExit("bench/setup_annbatch.sh failed")
    return cp.stdout.strip().splitlines()[-1]


def prepare_collection(py: str, args) -> tuple[Path, dict]:
    cmd = [py, str(BENCH_DIR / "annbatch_prep.py"), "--n-obs", str(args.n_obs), "--n-vars", str(args.n_vars),
           "--seed", str(args.seed_data), "--chunk-rows", str(args.chunk_rows), "--dataset-size", args.dataset_size,
           "--n-obs-per-chunk", str(args.n_obs_per_chunk), "--shard-size", args.shard_size]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    cp = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if cp.returncode != 0:
        raise SystemExit("annbatch_prep.py failed")
    meta = json.loads(cp.stdout.strip().splitlines()[-1])
    return Path(meta["path"]), meta


def run_worker(cmd: list[str], timeout: float) -> tuple[dict, list[dict], str]:
    t0 = time.perf_counter()
    try:
        cp = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        recs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        return {"error": f"timed out after {timeout:.0f} s (deadlock?)"}, recs, (e.stderr or b"").decode(errors="replace")[-3000:] if isinstance(e.stderr, bytes) else ""
    recs = [json.loads(x) for x in cp.stdout.splitlines() if x.startswith("{")]
    summ = next((r for r in recs if r.get("kind") == "summary"), None)
    if summ is None:
        tail = cp.stderr.strip().splitlines()[-1] if cp.stderr.strip() else ""
        summ = {"error": f"worker exited {cp.returncode}: {tail}"}
    summ["process_wall_s"] = time.perf_counter() - t0
    return summ, [r for r in recs if r.get("kind") != "summary"], cp.stderr


class _Proc:
    """A worker in --serve mode: JSON lines from its stdout through a reader thread."""

    def __init__(self, cmd: list[str]):
        import queue
        import tempfile
        import threading

        self.err = tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen(cmd + ["--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                  text=True, bufsize=1)
        self.q: queue.Queue = queue.Queue()
        self.records: list[dict] = []
        self.t0 = time.perf_counter()

        def pump():
            for line in self.p.stdout:
                if line.startswith("{"):
                    self.q.put(json.loads(line))
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float) -> dict | None:
        """Next record; None at EOF; raises queue.Empty on timeout."""
        r = self.q.get(timeout=timeout)
        if r is not None and r.get("kind") not in ("summary", "ready"):
            self.records.append(r)
        return r

    def send(self, cmd: str) -> None:
        try:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()[-3000:]

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def run_interleaved(cmds: dict[str, list[str]], args, tag: str, wait_quiet) -> dict:
    """Start every system's worker in --serve mode, then run epochs round-robin (order rotated each
    round), so that each round's epochs see about the same background load."""
    import queue

    procs, out = {}, {}
    for system, cmd in cmds.items():  # one at a time: set-up + warm-up epoch are not overlapped
        log(f"[{system} {tag}] starting (set-up{', warm-up epoch' if 'warm' in cmd else ''}) ...")
        pr = _Proc(cmd)
        try:
            r = pr.next(args.timeout)
            while r is not None and r.get("kind") not in ("ready", "summary"):
                r = pr.next(args.timeout)
        except queue.Empty:
            r = {"kind": "summary", "error": f"no 'ready' after {args.timeout:.0f} s (deadlock?)"}
        if r is None or r.get("kind") == "summary":
            pr.kill()
            summ = r or {"error": f"worker exited {pr.p.returncode}: {pr.stderr().strip().splitlines()[-1:]}"}
            out[system] = (summ, pr.records, pr.stderr())
        else:
            procs[system] = pr
    order = list(procs)
    for rnd in range(args.epochs if procs else 0):
        wait_quiet(f"{tag} round {rnd}")
        for system in order[rnd % len(order):] + order[: rnd % len(order)]:
            pr = procs[system]
            if system in out:
                continue
            pr.send("epoch")
            try:
                r = pr.next(args.timeout)
            except queue.Empty:
                r = None
                out[system] = ({"error": f"epoch {rnd} took over {args.timeout:.0f} s (deadlock?)"}, pr.records, pr.stderr())
                pr.kill()
                continue
            if r is None or r.get("kind") == "summary":
                out[system] = (r or {"error": f"worker died in epoch {rnd}: {pr.stderr().strip().splitlines()[-1:]}"},
                               pr.records, pr.stderr())
    for system, pr in procs.items():
        if system in out:
            continue
        pr.send("quit")
        try:
            r = pr.next(args.timeout)
        except queue.Empty:
            r = None
        summ = r if (r and r.get("kind") == "summary") else {"error": "no summary"}
        summ["process_wall_s"] = time.perf_counter() - pr.t0
        out[system] = (summ, pr.records, pr.stderr())
        pr.kill()
    return out


def paired_ratios(r: dict, other: dict) -> list[float]:
    """Sorted per-round ratios of r's epoch samples/s to other's epoch of the same round."""
    def rates(x):
        return {e["epoch"]: e["samples_per_s"] for e in x["epoch_records"] if e.get("kind") == "epoch"}

    mine, theirs = rates(r), rates(other)
    return sorted(mine[i] / theirs[i] for i in mine if i in theirs)


def fmt(v, spec=",.0f", dash="–"):
    return dash if v is None else format(v, spec)


def summarize(files: list[str], quiet: float) -> int:
    """Pool the epoch records of several --json-out files and print, per (collection, system, config,
    cache, obs), the median and best samples/s over the epochs whose idle load before the epoch was
    below `quiet` cores ('quiet' epochs), next to the median over all epochs and the CPU s/epoch."""
    import statistics as st

    groups: dict[tuple, list[dict]] = {}
    for f in files:
        d = json.loads(Path(f).read_text())
        coll = Path(d.get("collection", "?")).name
        for r in d.get("results", []):
            for e in r.get("epoch_records", []):
                if e.get("kind") != "epoch":
                    continue
                k = (coll, r["system"], f"{r['chunk_size']}x{r['preload_nchunks']}", r["cache"], "all" if e.get("obs") else "none")
                groups.setdefault(k, []).append(e)
    print(f"| collection | system | chunk x preload | cache | obs | epochs | quiet (< {quiet:g} cores) | samples/s quiet median | "
          f"quiet best | all-epoch median | CPU s/epoch | first batch ms (quiet median) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in sorted(groups):
        v = groups[k]
        # idle load before the epoch; records from before that field existed fall back to the other-CPU
        # measure during the epoch (stricter in cold runs, where it includes kernel I/O work)
        q = [e for e in v if (e.get("idle_load_before") if e.get("idle_load_before") is not None
                              else e.get("other_cores") if e.get("other_cores") is not None else 99) < quiet]
        qs = [e["samples_per_s"] for e in q]
        print(f"| {k[0].split('__')[-1]} | {k[1]} | {k[2]} | {k[3]} | {k[4]} | {len(v)} | {len(q)} | "
              f"{fmt(st.median(qs) if qs else None)} | {fmt(max(qs) if qs else None)} | {fmt(st.median(e['samples_per_s'] for e in v))} | "
              f"{st.median(e['cpu_s'] for e in v):.2f} | {fmt(st.median(e['first_batch_s'] for e in q) * 1000 if q else None)} | "
              f"{fmt(max(e['peak_rss_mib'] for e in v))} |")

    # paired rounds of interleaved runs: annstream's epoch vs annbatch's epoch of the same round
    pairs: dict[tuple, list[tuple]] = {}
    for f in files:
        d = json.loads(Path(f).read_text())
        if d.get("mode") != "interleaved":
            continue  # only interleaved runs have rounds
        coll = Path(d.get("collection", "?")).name
        runs = {}
        for r in d.get("results", []):
            recs = {e["epoch"]: e for e in r.get("epoch_records", []) if e.get("kind") == "epoch"}
            runs[(r["system"], r["chunk_size"], r["preload_nchunks"], r["cache"])] = recs
        for (system, cs, pn, cache), mine in runs.items():
            theirs = runs.get(("annbatch", cs, pn, cache))
            if system == "annbatch" or not theirs:
                continue
            for i, e in mine.items():
                b = theirs.get(i)
                if b is None or e.get("idle_load_before") is None or b.get("idle_load_before") is None:
                    continue  # sequential runs have no rounds; only interleaved runs are paired
                k = (coll, system, f"{cs}x{pn}", cache, "all" if e.get("obs") else "none")
                pairs.setdefault(k, []).append((e["samples_per_s"] / b["samples_per_s"], b["cpu_s"] / e["cpu_s"],
                                                max(e["idle_load_before"], b["idle_load_before"]), b["samples_per_s"],
                                                e["samples_per_s"], b["first_batch_s"], e["first_batch_s"]))
    if pairs:
        print(f"\nPaired rounds (interleaved runs): ratio = system / annbatch, same round; quiet = both idle loads < {quiet:g}\n")
        print("| collection | system | chunk x preload | cache | obs | rounds | quiet | ratio (median, all) | ratio (quiet) | "
              "annbatch CPU / system CPU | annbatch quiet samples/s | system quiet samples/s | quiet first batch ms (annbatch / system) |")
        print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        med = lambda a: st.median(a) if a else None  # noqa: E731
        for k in sorted(pairs):
            v = pairs[k]
            q = [x for x in v if x[2] < quiet]
            print(f"| {k[0].split('__')[-1]} | {k[1]} | {k[2]} | {k[3]} | {k[4]} | {len(v)} | {len(q)} | "
                  f"{fmt(med([x[0] for x in v]), '.2f')} | {fmt(med([x[0] for x in q]), '.2f')} | {fmt(med([x[1] for x in v]), '.2f')} | "
                  f"{fmt(med([x[3] for x in q]))} | {fmt(med([x[4] for x in q]))} | "
                  f"{fmt(med([x[5] * 1000 for x in q]), '.0f')} / {fmt(med([x[6] * 1000 for x in q]), '.0f')} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=["annstream"], help=argparse.SUPPRESS)
    p.add_argument("--collection", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="warm", help=argparse.SUPPRESS)
    p.add_argument("--chunk-size", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--preload-nchunks", type=int, default=256, help=argparse.SUPPRESS)
    # data
    p.add_argument("--n-obs", type=int, default=150_000)
    p.add_argument("--n-vars", type=int, default=20_000)
    p.add_argument("--seed-data", type=int, default=0, help="make_data seed")
    p.add_argument("--chunk-rows", type=int, default=64, help="make_data input store chunk rows")
    p.add_argument("--dataset-size", default="20GB", help="annbatch preshuffle dataset_size (default: annbatch's)")
    p.add_argument("--n-obs-per-chunk", type=int, default=64, help="annbatch preshuffle n_obs_per_chunk")
    p.add_argument("--shard-size", default="1GB", help="annbatch preshuffle shard_size")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--collection-path", default=None, help="use this existing collection instead of annbatch_prep")
    # loaders
    p.add_argument("--systems", default="annbatch,annstream",
                   help="comma-separated: annbatch, annstream, ceiling (the access decode ceiling of bench/decode_ceiling.py, warm runs only)")
    p.add_argument("--configs", default="32x256,256x64", help="chunk_size x preload_nchunks, comma-separated")
    p.add_argument("--caches", default="warm,cold")
    p.add_argument("--warm-fill", choices=["as-is", "sequential", "random"], default="as-is",
                   help="before each warm run, evict the collection and read it back sequentially (large "
                        "page-cache folios) or at random offsets (small folios); as-is: whatever the cache holds")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per run (default %(default)s; odd, so the median is one epoch)")
    p.add_argument("--seed", type=int, default=0, help="loader shuffle seed")
    p.add_argument("--max-batches", type=int, default=0, help="cut each epoch after this many batches (0: full)")
    p.add_argument("--threads", type=int, default=0, help="annstream threads (0: its default)")
    p.add_argument("--prefetch", type=int, default=2, help="annstream prefetch")
    p.add_argument("--obs", choices=["all", "none"], default="all",
                   help="all: every obs column in every batch (annbatch's use_collection default; annstream gets "
                        "obs=<the same columns>); none: X only (annbatch with an X-only load_adata, annstream obs=None)")
    p.add_argument("--obs-mode", choices=["all", "none"], default="none", help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help="sum X.data in every batch and compare across systems")
    p.add_argument("--timeout", type=float, default=600, help="per worker process, seconds")
    p.add_argument("--annbatch-python", default=None, help="python of the annbatch venv (default: setup_annbatch.sh)")
    p.add_argument("--annstream-python", default=sys.executable, help="python with annstream (default: this one)")
    p.add_argument("--sequential", action="store_true",
                   help="run each system's epochs in one go instead of interleaving them round by round")
    p.add_argument("--wait-quiet", type=float, default=0,
                   help="before each run, wait up to this many seconds for the machine's background load to drop below --quiet-cores")
    p.add_argument("--quiet-cores", type=float, default=0.25,
                   help="background load threshold for --wait-quiet and for 'quiet' epochs in --summarize")
    p.add_argument("--summarize", nargs="+", metavar="JSON", default=None,
                   help="pool the epoch records of these --json-out files (quiet vs all epochs) and exit")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)

    if args.worker == "annstream":
        return annstream_worker(args)
    if args.summarize:
        return summarize(args.summarize, args.quiet_cores)

    systems = [s for s in args.systems.split(",") if s]
    configs = []
    for c in args.configs.split(","):
        cs, pn = c.lower().split("x")
        configs.append((int(cs), int(pn)))
    caches = [c for c in args.caches.split(",") if c]

    abpy = annbatch_python(args)
    if args.collection_path:
        coll, prep = Path(args.collection_path), {}
    else:
        coll, prep = prepare_collection(abpy, args)
    log(f"collection: {coll}")
    if prep:
        log(f"annbatch preshuffle (cached record): {prep.get('preshuffle_s', 0):.1f} s, peak RSS {prep.get('peak_rss_mib', 0):.0f} MiB, "
            f"{prep.get('n_datasets')} dataset(s)")

    load0 = os.getloadavg()
    results = []

    def wait_quiet(tag: str) -> None:
        if args.wait_quiet > 0:
            t_w, bg = time.perf_counter(), idle_load(1.0)
            while bg > args.quiet_cores and time.perf_counter() - t_w < args.wait_quiet:
                bg = idle_load(1.0)
            log(f"[{tag}] background load {bg:.2f} cores after waiting {time.perf_counter() - t_w:.0f} s")

    for cs, pn in configs:
        for cache in caches:
            cmds = {}
            for system in systems:
                common = ["--chunk-size", str(cs), "--preload-nchunks", str(pn), "--batch-size", str(args.batch_size),
                          "--epochs", str(args.epochs), "--cache", cache, "--seed", str(args.seed),
                          "--max-batches", str(args.max_batches)] + (["--check"] if args.check else [])
                if system == "annbatch":
                    cmd = [abpy, str(BENCH_DIR / "annbatch_worker.py"), str(coll), *common] + (["--no-obs"] if args.obs == "none" else [])
                elif system == "ceiling":  # bench/decode_ceiling.py's access ceiling: no I/O, warm only
                    if cache != "warm":
                        continue
                    cmd = [args.annstream_python, str(BENCH_DIR / "decode_ceiling.py"), str(coll), "--chunk-size", str(cs),
                           "--preload-nchunks", str(pn), "--seed", str(args.seed), "--serve"]
                elif system == "annstream":
                    cmd = [args.annstream_python, str(Path(__file__).resolve()), "--worker", "annstream", "--collection", str(coll),
                           *common, "--threads", str(args.threads), "--prefetch", str(args.prefetch), "--obs-mode", args.obs]
                else:
                    raise SystemExit(f"unknown system {system}")
                cmds[system] = cmd
            tag = f"{cs}x{pn} {cache}"
            fill = None
            if cache == "warm" and args.warm_fill != "as-is":
                fill = fill_page_cache(coll, args.warm_fill)
                log(f"[{tag}] page cache filled {args.warm_fill}ly: {fill['fill_bytes'] / 1e9:.2f} GB in {fill['fill_s']:.1f} s")
            if args.sequential:
                got = {}
                for system, cmd in cmds.items():
                    wait_quiet(f"{system} {tag}")
                    log(f"[{system} {tag}] ...")
                    got[system] = run_worker(cmd, args.timeout)
            else:
                got = run_interleaved(cmds, args, tag, wait_quiet)
            for system in systems:
                if system not in got:
                    continue
                summ, epochs, stderr = got[system]
                summ.update({"system": system, "chunk_size": cs, "preload_nchunks": pn, "cache": cache})
                if fill:
                    summ.update(fill)
                summ["epoch_records"] = epochs
                if summ.get("error"):
                    log(f"[{system} {tag}] {summ['error']}")
                    if "not available" not in summ["error"] and stderr:
                        log(stderr[-2000:])
                else:
                    log(f"[{system} {tag}] {summ['samples_per_s']:,.0f} samples/s, first batch {summ.get('first_batch_s', 0)*1000:.0f} ms, "
                        f"peak RSS {summ['peak_rss_mib']:.0f} MiB, {summ.get('cpu_s_per_epoch', 0):.2f} CPU s/epoch, "
                        f"idle load {summ.get('idle_load', 0):.2f}")
                results.append(summ)

    # table
    def key(r):
        return (r["chunk_size"], r["preload_nchunks"], r["cache"])

    ref = {key(r): r for r in results if r["system"] == "annbatch" and not r.get("error")}
    print(f"\nbatch_size {args.batch_size}, shuffle, {args.epochs} timed epoch(s) per run: samples/s, batches/s, first batch, "
          f"CPU s and the loads are medians over epochs. 'other CPU': machine-wide busy CPU minus the worker's own during "
          f"the epoch (cores; other processes, plus kernel I/O work on behalf of the worker in cold runs); 'idle load': the "
          f"same measured over 0.3 s just before the epoch with the worker idle (background load from others); "
          f"collection {coll.name}; obs in batches: {args.obs}; warm page cache: {args.warm_fill}\n")
    print("| system | chunk x preload | cache | samples/s | best epoch | batches/s | vs annbatch | first batch (ms) | peak RSS (MiB) | CPU s/epoch | read MB/epoch | other CPU (cores) | idle load (cores) | set-up (s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cfg = f"{r['chunk_size']}x{r['preload_nchunks']}"
        if r.get("error"):
            print(f"| {r['system']} | {cfg} | {r['cache']} | {r['error']} | | | | | | | | | |")
            continue
        base = ref.get(key(r))
        ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "–"
        if base and r is not base:
            # interleaved runs: median over rounds of the ratio of the two epochs of the same round
            pr = paired_ratios(r, base)
            if pr and not args.sequential:
                r["paired_ratio"] = pr[len(pr) // 2]
                ratio += f" (paired {r['paired_ratio']:.2f}x)"
        print(f"| {r['system']} | {cfg} | {r['cache']} | {fmt(r['samples_per_s'])} | {fmt(r.get('best_samples_per_s'))} | "
              f"{fmt(r['batches_per_s'], '.1f')} | {ratio} | {fmt(r['first_batch_s'] * 1000, '.0f')} | {fmt(r['peak_rss_mib'])} | "
              f"{fmt(r.get('cpu_s_per_epoch'), '.2f')} | {fmt(r.get('read_mb_per_epoch'), ',.0f')} | {fmt(r.get('other_cores'), '.2f')} | {fmt(r.get('idle_load'), '.2f')} | {fmt(r.get('setup_s'), '.2f')} |")
    ceil = {key(r): r for r in results if r["system"] == "ceiling" and not r.get("error")}
    if ceil:
        print("\nAgainst the access decode ceiling (bench/decode_ceiling.py --serve, 2 processes that only decompress "
              "the blosc blocks each load needs, run in the same rounds): median over rounds of the system's epoch / "
              "the ceiling's epoch of the same round\n")
        for r in results:
            c = ceil.get(key(r))
            if c is None or r["system"] == "ceiling" or r.get("error"):
                continue
            pr = paired_ratios(r, c)
            if pr:
                r["ceiling_fraction"] = pr[len(pr) // 2]
                print(f"- {r['system']} {r['chunk_size']}x{r['preload_nchunks']} {r['cache']}: {r['ceiling_fraction']:.0%} "
                      f"of the ceiling (rounds: {', '.join(f'{x:.0%}' for x in pr)}; ceiling median {c['samples_per_s']:,.0f} rows/s)")
    if args.check:
        sums = {(r["system"], key(r)): [e.get("data_sum") for e in r["epoch_records"]] for r in results if not r.get("error")}
        print("\ndata sums per epoch:", json.dumps({f"{s} {k}": v for (s, k), v in sums.items()}))
    mach = machine_info()
    mach["loadavg_before"], mach["loadavg_after"] = load0, os.getloadavg()
    print(f"\nMachine: {mach.get('cpu')}, {mach.get('nproc')} CPUs, {mach.get('ram_gib')} GiB RAM, "
          f"kernel {mach.get('kernel')}, {mach.get('date')}; load average before {load0[0]:.2f}, after {mach['loadavg_after'][0]:.2f}")
    vers = next((r.get("versions") for r in results if r["system"] == "annbatch" and r.get("versions")), None)
    if vers:
        print("annbatch venv: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    av = next((r.get("versions") for r in results if r["system"] == "annstream" and r.get("versions")), None)
    if av:
        print("annstream: " + ", ".join(f"{k} {v}" for k, v in av.items()))
    if prep:
        print(f"annbatch preshuffle: {prep.get('preshuffle_s', 0):.1f} s, peak RSS {prep.get('peak_rss_mib', 0):.0f} MiB, "
              f"{prep.get('n_datasets')} dataset(s), {prep.get('stored_bytes', 0) / 1e9:.2f} GB stored")
    warns = sorted({w for r in results for w in r.get("warnings", [])})
    if warns:
        print("annbatch warnings: " + " | ".join(warns))
    summary = {"mode": "sequential" if args.sequential else "interleaved", "machine": mach, "collection": str(coll), "prep": {k: v for k, v in prep.items() if k != "datasets"},
               "batch_size": args.batch_size, "epochs": args.epochs, "results": results}
    print("JSON " + json.dumps({**summary, "results": [{k: v for k, v in r.items() if k != "epoch_records"} for r in results]}))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if any(r.get("error") and NOT_AVAILABLE not in r["error"] and not r["error"].startswith("import annstream")
                    for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
