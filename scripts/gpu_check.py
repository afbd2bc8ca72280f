#!/usr/bin/env python3
"""The Python half of ``scripts/gpu-check.sh``: every check, one markdown table at the end.

    python scripts/gpu_check.py run [--work DIR] [--out DIR] [--vllm-python PY | --vllm-skip REASON] ...
    python scripts/gpu_check.py serve MODEL PROMPTS.json RESULT.json   (one vLLM engine; internal)
    python scripts/gpu_check.py time SRC DST SCHEME DEVICE...          (quantize timings; internal)

``run`` does, each step in its own subprocess with its own timeout, inside one overall budget:

1. the CUDA tests of the suite (tests that skip without ``torch.cuda.is_available()``);
2. a seeded tiny Llama and a tiny Qwen3-MoE built with transformers' own classes (bf16, hidden
   256, 2 layers, vocab 1024, a local word-level tokenizer), each quantized by ``ptq quantize``
   to FP8_BLOCK, NVFP4A16 and W4A16 (on ``cuda:0`` when there is a GPU);
3. each output and the bf16 original served with vLLM's offline ``LLM`` API; greedy tokens and the
   prompt tokens' logprobs compared with the bf16 model's;
4. quantization of a synthetic checkpoint with 4096x4096 / 14336x4096 weights timed on the CPU and
   on ``cuda:0`` (the outputs must be byte-identical).

Whatever cannot run here is a SKIPPED row with the reason. The table goes to stdout and, when
``--out`` (or ``$OUT``) is set, to ``gpu-check.md`` there, rewritten after every row, so a run
killed from outside still leaves what it had; ``gpu-check.log`` holds the tails of failed steps.

Only the standard library is imported at the top: ``serve`` runs under vLLM's own Python
(which pins its own torch and compressed-tensors), ``run`` must print its table even where
torch is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # this checkout's ptq_core, whatever else is installed
    sys.path.insert(0, str(ROOT))
SCHEMES = ("FP8_BLOCK", "NVFP4A16", "W4A16")
TIMED_SCHEMES = ("FP8_BLOCK", "NVFP4A16")
VOCAB = 1024
PROMPTS, PROMPT_LEN, MAX_TOKENS = 8, 16, 16
# A served quantized model passes when the logprobs it gives the prompt tokens correlate with the
# bf16 model's at least this much. Measured on CPU (transformers, these tiny models, simulated
# weight rounding): 8-bit 0.999-1.000, 4-bit 0.95-0.98; weights that load wrong (layers replaced by
# noise, or zeroed) give -0.1 to 0.2. Greedy-token agreement is reported, not judged: with a few
# prompts one near-tie flips it.
MIN_LOGPROB_CORR = 0.8

# ============================================================================
# rows and the table
# ============================================================================


@dataclasses.dataclass
class Row:
    check: str
    result: str  # PASS, FAIL, SKIPPED
    numbers: str
    seconds: float | None = None


class Report:
    def __init__(self, out: Path | None, header: list[str]):
        self.rows: list[Row] = []
        self.out = out
        self.header = header
        self.log_parts: list[str] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        secs = "" if row.seconds is None else f" ({row.seconds:.1f} s)"
        print(f"[gpu-check] {row.result:7} {row.check}: {row.numbers}{secs}", flush=True)
        self.write()
        return row

    def log(self, title: str, text: str) -> None:
        self.log_parts.append(f"==== {title}\n{text.rstrip()}\n")
        self.write()

    def table(self) -> str:
        def cell(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        lines = [*self.header, "", "| check | result | numbers | s |", "|---|---|---|---|"]
        for r in self.rows:
            secs = "" if r.seconds is None else f"{r.seconds:.1f}"
            lines.append(f"| {cell(r.check)} | {r.result} | {cell(r.numbers)} | {secs} |")
        counts = {k: sum(r.result == k for r in self.rows) for k in ("PASS", "FAIL", "SKIPPED")}
        lines += ["", f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIPPED']} skipped"]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu-check.md").write_text(self.table())
        if self.log_parts:
            (self.out / "gpu-check.log").write_text("\n".join(self.log_parts))


class Budget:
    """The overall deadline: a step that would start past it is SKIPPED, and no step's own
    timeout reaches beyond it (the device tool kills a command at 600 s)."""

    def __init__(self, seconds: float, t0: float):
        self.deadline = t0 + seconds

    def left(self) -> float:
        return self.deadline - time.time()

    def timeout(self, wanted: float) -> float:
        return max(1.0, min(wanted, self.left()))


# ============================================================================
# subprocesses
# ============================================================================


@dataclasses.dataclass
class Done:
    rc: int | None  # None: killed at its timeout
    output: str
    seconds: float


def run_cmd(cmd: list[str], timeout: float, *, env: dict | None = None, cwd: Path = ROOT) -> Done:
    """Run ``cmd`` in its own process group; at ``timeout`` the whole group is killed
    (vLLM and pytest leave children behind otherwise)."""
    t = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return Done(proc.returncode, out, time.time() - t)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        return Done(None, out or "", time.time() - t)


def last_error(text: str, limit: int = 160) -> str:
    """The line of ``text`` most likely to say what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"(Error|Exception|error:|FAILED|Traceback)", ln):
            return ln[:limit]
    return (lines[-1] if lines else "no output")[:limit]


