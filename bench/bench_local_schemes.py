"""Several schemes from one local read (``quantize_jobs``) vs one ``quantize_job`` per scheme, side by side.

A benchmark, not a test: it prints and never asserts a timing. Both sides run in this
process on the same cached synthetic checkpoint (``checkpoint.py``), alternating which goes
first each repeat. Bytes read from the source are counted through the reader
(``ShardReader.read_into``, ``LocalReader.copy_to``); on a warm page cache the saving is
mostly those reads, on a cold disk or a network file system it is the whole second and third read.

    .venv/bin/python bench/bench_local_schemes.py --params 200M --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoint import ensure_checkpoint  # noqa: E402

from ptq_core.checkpoint import ShardReader  # noqa: E402
from ptq_core.job import make_jobs  # noqa: E402
from ptq_core.pipeline import quantize_job  # noqa: E402
from ptq_core.pipeline_many import quantize_jobs  # noqa: E402
from ptq_core.units import LocalReader  # noqa: E402

MB = 1_000_000
_read = [0]


def _count_reads() -> None:
    """Count every tensor byte read from the source (the only two ways a run reads them)."""
    read_into, copy_to = ShardReader.read_into, LocalReader.copy_to

    def counted_read(self, info, out, start=0):
        _read[0] += out.numel()
        return read_into(self, info, out, start)

    def counted_copy(self, writer, name, info, start):
        _read[0] += info.nbytes - start
        return copy_to(self, writer, name, info, start)

    ShardReader.read_into, LocalReader.copy_to = counted_read, counted_copy


def _timed(run) -> tuple[float, float, int]:
    """(wall s, CPU s of this process, source bytes read) of ``run()``."""
    _read[0] = 0
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu, _read[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="200M", help="parameters of the synthetic bf16 model")
    p.add_argument("--shard-mb", type=float, default=100.0)
    p.add_argument("--schemes", default="FP8_BLOCK,NVFP4A16,W4A16")
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ptq-hub" / "bench")
    args = p.parse_args(argv)
    params = int(float(args.params.rstrip("Mm")) * 1e6)
    source = ensure_checkpoint(args.cache_dir, params, int(args.shard_mb * MB))
    model = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    jobs = make_jobs(str(source), args.schemes, workers=args.workers, overwrite=True)
    _count_reads()
    rows: dict[str, list[tuple[float, float, int]]] = {"separate": [], "one read": []}
    with tempfile.TemporaryDirectory(prefix="ptq-bench-local-") as tmp:
        out = Path(tmp)

        def separate() -> None:
            for job in jobs:
                quantize_job(job, out / "separate" / job.repo_suffix)

        def one_read() -> None:
            quantize_jobs(jobs, out / "many")

        for repeat in range(args.repeats):
            order = [("separate", separate), ("one read", one_read)]
            for name, run in order if repeat % 2 == 0 else order[::-1]:
                rows[name].append(_timed(run))
                print(f"repeat {repeat + 1} {name}: {rows[name][-1][0]:.2f} s", file=sys.stderr)
            shutil.rmtree(out / "separate", ignore_errors=True)
            shutil.rmtree(out / "many", ignore_errors=True)
    best = {name: min(r, key=lambda x: x[0]) for name, r in rows.items()}
    base = best["separate"]
    print(f"model {model / 1e9:.2f} GB, schemes {args.schemes}, workers {args.workers}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| run (best of %d) | wall s | CPU s | source bytes read | wall vs separate |" % args.repeats)
    print("|---|---:|---:|---:|---:|")
    for name, (wall, cpu, read) in best.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {read / model:.2f}x model | {wall / base[0]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
