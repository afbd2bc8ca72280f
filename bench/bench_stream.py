"""Benchmark of the streamed Hub job over a bandwidth-limited link (a benchmark, not a test).

One synthetic bf16 Llama-shaped checkpoint (``checkpoint.py``; >= 1 GB in >= 10
shards by default) is served by the test Hub server (``tests/hub_server.py``) in
its own process, capped at ``--bandwidth`` bytes/s each way. Then, each in a
fresh process, timed from the first request to the end (interpreter start and
imports excluded):

* **download**: ``snapshot_download`` of the same files: the floor a streamed job
  is compared with (target: streamed <= 1.3x);
* **streamed**: ``ptq_core.quantize_to_hub`` with default settings; the local disk
  it uses (every file under its work folder, ``HF_HOME`` and ``TMPDIR``, sampled)
  and its peak RSS (target: peak disk < 60% of the model);
* **resume**: the same job SIGKILLed once half its output is uploaded, then run
  again: what the second run downloads and uploads (with the default staging interval,
  and with every shard staged as soon as it is uploaded);
* **peer**: the flow of other tools: ``snapshot_download`` + llm-compressor's
  ``model_free_ptq`` (in its own venv, ``peer_env.py``; ours, ``quantize_job``,
  with ``--peer-quantizer ours`` or when the venv cannot be made) + ``upload_folder``
  (target: streamed >= 1.8x faster).

``--mode schemes`` measures several schemes from one read instead (issue 21): each
scheme of ``--schemes`` streamed alone (the three separate runs, the baseline), then
``quantize_many_to_hub`` of all of them from one read; targets: its wall <= 1.25x the
slowest single-scheme run, and the source bytes it downloads = one copy of the source.

Prints a Markdown table (stdout); ``--json FILE`` keeps the raw numbers. Example::

    .venv/bin/python bench/bench_stream.py                       # ~1.1 GB, 11 shards, 100 MB/s
    .venv/bin/python bench/bench_stream.py --params 150M --bandwidth 50e6 --skip-peer   # smoke run
    .venv/bin/python bench/bench_stream.py --mode schemes --schemes FP8_BLOCK,NVFP4A16,W4A16
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from checkpoint import ensure_checkpoint, weight_files  # noqa: E402
from peer_env import default_torch_mode, ensure_peer_env  # noqa: E402

TOKEN = "hf_test_alice"  # a user of tests/hub_server.py (DEFAULT_USERS)
SOURCE = "bench/src"
PEER_VERSION = "0.14.0.1"
MB = 1_000_000

# Each child prints one JSON line last: {"seconds": ..., "hwm": ..., ...}. Imports are outside the clock.
_HWM = (
    "import resource\n"
    "def hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1]) * 1024\n"
    "    return 0\n"
    "def cpu():\n"
    "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    return r.ru_utime + r.ru_stime\n"
)
DOWNLOAD = _HWM + """
import json, sys, time
from huggingface_hub import snapshot_download
t, c = time.perf_counter(), cpu()
snapshot_download(sys.argv[1], local_dir=sys.argv[2], allow_patterns=["*.safetensors", "*.json"])
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": cpu() - c, "hwm": hwm()}))
"""
STREAM = _HWM + """
import json, os, signal, sys, time
# compressed-tensors too: a preset's job imports it when it builds its config (imports are outside the clock)
import ptq_core, ptq_core.hubjob.stage, compressed_tensors
kill_at = float(sys.argv[3])  # fraction of the upload after which the run kills itself (0: never)
if sys.argv[6] != "default":  # seconds between staging commits
    ptq_core.hubjob.stage.STAGE_COMMIT_INTERVAL = float(sys.argv[6])
state = {}
def progress(stage, done, total):
    state.setdefault(stage, time.perf_counter())
    if stage == "download" and done:  # where the link is busy: first and last source byte
        state.setdefault("first byte", time.perf_counter())
        if done >= total:
            state.setdefault("last byte", time.perf_counter())
    if stage in ("quantize", "write", "upload") and total and done >= total:  # the tail after the last byte
        state.setdefault(stage + " done", time.perf_counter())
    if kill_at and stage == "upload" and total and done >= kill_at * total:
        os.kill(os.getpid(), signal.SIGKILL)