def failure(done: Done, timeout: float) -> str:
    if done.rc is None:
        return f"timed out after {timeout:.0f} s"
    return f"exit {done.rc}: {last_error(done.output)}"


def probe(python: str, code: str) -> str | None:
    """What ``code`` prints under ``python``, or None when it fails."""
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


# ============================================================================
# the checks
# ============================================================================


def environment() -> tuple[dict, Row]:
    info = {"python": platform.python_version(), "torch": None, "cuda": False, "gpu": None}
    t = time.time()
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            cap = torch.cuda.get_device_capability(0)
            info["gpu"] = f"{torch.cuda.get_device_name(0)} (sm_{cap[0]}{cap[1]})"
    except ImportError as err:
        info["error"] = str(err)
    try:
        import ptq_core

        info["ptq_core"] = str(Path(ptq_core.__file__).parent)
    except ImportError as err:
        info["ptq_error"] = str(err)
    gpu = info["gpu"] or "no CUDA GPU (torch.cuda.is_available() is False)"
    numbers = f"python {info['python']}, torch {info['torch'] or 'missing'}, {gpu}"
    ok = info["torch"] and "ptq_core" in info
    if not ok:
        numbers += "; " + (info.get("error") or info.get("ptq_error") or "")
    return info, Row("environment", "PASS" if ok else "FAIL", numbers, time.time() - t)


def cuda_tests(rep: Report, budget: Budget, info: dict, work: Path) -> None:
    name = "CUDA tests (pytest -k test_cuda)"
    # the suite marks them skipif(not torch.cuda.is_available()) and names them test_cuda_*
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "not torch.cuda.is_available()" in p.read_text())
    if not info["cuda"]:
        rep.add(Row(name, "SKIPPED", f"no CUDA GPU (torch.cuda.is_available() is False); "
                    f"{len(files)} files hold CUDA tests"))
        return
    if probe(sys.executable, "import pytest") is None:
        rep.add(Row(name, "SKIPPED", "pytest is not installed in this Python"))
        return
    xml = work / "cuda-tests.xml"
    xml.unlink(missing_ok=True)
    timeout = budget.timeout(240)
    env = {**os.environ, "PTQ_DISABLE_PROGRESS": "1"}
    # pytest-xdist, where installed (the GPU image has it): 4 workers share the one GPU
    workers = ["-n", "4"] if probe(sys.executable, "import xdist") is not None else []
    done = run_cmd([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, "-k", "test_cuda",
                    f"--junitxml={xml}", *files], timeout, env=env)
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        total = int(suite.get("tests", 0))
        counts = {k: int(suite.get(k, 0)) for k in ("failures", "errors", "skipped")}
        counts = {"passed": total - sum(counts.values()), "failed": counts["failures"],
                  "errors": counts["errors"], "skipped": counts["skipped"]}
    numbers = ", ".join(f"{v} {k}" for k, v in counts.items())
    ok = done.rc == 0 and counts["passed"] > 0
    if not ok:
        numbers += "; " + failure(done, timeout)
        rep.log(name, done.output[-6000:])
    rep.add(Row(name, "PASS" if ok else "FAIL", numbers, done.seconds))


