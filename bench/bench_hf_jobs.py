"""Benchmark: how long an ``--on-jobs`` run takes to show its first progress line (a benchmark, not a test).

The test Hub (``tests/hub_server.py``) serves a small seeded checkpoint and runs Hugging Face
Jobs as local processes (``tests/hub_jobs_server.py``). For each repeat it measures, on one
clock:

* **launch**: ``launch_hf_job`` (whoami, the runtime zip checked or uploaded, ``run_job``);
* **job start -> first line**: from the job's process start to its first progress event in
  its log (the container's own work: interpreter, imports, bootstrap, plan);
* **local start -> first line**: the same job as a local ``quantize_to_hub`` in a fresh
  process, from its start to its first progress callback: the part of the above that any run pays;
* **follower lag**: from the event entering the job's log to the follower's progress callback.

Overhead beyond the job's own start = (job start -> first line) - (local start -> first line)
+ follower lag: what ``--on-jobs`` adds once the job runs (target: < 5 s). Example::

    .venv/bin/python bench/bench_hf_jobs.py --repeats 3

``--schemes FP8_BLOCK,NVFP4A16,W4A16`` measures instead ONE job for every scheme (one read of
the source) against one job per scheme, one after another (the baseline, in the same run, on
fresh copies of the source each time): wall seconds from launch to result, and the source's
weight bytes the Hub served, in copies of the source.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TOKEN = "hf_test_alice"
SOURCE = "bob/tiny"

_LOCAL = """
import sys, time
start = float(sys.argv[1])
import ptq_core
seen = []
def progress(stage, done, total):
    if not seen:
        seen.append(time.time())
        print(seen[0] - start, flush=True)
ptq_core.quantize_to_hub(sys.argv[2], "FP8_BLOCK", target=sys.argv[3], progress=progress)
"""


def _one(server, index: int, work: Path) -> dict[str, float]:
    from ptq_core import hf_jobs

    env = {**os.environ, "HF_ENDPOINT": server.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1",
           "PTQ_HUB_CACHE": str(work / f"local-{index}"), "PTQ_DISABLE_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    local = subprocess.run([sys.executable, "-c", _LOCAL, str(time.time()), SOURCE, f"alice/local-{index}"],
                           env=env, capture_output=True, text=True, check=True)
    local_first = float(local.stdout.splitlines()[0])

    first: list[float] = []
    t0 = time.time()
    job = hf_jobs.launch_hf_job(SOURCE, "FP8_BLOCK", flavor="cpu-basic", token=TOKEN, target=f"alice/job-{index}")
    launched = time.time()
    hf_jobs.follow_hf_job(job, token=TOKEN, progress=lambda *e: first.append(time.time()) if not first else None)
    record = next(j for j in server.jobs.launched if j.id == job.id)
    logged = next(t for t, line in record.log if line.startswith("@@ptq ") and '"progress"' in line)
    return {
        "launch": launched - t0,
        "job start -> first line": logged - record.started,
        "local start -> first line": local_first,
        "follower lag": first[0] - logged,
        "overhead beyond the job's start": (logged - record.started) - local_first + (first[0] - logged),
    }


def _served(server, since: int, source: str) -> int:
    """Weight bytes of ``source`` served by Range GETs after request ``since`` (header reads, from byte 0, left out)."""
    total = 0
    for method, path, headers in server.requests_log[since:]:
        rng = headers.get("range", "")
        if method == "GET" and f"/{source}/" in path and path.split("?")[0].endswith(".safetensors") and rng:
            first, last = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            total += (last - first + 1) if first > 0 else 0
    return total


def _many(server, checkpoint: Path, schemes: list[str], index: int) -> dict[str, float]:
    """One job for every scheme, then one job per scheme (on another copy of the source): wall and bytes read."""
    from ptq_core import hf_jobs

    size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
    row: dict[str, float] = {}
    for mode in ("one job", "a job per scheme"):
        source = f"bob/tiny-{index}-{'one' if mode == 'one job' else 'each'}"
        server.seed_repo(source, {p.name: p for p in checkpoint.iterdir() if p.is_file()})
        start, t0 = len(server.requests_log), time.time()
        for request in ([",".join(schemes)] if mode == "one job" else schemes):
            hf_jobs.run_on_hf_jobs(source, request, flavor="cpu-basic", token=TOKEN)
        row[f"{mode}: wall s"] = time.time() - t0
        row[f"{mode}: source copies read"] = _served(server, start, source) / size
    row["one job / a job per scheme (wall)"] = row["one job: wall s"] / row["a job per scheme: wall s"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--schemes", help="several schemes, comma-separated: one job for all against one job each")
    args = parser.parse_args(argv)
    import huggingface_hub.constants as hf_constants
    from factory import make_checkpoint
    from hub_server import HubServer

    import ptq_core.constants

    with tempfile.TemporaryDirectory(prefix="ptq-bench-jobs-") as tmp:
        work = Path(tmp)
        checkpoint = make_checkpoint(work / "tiny", "llama", shards=4, num_hidden_layers=4)
        server = HubServer(lfs_threshold=64 * 1024).start()
        os.environ.update(HF_ENDPOINT=server.endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=str(work / "hf_home"))
        ptq_core.constants.HF_ENDPOINT = server.endpoint  # read at import: this process's client follows the server
        hf_constants.HF_HUB_DISABLE_XET = True
        try:
            server.seed_repo(SOURCE, {p.name: p for p in checkpoint.iterdir() if p.is_file()})
            if args.schemes:
                rows = [_many(server, checkpoint, args.schemes.split(","), i) for i in range(args.repeats)]
            else:
                rows = [_one(server, i, work) for i in range(args.repeats)]
        finally:
            server.stop()
    unit = "" if args.schemes else "seconds "
    print(f"| {unit}(median of {args.repeats}) | value | runs |\n|---|---:|---|")
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(f"| {key} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
