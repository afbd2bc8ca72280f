#!/usr/bin/env python3
"""Benchmark ptq_core.model_free_ptq against llm-compressor's model_free_ptq.

Both tools quantize the same bf16 Llama-shaped checkpoint with the same scheme,
ignore list, max_workers and device. Runs alternate between the tools (A B, B A,
...) so drift (thermal, page cache, background load) hits both alike. Every run
is a fresh subprocess, so import time and peak RSS belong to that run alone.
The peer runs in its own virtual environment, created on first use.

Prints Markdown: times, input GB/s, peak RSS, peer/ours ratios, an I/O floor
measured in the same run, and whether the outputs are byte-identical. It
reports; it never asserts a timing.

Run it with the project's interpreter, from anywhere:
    .venv/bin/python bench/bench_model_free_ptq.py                 # ~1 GB, 3 shards, all schemes
    .venv/bin/python bench/bench_model_free_ptq.py --single-shard-gb 2 --schemes FP8_BLOCK
    .venv/bin/python bench/bench_model_free_ptq.py --params 50M --repeats 1 --tools peer
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from checkpoint import ensure_checkpoint, weight_files
from compare import Comparison, compare_outputs
from peer_env import PeerEnv, default_torch_mode, ensure_peer_env

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("runner.py")
DEFAULT_SCHEMES = ("FP8_BLOCK", "NVFP4A16", "MXFP4A16", "W4A16")
DEFAULT_IGNORE = ("lm_head", "model.embed_tokens")
PEER_VERSION = "0.14.0.1"
GB = 1e9
CHUNK = 16 * 1024 * 1024
RSS_POLL_S = 0.01


# ----------------------------------------------------------------------------- data


@dataclass
class Tool:
    """How to start one tool's runner process."""

    name: str
    python: str
    env: dict[str, str]
    versions: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class Run:
    """One subprocess run: child-reported numbers plus what the parent measured."""

    tool: str
    scheme: str
    repeat: int
    ok: bool
    process_s: float  # parent: spawn -> exit
    peak_rss: int  # child: VmHWM at exit (ru_maxrss would include this parent's peak)
    peak_anon_sampled: int  # parent: max RssAnon polled from /proc every RSS_POLL_S
    call_s: float | None = None
    import_s: float | None = None
    baseline_rss: int | None = None
    gpu_peak: int | None = None
    output_bytes: int = 0
    error: str | None = None
    log: str = ""

    @property
    def above_baseline(self) -> int | None:
        return None if self.baseline_rss is None else self.peak_rss - self.baseline_rss


@dataclass
class Floor:
    """Sequential read of every input shard plus a write of the same output byte count."""

    read_s: float
    write_s: float

    @property
    def total_s(self) -> float:
        return self.read_s + self.write_s


@dataclass
class SchemeResult:
    scheme: str
    runs: list[Run] = field(default_factory=list)
    floors: list[Floor] = field(default_factory=list)
    comparison: Comparison | None = None

    def ok_runs(self, tool: str) -> list[Run]:
        return [r for r in self.runs if r.tool == tool and r.ok]

    def failures(self, tool: str) -> list[Run]:
        return [r for r in self.runs if r.tool == tool and not r.ok]


# ----------------------------------------------------------------------------- arguments