# ---------------------------------------------------------------- tiny models


def _tokenizer_files(root: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from factory import _tokenizer_json  # a word-level tokenizer: w0 w1 ... and the specials

    (root / "tokenizer.json").write_text(json.dumps(_tokenizer_json(VOCAB)))
    (root / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "model_max_length": 512,
        "clean_up_tokenization_spaces": False}))
    (root / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def build_tiny(arch: str, root: Path) -> int:
    """A seeded bf16 model of transformers' own class, saved with its tokenizer; returns #params.

    The lm_head is scaled by 10 so the next-token distribution is peaked (logprob spread ~2.5
    nats instead of ~0.3): then a model whose quantized layers load wrong is told apart from a
    correct one by its prompt logprobs (see MIN_LOGPROB_CORR)."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    common = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=64, vocab_size=VOCAB, max_position_embeddings=512, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, initializer_range=0.02)
    if arch == "llama":
        cfg = transformers.LlamaConfig(intermediate_size=512, **common)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.Qwen3MoeConfig(intermediate_size=512, moe_intermediate_size=256, num_experts=4,
                                          num_experts_per_tok=2, decoder_sparse_step=1, norm_topk_prob=True,
                                          **common)
        cls = transformers.Qwen3MoeForCausalLM
    torch.manual_seed(0)
    model = cls(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    model = model.to(torch.bfloat16)
    if root.exists():
        shutil.rmtree(root)
    model.save_pretrained(root)
    _tokenizer_files(root)
    return sum(p.numel() for p in model.parameters())


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def ptq_command() -> list[str]:
    """``ptq`` of this checkout (the console script is ``ptq_core.cli:console_main``; an installed ``ptq``
    may belong to another copy)."""
    return [sys.executable, "-m", "ptq_core.cli"]


def build_and_quantize(rep: Report, budget: Budget, info: dict, work: Path, archs: list[str],
                       schemes: list[str]) -> dict[str, dict[str, Path]]:
    """{arch: {"bf16": dir, scheme: dir}} of what was built and quantized."""
    models: dict[str, dict[str, Path]] = {}
    device = "cuda:0" if info["cuda"] else "cpu"
    for arch in archs:
        name = f"tiny-{arch}"
        src = work / "models" / f"{name}-bf16"
        t = time.time()
        try:
            n = build_tiny(arch, src)
        except Exception as err:  # noqa: BLE001 - any failure is a row
            rep.add(Row(f"build {name} (transformers, bf16)", "FAIL", f"{type(err).__name__}: {err}"[:200],
                        time.time() - t))
            continue
        rep.add(Row(f"build {name} (transformers, bf16)", "PASS",
                    f"{n / 1e6:.2f} M params, {dir_bytes(src) / 1e6:.1f} MB", time.time() - t))
        models[arch] = {"bf16": src}
        for scheme in schemes:
            check = f"ptq quantize {name} {scheme} --device {device}"
            if budget.left() < 20:
                rep.add(Row(check, "SKIPPED", "out of the time budget"))
                continue
            dst = work / "models" / f"{name}-{scheme}"
            timeout = budget.timeout(120)
            done = run_cmd([*ptq_command(), "quantize", str(src), str(dst), "--scheme", scheme,
                            "--device", device, "--overwrite"], timeout,
                           env={**os.environ, "PTQ_DISABLE_PROGRESS": "1"})
            if done.rc == 0:
                models[arch][scheme] = dst
                rep.add(Row(check, "PASS", f"{dir_bytes(dst) / 1e6:.2f} MB "
                            f"({dir_bytes(dst) / dir_bytes(src):.2f}x the bf16 bytes)", done.seconds))
            else:
                rep.log(check, done.output[-4000:])
                rep.add(Row(check, "FAIL", failure(done, timeout), done.seconds))
    return models


# ---------------------------------------------------------------- vLLM


def prompts() -> list[list[int]]:
    """Seeded token ids: BOS, then ordinary words (ids 7.. are w0, w1, ...; below are specials)."""
    import random

    rnd = random.Random(0)
    return [[1] + [rnd.randrange(7, VOCAB) for _ in range(PROMPT_LEN - 1)] for _ in range(PROMPTS)]


def serve(model: str, prompts_file: str, result_file: str) -> int:
    """Runs under vLLM's Python: one engine, greedy tokens and prompt logprobs to JSON."""
    t = time.time()
    from vllm import LLM, SamplingParams

    import_s = time.time() - t
    ids = json.loads(Path(prompts_file).read_text())
    kwargs = dict(model=model, tokenizer=model, dtype="bfloat16", enforce_eager=True, seed=0, max_model_len=256,
                  gpu_memory_utilization=float(os.environ.get("GPU_CHECK_GPU_UTIL", "0.08")),
                  # a fixed KV cache: no memory profiling, so engines started side by side don't count
                  # each other's memory as their own
                  kv_cache_memory_bytes=256 << 20, max_num_seqs=len(ids))
    note = ""
    try:
        llm = LLM(**kwargs)
    except Exception as err:  # noqa: BLE001
        # the prompts are token ids and nothing is detokenized: a tokenizer vLLM cannot read must
        # not hide what the weights give; the row says so
        if "tokeniz" not in f"{type(err).__name__} {err}".lower():
            raise
        note = f"tokenizer not loaded ({type(err).__name__}), served with skip_tokenizer_init"
        print(f"gpu_check serve: {note}: {err}", file=sys.stderr)
        llm = LLM(**kwargs, skip_tokenizer_init=True)
    load_s = time.time() - t - import_s
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, prompt_logprobs=1,
                            detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
    result = {"import_s": import_s, "load_s": load_s, "tokens": [], "prompt_logprobs": [], "note": note}
    for p, out in zip(ids, outs):
        result["tokens"].append(list(out.outputs[0].token_ids))
        lps = []
        for pos, entry in enumerate(out.prompt_logprobs or []):
            if entry is None or pos == 0:
                continue
            lps.append(float(entry[p[pos]].logprob))
        result["prompt_logprobs"].append(lps)
    import vllm

    result["vllm"] = vllm.__version__
    result["total_s"] = time.time() - t
    Path(result_file).write_text(json.dumps(result))
    return 0


def compare(ref: dict, got: dict) -> tuple[bool, str]:
    first = sum(a[0] == b[0] for a, b in zip(ref["tokens"], got["tokens"]))
    same = sum(x == y for a, b in zip(ref["tokens"], got["tokens"]) for x, y in zip(a, b))
    total = sum(len(a) for a in ref["tokens"])
    xs = [x for row in ref["prompt_logprobs"] for x in row]
    ys = [y for row in got["prompt_logprobs"] for y in row]
    if len(xs) != len(ys) or not xs:
        return False, f"prompt logprobs: {len(ys)} values, the bf16 run gave {len(xs)}"
    diffs = [abs(x - y) for x, y in zip(xs, ys)]
    finite = all(d == d and d != float("inf") for d in diffs)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    corr = sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else float("nan")
    ok = finite and corr >= MIN_LOGPROB_CORR
    numbers = (f"first token {first}/{len(ref['tokens'])}, tokens {same}/{total} ({100 * same / total:.0f}%), "
               f"prompt logprobs corr {corr:.3f} (>= {MIN_LOGPROB_CORR}), "
               f"|diff| mean {sum(diffs) / len(diffs):.3f} max {max(diffs):.3f}")
    return ok, numbers


def serve_all(rep: Report, budget: Budget, info: dict, work: Path, models: dict[str, dict[str, Path]],
              archs: list[str], schemes: list[str], vllm_python: str | None, vllm_skip: str,
              jobs: int, on_cpu: bool = False) -> None:
    variants = [(arch, v) for arch in archs for v in ("bf16", *schemes)]

    def check(arch: str, v: str) -> str:
        return f"vLLM tiny-{arch} {v}" + (" (reference)" if v == "bf16" else " vs bf16")

    reason = vllm_skip or ("" if vllm_python else "vllm is not importable")
    if not reason and not info["cuda"] and not on_cpu:
        reason = "no CUDA GPU (--serve-on-cpu tries anyway)"
    if reason:
        for arch, v in variants:
            rep.add(Row(check(arch, v), "SKIPPED", reason))
        return
    prompt_file = work / "prompts.json"
    prompt_file.write_text(json.dumps(prompts()))
    todo = [(a, v) for a, v in variants if v in models.get(a, {})]
    results: dict[tuple[str, str], tuple[Done, float, Path]] = {}

    from concurrent.futures import ThreadPoolExecutor

    def one(arch: str, v: str) -> None:
        out = work / "serve" / f"{arch}-{v}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        timeout = budget.timeout(float(os.environ.get("GPU_CHECK_SERVE_TIMEOUT", "240")))
        if budget.left() < 30:
            results[(arch, v)] = (Done(None, "not started: out of the time budget", 0.0), 0.0, out)
            return
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        done = run_cmd([vllm_python, str(Path(__file__).resolve()), "serve", str(models[arch][v]),
                        str(prompt_file), str(out)], timeout, env=env)
        results[(arch, v)] = (done, timeout, out)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(lambda av: one(*av), todo))

    for arch, v in variants:
        name = check(arch, v)
        if (arch, v) not in results:
            rep.add(Row(name, "SKIPPED", f"no {v} model (its build or quantize step failed or was skipped)"))
            continue
        done, timeout, out = results[(arch, v)]
        if done.rc != 0 or not out.exists():
            if done.seconds == 0.0:
                rep.add(Row(name, "SKIPPED", "out of the time budget"))
                continue
            rep.log(name, done.output[-6000:])
            rep.add(Row(name, "FAIL", failure(done, timeout), done.seconds))
            continue
        got = json.loads(out.read_text())
        note = f"; {got['note']}" if got.get("note") else ""
        if v == "bf16":
            n = sum(len(t) for t in got["tokens"])
            rep.add(Row(name, "PASS", f"vllm {got['vllm']}: {n} tokens from {len(got['tokens'])} prompts, "
                        f"engine up in {got['load_s']:.1f} s{note}", done.seconds))
            continue
        ref_file = results.get((arch, "bf16"), (None, None, None))[2]
        if ref_file is None or not ref_file.exists():
            rep.add(Row(name, "FAIL", "served, but the bf16 reference did not run: nothing to compare"
                        , done.seconds))
            continue
        ok, numbers = compare(json.loads(ref_file.read_text()), got)
        rep.add(Row(name, "PASS" if ok else "FAIL", numbers + note, done.seconds))


