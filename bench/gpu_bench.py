#!/usr/bin/env python3
"""Batches to a CUDA GPU: annstream's ways of getting a batch onto the device, compared.

Needs a machine with a CUDA device and torch. The data is make_data.py's synthetic single-cell
store (CSR float32 counts, 20k genes, ~1.5k non-zeros per cell); the same store can be given
several times (``--repeat``), which makes a longer epoch out of one cached store.

Modes (each streams ``--epochs`` shuffled epochs after one untimed warm-up epoch):

| mode | what the loop gets | how it reaches the GPU |
|---|---|---|
| ``cpu`` | torch CSR on the CPU | not at all (the loader alone) |
| ``pageable`` | torch CSR on the CPU | ``x.to("cuda")``: synchronous copies from the C buffers |
| ``pin_memory`` | torch CSR, copied into pinned memory | ``x.to("cuda", non_blocking=True)`` |
| ``device`` | torch CSR on the GPU | ``Loader(device="cuda")``: slots pinned once, async copies one batch ahead |

With ``--densify`` the loop wants dense (batch, n_vars) float32 rows: ``cpu`` / ``pageable`` /
``pin_memory`` densify in C and move the dense rows; ``device`` moves CSR and densifies on the GPU.

The model step is one ``X @ W`` (W: n_vars x 256 float32 on the GPU) per batch, its result summed
into a device scalar (no host synchronisation inside the epoch; one at its end). Each mode runs in a
process of its own. Reported: samples/s (median epoch), bytes moved to the device per epoch by the
loop (the device mode moves the CSR batches), and the peak RSS of the mode's process (pinned memory
included).

    python bench/gpu_bench.py --n-obs 25000 --repeat 8 --json-out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("cpu", "pageable", "pin_memory", "device")


def _bytes_of(x) -> int:
    import torch

    if x.layout == torch.sparse_csr:
        parts = (x.crow_indices(), x.col_indices(), x.values())
        return sum(p.numel() * p.element_size() for p in parts)
    return x.numel() * x.element_size()


def run_mode(paths, mode: str, densify: bool, a) -> dict:
    import torch

    import annstream

    kw = dict(batch_size=a.batch_size, chunk_size=a.chunk_size, preload_nchunks=a.preload_nchunks,
              seed=a.seed, output="torch", threads=a.threads or None, prefetch=a.prefetch)
    if densify:
        kw.update(densify=True, dtype="float32")
    if mode == "pin_memory":
        kw["pin_memory"] = True
    dev = torch.device(a.device)
    if mode == "device":
        kw["device"] = dev

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    ld = annstream.Loader(paths, **kw)
    torch.manual_seed(0)  # the same W in every mode: equal "check" sums mean equal batches
    W = torch.randn(ld.n_vars, 256, device=dev)
    acc = torch.zeros((), device=dev)
    times, moved, n_rows = [], 0, 0
    for epoch in range(a.epochs + 1):
        ld.set_epoch(epoch)
        sync()
        t0 = time.perf_counter()
        rows = nbytes = 0
        for b in ld:
            x = b["X"]
            if mode != "cpu":
                if mode != "device":
                    nbytes += _bytes_of(x)
                    x = x.to(dev, non_blocking=(mode == "pin_memory"))
                acc += (x @ W).sum() if x.layout == torch.strided else torch.sparse.mm(x, W).sum()
            rows += x.shape[0]
        sync()
        dt = time.perf_counter() - t0
        if epoch > 0:  # epoch 0 warms up (page cache, slot growth, pinning, cuBLAS / cuSPARSE)
            times.append(dt)
            moved, n_rows = nbytes, rows
    ld.close()
    med = statistics.median(times)
    return {
        "mode": mode, "densify": densify, "rows_per_epoch": n_rows,
        "epoch_s": [round(t, 4) for t in times],
        "samples_per_s": round(n_rows / med, 1),
        "host_bytes_moved_per_epoch": moved if mode not in ("cpu", "device") else None,
        "check": float(acc.item()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-obs", type=int, default=25_000, help="rows of the make_data store")
    p.add_argument("--repeat", type=int, default=8, help="sources: the store this many times")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--preload-nchunks", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--densify", choices=["no", "yes", "both"], default="both")
    p.add_argument("--json-out", default=None)
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of the script without a GPU")
    p.add_argument("--configs", default="256x64", help="chunk_size x preload_nchunks, comma-separated")
    p.add_argument("--worker", nargs=3, metavar=("PATH", "MODE", "DENSIFY"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        path, mode, densify = a.worker
        r = run_mode([path] * a.repeat, mode, densify == "1", a)
        r["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print("RESULT " + json.dumps(r), flush=True)
        return 0

    import torch

    from make_data import Spec, ensure_store

    if a.device != "cpu" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    path, meta = ensure_store(Spec(n_obs=a.n_obs), a.data_dir)
    print(f"store {path} ({meta['nnz_per_row_mean']:.0f} nnz/row) ready in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    dens = {"no": [False], "yes": [True], "both": [False, True]}[a.densify]
    for config in a.configs.split(","):
        cs, pn = (int(v) for v in config.split("x"))
        for densify in dens:
            for mode in a.modes.split(","):
                argv_w = [sys.executable, __file__, "--worker", str(path), mode, str(int(densify)),
                          "--repeat", str(a.repeat), "--batch-size", str(a.batch_size),
                          "--chunk-size", str(cs), "--preload-nchunks", str(pn),
                          "--threads", str(a.threads), "--prefetch", str(a.prefetch),
                          "--epochs", str(a.epochs), "--seed", str(a.seed), "--device", a.device]
                proc = subprocess.run(argv_w, capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"{config} {mode} densify={densify}: failed\n{proc.stderr[-3000:]}",
                          flush=True)
                    continue
                r = json.loads(line[-1][7:])
                r["config"] = config
                results.append(r)
                print(json.dumps(r), flush=True)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu": torch.cuda.get_device_name(0) if a.device != "cpu" else "none (cpu)",
        "torch": torch.__version__,
        "cpus": os.cpu_count(), "machine": platform.machine(),
        "args": vars(a), "results": results,
    }
    print()
    rows = results[0]["rows_per_epoch"] if results else 0
    print(f"{out['gpu']}, {out['cpus']} CPUs, torch {out['torch']}; batch {a.batch_size}; "
          f"{rows} rows per epoch; {a.epochs} timed epochs")
    print("| chunk x preload | densify | mode | samples/s | epoch s (median) | moved / epoch | "
          "peak RSS MiB |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in results:
        moved = r["host_bytes_moved_per_epoch"]
        print(f"| {r['config']} | {'yes' if r['densify'] else 'no'} | {r['mode']} | "
              f"{r['samples_per_s']:,.0f} | {statistics.median(r['epoch_s']):.3f} | "
              f"{'-' if moved is None else f'{moved / 2**30:.2f} GiB'} | {r['peak_rss_mib']} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