def parse_count(text: str) -> int:
    """'500M' -> 500_000_000; accepts K, M, B/G suffixes (parameter counts)."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}
    text = text.strip().upper()
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(float(text))


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def new_parser(doc: str) -> argparse.ArgumentParser:
    """The benchmarks' argument parser: the module docstring's first paragraph, defaults shown."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog="Columns and caveats: bench/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    src = p.add_argument_group("input checkpoint")
    src.add_argument("--checkpoint", type=Path, help="use this safetensors folder instead of generating one")
    src.add_argument(
        "--params",
        type=parse_count,
        default=parse_count("500M"),
        help="size of the generated checkpoint in parameters (bf16: 2 bytes each), e.g. 50M, 1B",
    )
    src.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="hidden size of the generated model (default: 2048 from 400M params up, narrower below)",
    )
    src.add_argument(
        "--shard-mb",
        type=float,
        default=500.0,
        help="max shard size in MB (1e6 bytes); shrunk automatically so there are always >= 2 shards",
    )
    src.add_argument(
        "--single-shard-gb",
        type=float,
        default=None,
        help="memory mode: generate ONE shard of about this many GB and report peak RSS above "
        "the interpreter baseline (overrides --params/--shard-mb)",
    )
    src.add_argument("--seed", type=int, default=0, help="seed of the random weights (std 0.02)")

    run = p.add_argument_group("what to run")
    run.add_argument("--schemes", type=csv, default=list(DEFAULT_SCHEMES), help="comma-separated preset names")
    run.add_argument("--repeats", type=int, default=3, help="runs per tool and scheme (alternating)")
    run.add_argument("--max-workers", type=int, default=1, help="passed to both tools")
    run.add_argument("--device", default=default_device(), help="passed to both tools: cpu, cuda, cuda:0, ...")
    run.add_argument(
        "--ignore", type=csv, default=list(DEFAULT_IGNORE), help="comma-separated ignore list passed to both tools"
    )
    run.add_argument(
        "--tools",
        type=csv,
        default=["ours", "peer"],
        help="which tools to run: ours, peer or both (peer alone is useful before ours exists)",
    )
    run.add_argument(
        "--rss-target-gb", type=float, default=1.0, help="memory mode: ours' target for peak RSS above baseline, in GB"
    )

    env = p.add_argument_group("environments and files")
    env.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "ptq-hub" / "bench",
        help="generated checkpoints, run outputs and (by default) the peer venv live here",
    )
    env.add_argument("--peer-venv", type=Path, default=None, help="peer venv folder (default: CACHE_DIR/peer-venv)")
    env.add_argument("--peer-version", default=PEER_VERSION, help="llmcompressor version for the peer")
    env.add_argument(
        "--peer-torch",
        choices=("install", "share"),
        default=default_torch_mode(),
        help="install: pip install torch==<our version> into the peer venv first; "
        "share: reuse our torch via a .pth file (default on CUDA builds: no multi-GB download)",
    )
    env.add_argument(
        "--peer-pip-args",
        type=shlex.split,
        default=[],
        help='extra pip install arguments, e.g. "--no-index --find-links wheels/" offline',
    )
    env.add_argument("--ours-python", default=sys.executable, help="interpreter that can import ptq_core")
    env.add_argument("--keep-outputs", action="store_true", help="keep the last output folder of each tool")
    env.add_argument("--json", type=Path, default=None, help="also write every raw measurement here")
    args = p.parse_args(argv)
    unknown = set(args.tools) - {"ours", "peer"}
    if unknown or not args.tools:
        p.error(f"--tools takes ours and/or peer, got {args.tools}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    args.peer_venv = args.peer_venv or args.cache_dir / "peer-venv"
    return args


# ----------------------------------------------------------------------------- tools


def child_env(tool: str) -> dict[str, str]:
    """Same environment for both tools, except where each finds its library.

    Ours gets the repository root in front of any PYTHONPATH already set (where
    its dependencies may live); the peer gets no PYTHONPATH at all, so nothing
    of this project leaks into its venv. Offline Hub flags make sure neither
    tool spends time on the network for a local folder.
    """
    env = dict(os.environ)
    inherited = env.pop("PYTHONPATH", "")
    if tool == "ours":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), inherited) if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def ours_tool(python: str) -> Tool:
    """Fail early, with a clear message, when ptq_core.model_free_ptq is not there yet."""
    env = child_env("ours")
    probe = (
        "import json, ptq_core, torch, compressed_tensors as ct; ptq_core.model_free_ptq; "
        "print(json.dumps({'ptq-hub': ptq_core.__version__, 'compressed-tensors': ct.__version__, "
        "'torch': torch.__version__}))"
    )
    out = subprocess.run([python, "-c", probe], check=False, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(
            "error: ptq_core.model_free_ptq is not importable yet "
            f"({last}).\nIt lives in ptq_core/pipeline.py; until it lands, benchmark the peer alone "
            "with --tools peer."
        )
    return Tool("ours", python, env, json.loads(out.stdout.strip().splitlines()[-1]), note=str(REPO_ROOT))


def peer_tool(args: argparse.Namespace) -> tuple[Tool, PeerEnv]:
    peer = ensure_peer_env(
        args.peer_venv, peer_version=args.peer_version, torch_mode=args.peer_torch, pip_args=args.peer_pip_args
    )
    return Tool("peer", str(peer.python), child_env("peer"), peer.versions, note=str(args.peer_venv)), peer


# ----------------------------------------------------------------------------- measuring


class AnonRssSampler(threading.Thread):
    """Polls a child's RssAnon: the kernel's peak RSS also counts file pages of
    memory-mapped shards, which the OS can drop; anonymous memory it cannot."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                for line in self.path.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            self.done.wait(RSS_POLL_S)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_once(tool: Tool, scheme: str, repeat: int, model: Path, out: Path, args: argparse.Namespace) -> Run:
    """Start the runner in a fresh process and time it from spawn to exit.

    Peak RSS is the child's own VmHWM. Not getrusage: RUSAGE_CHILDREN is the max
    over all children, and even a per-child wait4 ``ru_maxrss`` inherits the
    parent's high-water mark across fork+exec. wait4's value is only a fallback
    for systems without /proc, and an OOM-killed child (no result file)."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    result_path = out.parent / f"{tool.name}.result.json"
    log_path = out.parent / f"{tool.name}.log"
    result_path.unlink(missing_ok=True)
    cmd = [
        tool.python,
        str(RUNNER),
        "--tool",
        tool.name,
        "--model",
        str(model),
        "--out",
        str(out),
        "--scheme",
        scheme,
        "--ignore-json",
        json.dumps(args.ignore),
        "--max-workers",
        str(args.max_workers),
        "--device",
        args.device,
        "--result",
        str(result_path),
    ]
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=tool.env, cwd=out.parent)
        sampler = AnonRssSampler(proc.pid)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: leave no orphan quantizing in the background
            proc.kill()
            proc.wait()
            sampler.done.set()
            raise
        process_s = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.done.set()
        sampler.join()
    child = json.loads(result_path.read_text()) if result_path.is_file() else {}
    ok = proc.returncode == 0 and child.get("ok", False)
    run = Run(
        tool=tool.name,
        scheme=scheme,
        repeat=repeat,
        ok=ok,
        process_s=process_s,
        peak_rss=child.get("end", {}).get("hwm") or usage.ru_maxrss * 1024,
        peak_anon_sampled=sampler.peak,
        call_s=child.get("call_s"),
        import_s=child.get("import_s"),
        baseline_rss=child.get("baseline", {}).get("rss"),
        gpu_peak=child.get("gpu_peak_bytes"),
        output_bytes=folder_bytes(out),
        log=str(log_path),
        error=None if ok else child.get("error") or f"exit status {proc.returncode}",
    )
    state = f"call {run.call_s:.2f} s" if ok else f"FAILED: {run.error}"
    print(
        f"  {scheme} #{repeat + 1} {tool.name}: {state}, process {process_s:.2f} s, "
        f"peak RSS {run.peak_rss / GB:.2f} GB",
        file=sys.stderr,
        flush=True,
    )
    if not ok:
        print(log_tail(log_path), file=sys.stderr)
    return run