# ---------------------------------------------------------------- timing


def time_quantize(src: str, dst: str, scheme: str, devices: list[str]) -> int:
    """Runs in its own process: quantize ``src`` once per device (a warm-up on a tiny tensor
    first, so CUDA's start-up is not timed), print one JSON line with seconds and output hashes."""
    import torch

    from ptq_core import model_free_ptq
    from ptq_core.numerics import quantize_weight
    from ptq_core.schemes import resolve_config, weight_spec

    res = {}
    for device in devices:
        if device.startswith("cuda"):
            resolved = resolve_config(scheme)
            (group, qscheme), = resolved.groups
            spec = weight_spec(qscheme, resolved.formats[group])
            w = torch.randn(256, 256, dtype=torch.bfloat16, device=device)
            quantize_weight(w, spec)
            torch.cuda.synchronize()
        out = Path(dst) / device.replace(":", "")
        t = time.time()
        model_free_ptq(src, str(out), scheme=scheme, device=device, overwrite=True)
        secs = time.time() - t
        digest = hashlib.sha256()
        for f in sorted(out.glob("*.safetensors")):
            digest.update(f.read_bytes())
        res[device] = {"seconds": secs, "sha256": digest.hexdigest()}
        shutil.rmtree(out)
    print("RESULT " + json.dumps(res))
    return 0