job = ptq_core.make_job(sys.argv[1], sys.argv[4], target=sys.argv[2], workers=int(sys.argv[5]))
t, c = time.perf_counter(), cpu()
result = ptq_core.quantize_to_hub(job, progress=progress)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": cpu() - c, "hwm": hwm(), "timings": result.timings,
                  "peak_disk": result.peak_disk, "footprint": result.footprint.as_dict(),
                  "size_after": result.size_after, "marks": {k: v - t for k, v in state.items()}}))
"""
MANY = _HWM + """
import json, sys, time
import compressed_tensors  # as in STREAM: imports are outside the clock
from ptq_core import make_jobs, quantize_many_to_hub
jobs = make_jobs(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]))
t, c = time.perf_counter(), cpu()
result = quantize_many_to_hub(jobs)
assert result.ok, result.errors
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": cpu() - c, "hwm": hwm(), "read": result.downloaded,
                  "size_after": sum(r.size_after for r in result.results.values()),
                  "peak_disk": sum(r.peak_disk for r in result.results.values()),
                  "timings": {name: r.timings for name, r in result.results.items()}}))
"""
PEER = _HWM + """
import json, sys, time
from huggingface_hub import HfApi, snapshot_download
source, target, scheme, workers, src, out, quantizer = sys.argv[1:8]
ignore = json.loads(sys.argv[8])
if quantizer == "peer":
    from llmcompressor import model_free_ptq
else:
    from ptq_core import model_free_ptq
t0, c = time.perf_counter(), cpu()
snapshot_download(source, local_dir=src)
t1 = time.perf_counter()
model_free_ptq(src, out, scheme=scheme, ignore=ignore, max_workers=int(workers))
t2 = time.perf_counter()
api = HfApi()
api.create_repo(target)
api.upload_folder(folder_path=out, repo_id=target, ignore_patterns=[".cache/**"])
t3 = time.perf_counter()
print(json.dumps({"seconds": t3 - t0, "download": t1 - t0, "quantize": t2 - t1, "upload": t3 - t2,
                  "cpu": cpu() - c, "hwm": hwm()}))