def read_all(files: list[Path], buf: memoryview) -> float:
    t = time.perf_counter()
    for path in files:
        with path.open("rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t


def write_bytes(path: Path, count: int, buf: memoryview) -> float:
    t = time.perf_counter()
    with path.open("wb", buffering=0) as fh:
        left = count
        while left > 0:
            left -= fh.write(buf[: min(left, len(buf))])
    elapsed = time.perf_counter() - t
    path.unlink()
    return elapsed


def measure_floor(files: list[Path], output_bytes: int, scratch: Path) -> Floor:
    """What any tool must at least spend: read each input shard once and write the
    output's byte count, in big sequential chunks, with the same (warm) page cache
    and no fsync, as the tools themselves don't sync either."""
    buf = memoryview(bytearray(CHUNK))
    scratch.mkdir(parents=True, exist_ok=True)
    return Floor(read_all(files, buf), write_bytes(scratch / "floor.bin", output_bytes, buf))


def bench_scheme(
    result: SchemeResult, tools: list[Tool], model: Path, files: list[Path], args: argparse.Namespace
) -> None:
    """Alternate tools per round (A B, B A, ...), one I/O floor per round.

    Fills ``result`` run by run, so an interrupted benchmark can still report
    what finished.
    """
    work = args.cache_dir / "runs" / result.scheme
    for repeat in range(args.repeats):
        order = tools if repeat % 2 == 0 else tools[::-1]
        round_runs: list[Run] = []
        for tool in order:
            round_runs.append(run_once(tool, result.scheme, repeat, model, work / tool.name, args))
            result.runs.append(round_runs[-1])
        out_bytes = next((r.output_bytes for r in round_runs if r.ok), 0)
        if out_bytes:
            result.floors.append(measure_floor(files, out_bytes, work))
    outs = {t.name: work / t.name for t in tools}
    if len(tools) == 2 and all(result.ok_runs(t.name) for t in tools):
        result.comparison = compare_outputs(outs["ours"], outs["peer"])
    if not args.keep_outputs:
        for path in outs.values():
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- report


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def ratio(num: float | None, den: float | None) -> str:
    return "–" if num is None or not den else f"{num / den:.2f}×"


@dataclass
class Summary:
    """Per tool and scheme: medians of times, max of memory."""

    call_s: float | None = None
    process_s: float | None = None
    import_s: float | None = None
    peak_rss: float | None = None
    above_baseline: float | None = None
    peak_anon: float | None = None
    gpu_peak: float | None = None
    output_bytes: int = 0
    call_range: str = "–"
    failed: str | None = None


def summarize(result: SchemeResult, tool: str) -> Summary:
    runs = result.ok_runs(tool)
    failed = result.failures(tool)
    s = Summary(failed=failed[0].error if failed else None)
    if not runs:
        return s
    calls = [r.call_s for r in runs if r.call_s is not None]
    s.call_s, s.process_s = median(calls), median([r.process_s for r in runs])
    s.import_s = median([r.import_s for r in runs if r.import_s is not None])
    s.peak_rss = max(r.peak_rss for r in runs)
    s.above_baseline = max((r.above_baseline for r in runs if r.above_baseline is not None), default=None)
    s.peak_anon = max(r.peak_anon_sampled for r in runs) or None
    s.gpu_peak = max((r.gpu_peak for r in runs if r.gpu_peak is not None), default=None)
    s.output_bytes = runs[-1].output_bytes
    s.call_range = f"{min(calls):.2f}–{max(calls):.2f}" if calls else "–"
    return s


def gb(value: float | None) -> float | None:
    return None if value is None else value / GB


def gb_per_s(nbytes: int, seconds: float | None) -> float | None:
    return None if not seconds else nbytes / GB / seconds


def main_table(results: list[SchemeResult], input_bytes: int) -> list[str]:
    head = (
        "scheme",
        "ours call s",
        "peer call s",
        "peer/ours",
        "ours process s",
        "peer process s",
        "peer/ours",
        "ours GB/s",
        "peer GB/s",
        "ours peak RSS GB",
        "peer peak RSS GB",
        "peer/ours",
        "I/O floor s",
        "ours/floor",
        "identical",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        ours, peer = summarize(res, "ours"), summarize(res, "peer")
        floor = median([f.total_s for f in res.floors])
        cells = [
            res.scheme,
            fmt(ours.call_s) if not ours.failed else "failed",
            fmt(peer.call_s) if not peer.failed else "failed",
            ratio(peer.call_s, ours.call_s),
            fmt(ours.process_s),
            fmt(peer.process_s),
            ratio(peer.process_s, ours.process_s),
            fmt(gb_per_s(input_bytes, ours.call_s)),
            fmt(gb_per_s(input_bytes, peer.call_s)),
            fmt(gb(ours.peak_rss)),
            fmt(gb(peer.peak_rss)),
            ratio(peer.peak_rss, ours.peak_rss),
            fmt(floor),
            ratio(ours.call_s, floor),
            res.comparison.cell() if res.comparison else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def detail_table(results: list[SchemeResult], tools: list[Tool]) -> list[str]:
    head = (
        "scheme",
        "tool",
        "import s",
        "call s min–max",
        "peak RSS above baseline GB",
        "peak anon RSS GB (sampled)",
        "GPU peak GB",
        "output GB",
        "call/floor",
        "error",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        floor = median([f.total_s for f in res.floors])
        for tool in tools:
            s = summarize(res, tool.name)
            lines.append(
                "| "
                + " | ".join(
                    [
                        res.scheme,
                        tool.name,
                        fmt(s.import_s),
                        s.call_range,
                        fmt(gb(s.above_baseline)),
                        fmt(gb(s.peak_anon)),
                        fmt(gb(s.gpu_peak)),
                        fmt(gb(s.output_bytes or None), digits=3),
                        ratio(s.call_s, floor),
                        (s.failed or "").replace("|", "/")[:120],
                    ]
                )
                + " |"
            )
    return lines


def floor_table(results: list[SchemeResult], input_bytes: int) -> list[str]:
    lines = ["| scheme | read s | write s | output GB | floor GB/s (input bytes / floor s) |", "|---|---|---|---|---|"]
    for res in results:
        if not res.floors:
            continue
        read_s = median([f.read_s for f in res.floors])
        write_s = median([f.write_s for f in res.floors])
        out = next((r.output_bytes for r in res.runs if r.ok), 0)
        lines.append(
            f"| {res.scheme} | {read_s:.3f} | {write_s:.3f} | {out / GB:.3f} | "
            f"{input_bytes / GB / (read_s + write_s):.2f} |"
        )
    return lines


def memory_table(results: list[SchemeResult], tools: list[Tool], target_gb: float) -> list[str]:
    title = (
        "| scheme | tool | baseline RSS GB | peak RSS GB | above baseline GB | peak anon RSS GB (sampled) "
        f"| target < {target_gb:g} GB above baseline |"
    )
    lines = [title, "|---|---|---|---|---|---|---|"]
    for res in results:
        for tool in tools:
            runs = res.ok_runs(tool.name)
            if not runs:
                lines.append(f"| {res.scheme} | {tool.name} | – | – | – | – | failed |")
                continue
            worst = max(runs, key=lambda r: r.above_baseline or 0)
            above = gb(worst.above_baseline)
            verdict = "–" if tool.name != "ours" or above is None else ("met" if above < target_gb else "**missed**")
            lines.append(
                f"| {res.scheme} | {tool.name} | {fmt(gb(worst.baseline_rss))} | {fmt(gb(worst.peak_rss))} "
                f"| {fmt(above)} | {fmt(gb(worst.peak_anon_sampled or None))} | {verdict} |"
            )
    return lines


def config_diffs(results: list[SchemeResult]) -> list[str]:
    lines = []
    for res in results:
        if res.comparison is None:
            continue
        c = res.comparison
        diffs = c.config_diff or ["identical"]
        lines.append(
            f"- **{res.scheme}**: config.json quantization_config: "
            + "; ".join(diffs)
            + ("" if c.same_shard_layout else " (tensors are spread over shards differently)")
        )
        if c.differing:
            lines.append(f"  - differing tensors (first 10): {', '.join(c.differing[:10])}")
    return lines


@dataclass
class Context:
    """Everything the report says about the setting of the measurements."""

    args: argparse.Namespace
    model: Path
    files: list[Path]
    tools: list[Tool]
    warm_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def input_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def header(ctx: Context) -> list[str]:
    args, model, files = ctx.args, ctx.model, ctx.files
    input_bytes = ctx.input_bytes
    marker = model / ".ptq-bench-complete.json"
    params = json.loads(marker.read_text())["num_params"] if marker.is_file() else input_bytes // 2
    largest = max(f.stat().st_size for f in files) / 1e6
    gpu = f", GPU {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    lines = [
        "## model_free_ptq benchmark: ptq_core vs llm-compressor",
        "",
        f"- input: `{model}` — {params / 1e6:.0f} M params, {input_bytes / GB:.3f} GB "
        + f"in {len(files)} shard(s) (largest {largest:.0f} MB)",
        f"- device `{args.device}`, max_workers {args.max_workers}, ignore {args.ignore}, "
        + f"{args.repeats} alternating run(s) per tool; times are medians, RSS the max over runs",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}{gpu}",
        f"- page cache: warm — every input shard was read once before timing ({ctx.warm_s:.2f} s); "
        + "caches are not dropped",
        f"- load average (1 min) before / after: {ctx.load_before[0]:.2f} / {ctx.load_after[0]:.2f} "
        + "(alternation spreads other work on the machine over both tools, but it adds noise)",
    ]
    for tool in ctx.tools:
        versions = ", ".join(f"{k} {v}" for k, v in tool.versions.items())
        lines.append(f"- {tool.name}: {versions} (`{tool.note}`)")
    return lines


def report(ctx: Context, results: list[SchemeResult]) -> str:
    args, tools, input_bytes = ctx.args, ctx.tools, ctx.input_bytes
    parts = header(ctx) + ["", *main_table(results, input_bytes), ""]
    if args.single_shard_gb:
        parts += ["### Memory (single-shard mode)", "", *memory_table(results, tools, args.rss_target_gb), ""]
    parts += [
        "### Details",
        "",
        *detail_table(results, tools),
        "",
        "### I/O floor",
        "",
        *floor_table(results, input_bytes),
        "",
    ]
    diffs = config_diffs(results)
    if diffs:
        parts += ["### Output comparison", "", *diffs, ""]
    return "\n".join(parts)


def dump_json(path: Path, results: list[SchemeResult], tools: list[Tool], input_bytes: int) -> None:
    data = {
        "input_bytes": input_bytes,
        "tools": {t.name: t.versions for t in tools},
        "schemes": [
            {
                "scheme": r.scheme,
                "runs": [asdict(run) for run in r.runs],
                "floors": [asdict(f) for f in r.floors],
                "comparison": None
                if r.comparison is None
                else {**asdict(r.comparison), "identical": r.comparison.identical},
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------- main


def resolve_input(args: argparse.Namespace) -> Path:
    if args.checkpoint is not None:
        return args.checkpoint.resolve()
    if args.single_shard_gb:
        return ensure_checkpoint(
            args.cache_dir, int(args.single_shard_gb * GB / 2), None, hidden_size=args.hidden, seed=args.seed
        )
    return ensure_checkpoint(
        args.cache_dir, args.params, int(args.shard_mb * 1e6), hidden_size=args.hidden, seed=args.seed
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args, resolve_input, report)


def run(args: argparse.Namespace, resolve: Callable[[argparse.Namespace], Path],
        render: Callable[[Context, list[SchemeResult]], str]) -> int:
    """Every scheme x tool x repeat in fresh processes, then the report (also after Ctrl-C or
    SIGTERM, with the runs that finished). ``resolve(args)`` gives the input folder."""
    tools: list[Tool] = []
    if "ours" in args.tools:
        tools.append(ours_tool(args.ours_python))  # first: fail before any slow step
    if "peer" in args.tools:
        tools.append(peer_tool(args)[0])
    model = resolve(args)
    files = weight_files(model)
    ctx = Context(args, model, files, tools, read_all(files, memoryview(bytearray(CHUNK))), os.getloadavg())
    results: list[SchemeResult] = []
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `timeout`, CI limits: still report
    try:
        for scheme in args.schemes:
            results.append(SchemeResult(scheme))
            bench_scheme(results[-1], tools, model, files, args)
    except KeyboardInterrupt:
        print("interrupted: reporting the runs that finished", file=sys.stderr)
        results = [r for r in results if r.runs]
    ctx.load_after = os.getloadavg()
    print(render(ctx, results))
    if args.json:
        dump_json(args.json, results, tools, ctx.input_bytes)
    failed = [r for res in results for r in res.runs if not r.ok]
    if failed:
        print(f"{len(failed)} run(s) failed; logs under {args.cache_dir / 'runs'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