def timing(rep: Report, budget: Budget, info: dict, work: Path, schemes: list[str], hidden: int = 4096) -> None:
    """One Llama layer of Llama-3-8B's shapes (hidden 4096: 4096x4096, 1024x4096, 14336x4096 and
    4096x14336 weights), quantized on the CPU and on cuda:0 in one process per scheme."""
    src = work / f"timing-src-{hidden}"
    t = time.time()
    dims = dict(hidden_size=hidden, intermediate_size=hidden * 7 // 2, num_hidden_layers=1,
                num_attention_heads=hidden // 128, num_key_value_heads=max(1, hidden // 512), head_dim=128,
                vocab_size=1024)
    try:
        if not (src / "model.safetensors").exists():
            sys.path.insert(0, str(ROOT / "tests"))
            from factory import make_checkpoint

            tmp = work / "timing-src.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            make_checkpoint(tmp, "llama", readme=False, **dims)
            shutil.rmtree(src, ignore_errors=True)
            tmp.rename(src)
    except Exception as err:  # noqa: BLE001
        rep.add(Row("timing checkpoint", "FAIL", f"{type(err).__name__}: {err}"[:200], time.time() - t))
        return
    gb = dir_bytes(src) / 1e9
    rep.add(Row(f"timing checkpoint (1 Llama layer, {hidden}x{hidden} / {dims['intermediate_size']}x{hidden}, bf16)",
                "PASS",
                f"{gb:.2f} GB", time.time() - t))
    for scheme in schemes:
        devices = ["cpu", "cuda:0"] if info["cuda"] else ["cpu"]
        timeout = budget.timeout(180)
        if budget.left() < 20:
            rep.add(Row(f"quantize time {scheme} cpu", "SKIPPED", "out of the time budget"))
            continue
        done = run_cmd([sys.executable, str(Path(__file__).resolve()), "time", str(src),
                        str(work / "timing-out"), scheme, *devices], timeout,
                       env={**os.environ, "PTQ_DISABLE_PROGRESS": "1"})
        line = next((ln for ln in done.output.splitlines() if ln.startswith("RESULT ")), None)
        if done.rc != 0 or line is None:
            rep.log(f"quantize time {scheme}", done.output[-4000:])
            rep.add(Row(f"quantize time {scheme} cpu", "FAIL", failure(done, timeout), done.seconds))
            continue
        res = json.loads(line[len("RESULT "):])
        cpu = res["cpu"]["seconds"]
        rep.add(Row(f"quantize time {scheme} cpu", "PASS",
                    f"{cpu:.2f} s, {gb / cpu:.2f} GB/s ({os.cpu_count()} cores)", cpu))
        if "cuda:0" not in res:
            rep.add(Row(f"quantize time {scheme} cuda:0", "SKIPPED",
                        "no CUDA GPU (torch.cuda.is_available() is False)"))
            continue
        gpu = res["cuda:0"]["seconds"]
        same = res["cuda:0"]["sha256"] == res["cpu"]["sha256"]
        rep.add(Row(f"quantize time {scheme} cuda:0", "PASS" if same else "FAIL",
                    f"{gpu:.2f} s, {gb / gpu:.2f} GB/s, {cpu / gpu:.1f}x the CPU's speed; "
                    f"output {'byte-identical to' if same else 'DIFFERS from'} the CPU's", gpu))