"""


class DiskSampler(threading.Thread):
    """The most bytes (allocated blocks) found under some folders, polled every 20 ms."""

    def __init__(self, folders: list[Path]) -> None:
        super().__init__(daemon=True)
        self.folders = folders
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, sum(_allocated(f) for f in self.folders))
            self._done.wait(0.02)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _allocated(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:  # removed while walking
                pass
    return total


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url) as response:
        return json.loads(response.read())


def _child(python: str, code: str, args: list[str], env: dict[str, str], folders: list[Path]) -> dict:
    """Run one measured step; returns its JSON, the peak disk under ``folders`` and the exit status."""
    sampler = DiskSampler(folders)
    sampler.start()
    started = time.perf_counter()
    done = subprocess.run([python, "-c", code, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak = sampler.stop()
    # "sampled_disk": every file under the folders, polled; a child's own "peak_disk" is its count of output shards
    result: dict = {"returncode": done.returncode, "wall_with_imports": wall, "sampled_disk": peak}
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        result.update(json.loads(lines[-1]))
    elif done.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"error: a benchmark step failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return result


def _env(endpoint: str, scratch: Path, *, ours: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PTQ_"))}
    env.pop("PYTHONPATH", None)
    for name in ("hf_home", "cache", "tmp"):
        (scratch / name).mkdir(parents=True, exist_ok=True)
    env.update(
        HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1", HF_HOME=str(scratch / "hf_home"),
        PTQ_HUB_CACHE=str(scratch / "cache"), TMPDIR=str(scratch / "tmp"), PTQ_DISABLE_PROGRESS="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false",
    )
    if ours:
        env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (the server's share of a step)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _delta(before: dict, after: dict) -> dict[str, int]:
    return {
        "downloaded": after["bytes_out"] - before["bytes_out"],
        "uploaded": after["bytes_in"] - before["bytes_in"],
        "lfs_uploaded": sum(after["lfs_bytes"].values()) - sum(before["lfs_bytes"].values()),
    }


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="550M", help="parameters of the synthetic model (bf16: 2 bytes each)")
    p.add_argument("--shard-mb", type=float, default=100.0, help="largest input shard, MB")
    p.add_argument("--bandwidth", type=float, default=100e6, help="bytes/s, each way, all connections together")
    p.add_argument("--scheme", default="FP8_BLOCK")
    p.add_argument("--mode", choices=("stream", "schemes"), default="stream",
                   help="stream: one scheme against a download, a resume and the peer flow; "
                        "schemes: --schemes from one read against each scheme streamed alone")
    p.add_argument("--schemes", default="FP8_BLOCK,NVFP4A16,W4A16", help="--mode schemes: the schemes of one read")
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ptq-hub" / "bench")
    p.add_argument("--peer-quantizer", choices=("peer", "ours"), default="peer",
                   help="the middle step of the peer flow: llm-compressor (its venv) or our quantize")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    params = int(float(args.params.rstrip("Mm")) * 1e6) if args.params[-1] in "Mm" else int(float(args.params))

    checkpoint = ensure_checkpoint(args.cache_dir, params, int(args.shard_mb * MB))
    shards = weight_files(checkpoint)
    model_bytes = sum(f.stat().st_size for f in shards)
    print(f"model: {checkpoint.name}: {_gb(model_bytes)} in {len(shards)} shards", file=sys.stderr)

    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "hub_server.py"), "--seed", f"{SOURCE}={checkpoint}",
         "--download-bandwidth", str(args.bandwidth), "--upload-bandwidth", str(args.bandwidth)],
        stdout=subprocess.PIPE, text=True,
    )
    results: dict[str, dict] = {}
    try:
        info = json.loads(server.stdout.readline())
        endpoint, stats_url = info["endpoint"], info["stats_url"]
        ours = sys.executable
        with tempfile.TemporaryDirectory(prefix="ptq-bench-stream-") as tmp:
            root = Path(tmp)

            def step(name: str, python: str, code: str, extra: list[str], *, ours_env: bool = True) -> dict:
                scratch = root / name
                env = _env(endpoint, scratch, ours=ours_env)
                before, server_cpu = _stats(stats_url), _cpu_of(server.pid)
                print(f"running: {name}", file=sys.stderr, flush=True)
                result = _child(python, code, extra, env, [scratch])
                result.update(_delta(before, _stats(stats_url)), server_cpu=_cpu_of(server.pid) - server_cpu)
                results[name] = result
                return result

            step("download", ours, DOWNLOAD, [SOURCE, str(root / "download" / "files")])
            if args.mode == "schemes":
                for scheme in args.schemes.split(","):
                    step(f"single-{scheme}", ours, STREAM,
                         [SOURCE, f"alice/single-{scheme}", "0", scheme, str(args.workers), "default"])
                step("many", ours, MANY, [SOURCE, args.schemes, str(args.workers)])
                return _finish(results, model_bytes, len(shards), args)
            job = [args.scheme, str(args.workers)]
            step("streamed", ours, STREAM, [SOURCE, "alice/streamed", "0", *job, "default"])
            # Killed once half the output is uploaded, then rerun: with the default staging interval
            # (a minute: nothing of a 15 s job is committed to the branch before the kill) and with
            # every shard staged as soon as it is uploaded.
            for interval, name in (("default", "resumed"), ("0", "resumed-staged")):
                step(f"killed-{name}", ours, STREAM, [SOURCE, f"alice/{name}", "0.5", *job, interval])
                step(name, ours, STREAM, [SOURCE, f"alice/{name}", "0", *job, interval])
            if not args.skip_peer:
                python, quantizer = ours, "ours"
                if args.peer_quantizer == "peer":
                    try:
                        env = ensure_peer_env(args.cache_dir / "peer-venv", peer_version=PEER_VERSION,
                                              torch_mode=default_torch_mode(), pip_args=[])
                        python, quantizer = str(env.python), "peer"
                    except (OSError, subprocess.SubprocessError, SystemExit) as err:
                        print(f"no llm-compressor venv ({err}); the peer flow quantizes with ours", file=sys.stderr)
                sys.path.insert(0, str(REPO_ROOT))
                from ptq_core import DEFAULT_IGNORE

                results["peer_quantizer"] = {"name": quantizer}
                step("peer", python, PEER, [SOURCE, "alice/peer", args.scheme, str(args.workers),
                                            str(root / "peer" / "src"), str(root / "peer" / "out"), quantizer,
                                            json.dumps(list(DEFAULT_IGNORE))], ours_env=quantizer == "ours")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return _finish(results, model_bytes, len(shards), args)


def _finish(results: dict[str, dict], model_bytes: int, shards: int, args: argparse.Namespace) -> int:
    table = _schemes_table if args.mode == "schemes" else _table
    print(table(results, model_bytes, shards, args))
    if args.json:
        args.json.write_text(json.dumps({"model_bytes": model_bytes, "shards": shards, **results}, indent=2))
    return 0


def _waits(stream: dict, down: dict) -> str:
    """Before the first source byte, the download span against the plain download, and after the last byte."""
    marks = stream["marks"]
    first, last = marks.get("first byte"), marks.get("last byte")
    if first is None or last is None:
        return "n/a"
    commit = marks.get("commit", stream["seconds"])
    tail = ", ".join(f"{what} +{marks[key] - last:.1f} s" for key, what in (
        ("quantize done", "last unit quantized"), ("write done", "last shard written"),
        ("upload done", "last shard uploaded")) if key in marks)
    return (f"{first:.1f} s before the first byte; bytes {last - first:.1f} s ({(last - first) / down['seconds']:.2f}x the "
            f"plain download); after the last byte {commit - last:.1f} s (the last shard quantized, written and "
            f"uploaded; side files and card{': ' + tail if tail else ''}), then {stream['seconds'] - commit:.1f} s "
            "of final commit")


def _schemes_table(r: dict[str, dict], model_bytes: int, shards: int, args: argparse.Namespace) -> str:
    """Several schemes from one read against each scheme streamed alone, measured in this run."""
    schemes = args.schemes.split(",")
    singles = [r[f"single-{s}"] for s in schemes]
    many, down = r["many"], r["download"]
    slowest = max(one["seconds"] for one in singles)
    separate = sum(one["seconds"] for one in singles)
    # No implementation beats the link: the source must come down and every output must go up.
    floor = max(down["seconds"], many["size_after"] / args.bandwidth)
    rows = [
        ("model", f"{_gb(model_bytes)} bf16 in {shards} shards, {args.workers} worker(s), "
                  f"{os.cpu_count()} cores (shared with other work)"),
        ("link (test Hub server, own process)", f"{args.bandwidth / MB:.0f} MB/s each way"),
        ("plain download of the same files", f"{down['seconds']:.1f} s"),
        *((f"single-scheme streamed run: {s}", f"{one['seconds']:.1f} s, downloaded {_gb(one['downloaded'])}, "
           f"CPU {one['cpu']:.1f} s client, {one['server_cpu']:.1f} s server") for s, one in zip(schemes, singles)),
        (f"{len(schemes)} separate runs (the baseline)", f"{separate:.1f} s, downloaded "
                                                         f"{_gb(sum(one['downloaded'] for one in singles))}"),
        (f"{len(schemes)} schemes from one read (quantize_many_to_hub)",
         f"{many['seconds']:.1f} s = **{many['seconds'] / slowest:.2f}x** the slowest single run (target <= 1.25x), "
         f"{many['seconds'] / separate:.2f}x the separate runs"),
        ("  the link's floor: max(plain download, every scheme's output at the upload rate)",
         f"{floor:.1f} s = {floor / slowest:.2f}x the slowest single run; measured {many['seconds'] / floor:.2f}x "
         "the floor"),
        *((f"  stage spans of {name} (overlapping)", ", ".join(f"{k} {v:.1f} s" for k, v in spans.items()))
          for name, spans in many["timings"].items()),
        ("  bytes downloaded (server) / model", f"{_gb(many['downloaded'])} / {_gb(model_bytes)} = "
                                                f"**{many['downloaded'] / model_bytes:.3f}x** (target: one copy)"),
        ("  source bytes read by the job's reader", _gb(many["read"])),
        ("  uploaded (LFS) / output of all schemes", f"{_gb(many['lfs_uploaded'])} / {_gb(many['size_after'])}"),
        ("  peak disk (sampled) / output shards' peaks summed (the job's count)",
         f"{_gb(many['sampled_disk'])} / {_gb(many['peak_disk'])}"),
        ("  peak RSS / CPU", f"{_gb(many['hwm'])} / {many['cpu']:.1f} s client, {many['server_cpu']:.1f} s server"),
    ]
    lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines) + "\n"


def _table(r: dict[str, dict], model_bytes: int, shards: int, args: argparse.Namespace) -> str:
    down, stream = r["download"], r["streamed"]
    ratio = stream["seconds"] / down["seconds"]
    rows = [
        ("model", f"{_gb(model_bytes)} bf16 in {shards} shards, {args.scheme}, {args.workers} worker(s)"),
        ("link (test Hub server, own process)", f"{args.bandwidth / MB:.0f} MB/s each way"),
        ("plain download of the same files", f"{down['seconds']:.1f} s (CPU: {down['cpu']:.1f} s client, "
                                              f"{down['server_cpu']:.1f} s server)"),
        ("streamed job (quantize_to_hub)",
         f"{stream['seconds']:.1f} s = **{ratio:.2f}x** the download (target <= 1.3x)"),
        ("  stage spans (overlapping)", ", ".join(f"{k} {v:.1f} s" for k, v in stream["timings"].items())),
        ("  where the link waits", _waits(stream, down)),
        ("  peak disk (sampled: every file under the work folder, HF_HOME, TMPDIR)",
         f"{_gb(stream['sampled_disk'])} = **{100 * stream['sampled_disk'] / model_bytes:.0f}%** of the model "
         "(target < 60%)"),
        ("  peak of output shards on disk (the job's own count)", _gb(stream["peak_disk"])),
        ("  planned peak disk / budget", f"{_gb(stream['footprint']['peak_disk'])} / "
                                         f"{_gb(stream['footprint']['disk_budget'])}"),
        ("  peak RSS", _gb(stream["hwm"])),
        ("  CPU", f"{stream['cpu']:.1f} s client, {stream['server_cpu']:.1f} s server ({os.cpu_count()} cores, "
                  "shared with other work)"),
        ("  bytes downloaded / uploaded", f"{_gb(stream['downloaded'])} / {_gb(stream['uploaded'])}"),
    ]
    for name, words in (("resumed", "staging commit once a minute (default)"),
                        ("resumed-staged", "each shard staged when uploaded")):
        killed, resumed = r[f"killed-{name}"], r[name]
        rows += [
            (f"killed at 50% uploaded, {words}", f"downloaded {_gb(killed['downloaded'])}, uploaded "
                                                 f"{_gb(killed['lfs_uploaded'])} of LFS objects"),
            ("  then the resumed run", f"{resumed['seconds']:.1f} s; downloaded {_gb(resumed['downloaded'])}, "
                                       f"uploaded **{_gb(resumed['lfs_uploaded'])}** of LFS objects (output: "
                                       f"{_gb(resumed['size_after'])})"),
        ]
    if "peer" in r:
        peer = r["peer"]
        who = "llm-compressor model_free_ptq" if r["peer_quantizer"]["name"] == "peer" else "ptq_core model_free_ptq"
        rows += [
            (f"peer flow: snapshot_download + {who} + upload_folder",
             f"{peer['seconds']:.1f} s (download {peer['download']:.1f} + quantize {peer['quantize']:.1f} + "
             f"upload {peer['upload']:.1f}) = **{peer['seconds'] / stream['seconds']:.2f}x** the streamed job "
             "(target >= 1.8x)"),
            ("  peer peak disk (sampled) / peak RSS / CPU", f"{_gb(peer['sampled_disk'])} / {_gb(peer['hwm'])} / "
                                                  f"{peer['cpu']:.1f} s client, {peer['server_cpu']:.1f} s server"),
        ]
    lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