# ============================================================================
# main
# ============================================================================


def read_setup_rows(path: str | None) -> list[Row]:
    rows = []
    if path and Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                check, result, numbers, secs = (line.split("\t") + ["", "", "", ""])[:4]
                rows.append(Row(check, result, numbers, float(secs) if secs else None))
    return rows


def run(args: argparse.Namespace) -> int:
    t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())
    budget = Budget(args.budget, t0)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else None
    info, env_row = environment()
    header = [f"## ptq-hub GPU check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
              f"host {platform.node()}, {os.cpu_count()} CPU cores; {env_row.numbers}"]
    rep = Report(out, header)
    for row in read_setup_rows(args.setup_rows):
        rep.add(row)
    rep.add(env_row)
    archs, schemes = args.arch, args.scheme
    have_torch = bool(info["torch"]) and "ptq_core" in info
    steps = [s for s in ("tests", "models", "serve", "timing") if s not in args.skip]

    if "tests" in steps:
        if have_torch:
            cuda_tests(rep, budget, info, work)
        else:
            rep.add(Row("CUDA tests (pytest -k test_cuda)", "SKIPPED", "torch or ptq_core not importable"))
    models: dict[str, dict[str, Path]] = {}
    if "models" in steps:
        if have_torch:
            models = build_and_quantize(rep, budget, info, work, archs, schemes)
        else:
            rep.add(Row("tiny models", "SKIPPED", "torch or ptq_core not importable"))
    if "serve" in steps:
        serve_all(rep, budget, info, work, models, archs, schemes, args.vllm_python, args.vllm_skip, args.jobs,
                  args.serve_on_cpu)
    if "timing" in steps:
        if have_torch:
            timing(rep, budget, info, work, args.timing_scheme, args.timing_hidden)
        else:
            rep.add(Row("quantize timing", "SKIPPED", "torch or ptq_core not importable"))
    rep.add(Row("total", "PASS" if all(r.result != "FAIL" for r in rep.rows) else "FAIL",
                f"budget {args.budget:.0f} s", time.time() - t0))
    print()
    print(rep.table(), end="")
    if out:
        print(f"(table written to {out / 'gpu-check.md'})")
    return 1 if any(r.result == "FAIL" for r in rep.rows) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="every check, one table")
    r.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "ptq-gpu-check"))
    r.add_argument("--out", default=os.environ.get("OUT") or None, help="also write the table here ($OUT)")
    r.add_argument("--setup-rows", help="rows the shell script wrote (TSV: check, result, numbers, seconds)")
    r.add_argument("--vllm-python", help="a Python that imports vllm")
    r.add_argument("--vllm-skip", default="", help="why vLLM serving is skipped")
    r.add_argument("--jobs", type=int, default=int(os.environ.get("GPU_CHECK_JOBS", "4")),
                   help="vLLM engines side by side")
    r.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET", "540")),
                   help="seconds for everything, from $GPU_CHECK_T0 (the shell script's start)")
    r.add_argument("--arch", action="append", choices=("llama", "qwen3_moe"))
    r.add_argument("--scheme", action="append")
    r.add_argument("--timing-scheme", action="append")
    r.add_argument("--serve-on-cpu", action="store_true",
                   help="run the vLLM step without a CUDA GPU too (a CPU build of vLLM, or a stand-in)")
    r.add_argument("--timing-hidden", type=int, default=4096,
                   help="hidden size of the timing layer (multiple of 512; intermediate 3.5x)")
    r.add_argument("--skip", action="append", default=[], choices=("tests", "models", "serve", "timing"))
    s = sub.add_parser("serve")
    s.add_argument("model")
    s.add_argument("prompts")
    s.add_argument("result")
    t = sub.add_parser("time")
    t.add_argument("src")
    t.add_argument("dst")
    t.add_argument("scheme")
    t.add_argument("devices", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.model, args.prompts, args.result)
    if args.cmd == "time":
        return time_quantize(args.src, args.dst, args.scheme, args.devices)
    args.arch = args.arch or ["llama", "qwen3_moe"]
    args.scheme = args.scheme or list(SCHEMES)
    args.timing_scheme = args.timing_scheme or list(TIMED_SCHEMES)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
