"""scripts/gpu-check.sh and scripts/gpu_check.py without a GPU: the table, its SKIPPED reasons,
the CPU timing, the vLLM result parsing and the comparison rule (a stand-in ``vllm`` module).

The GPU path itself runs only on a GPU machine (README "GPU check").
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"

spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)


def rows(table: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[1] in ("PASS", "FAIL", "SKIPPED"):
            out[cells[0]] = (cells[1], cells[2])
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path")
def test_no_gpu_run_prints_the_table_with_reasons(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--work", str(tmp_path / "work"), "--out", str(out),
         "--skip", "models", "--timing-scheme", "FP8_BLOCK", "--timing-hidden", "512",
         "--vllm-skip", "vllm is not installed (test)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    table = (out / "gpu-check.md").read_text()
    assert table in p.stdout  # printed once at the end, the same as the file
    got = rows(table)
    assert got["environment"][0] == "PASS"
    result, numbers = got["CUDA tests (pytest -k test_cuda)"]
    assert result == "SKIPPED" and numbers.startswith("no CUDA GPU (torch.cuda.is_available() is False); ")
    served = [k for k in got if k.startswith("vLLM ")]
    assert served == [f"vLLM tiny-{a} {v}" for a in ("llama", "qwen3_moe")
                      for v in ("bf16 (reference)", "FP8_BLOCK vs bf16", "NVFP4A16 vs bf16", "W4A16 vs bf16")]
    assert all(got[k] == ("SKIPPED", "vllm is not installed (test)") for k in served)
    assert got["quantize time FP8_BLOCK cpu"][0] == "PASS"
    assert "GB/s" in got["quantize time FP8_BLOCK cpu"][1]
    assert got["quantize time FP8_BLOCK cuda:0"] == ("SKIPPED", "no CUDA GPU (torch.cuda.is_available() is False)")
    assert got["total"][0] == "PASS"
    assert "0 failed" in table.splitlines()[-1]


def test_the_shell_script_parses_and_names_one_vllm_pin():
    sh = ROOT / "scripts" / "gpu-check.sh"
    subprocess.run(["bash", "-n", str(sh)], check=True)
    assert len([ln for ln in sh.read_text().splitlines() if ln.startswith("VLLM_VERSION=")]) == 1
    if shutil.which("shellcheck"):
        p = subprocess.run(["shellcheck", str(sh)], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout


def test_compare_passes_a_close_model_and_fails_a_misloaded_one():
    ref = {"tokens": [[5, 6, 7, 8], [9, 10, 11, 12]], "prompt_logprobs": [[-1.0, -5.0, -9.0], [-2.0, -7.0, -3.0]]}
    close = {"tokens": [[5, 6, 7, 99], [9, 98, 11, 12]],
             "prompt_logprobs": [[-1.1, -5.2, -8.7], [-2.1, -6.8, -3.3]]}
    ok, numbers = gpu_check.compare(ref, close)
    assert ok, numbers
    assert numbers.startswith("first token 2/2, tokens 6/8 (75%), prompt logprobs corr 0.99")
    # what a misloaded model gives: no relation to the original's logprobs
    wrong = {"tokens": [[1, 2, 3, 4], [1, 2, 3, 4]], "prompt_logprobs": [[-6.0, -1.0, -6.5], [-5.0, -6.0, -7.0]]}
    ok, numbers = gpu_check.compare(ref, wrong)
    assert not ok and numbers.startswith("first token 0/2, tokens 0/8 (0%)")
    ok, numbers = gpu_check.compare(ref, {**close, "prompt_logprobs": [[-1.0], [-2.0]]})
    assert not ok and "2 values, the bf16 run gave 6" in numbers


def test_serve_reads_vllm_outputs(tmp_path, monkeypatch):
    """``serve`` against a stand-in with vLLM's shapes: prompt_logprobs is None at position 0, then
    one {token_id: Logprob} dict per prompt position; the generated ids are outputs[0].token_ids."""
    seen = {}

    class LLM:
        def __init__(self, model, **kwargs):
            seen.update(model=model, **kwargs)

        def generate(self, prompts, params, use_tqdm=True):
            seen["params"] = params
            return [types.SimpleNamespace(
                prompt_logprobs=[None] + [{t: types.SimpleNamespace(logprob=-0.5 * i), t + 1: object()}
                                          for i, t in enumerate(p["prompt_token_ids"][1:], 1)],
                outputs=[types.SimpleNamespace(token_ids=[3, 4, 5])]) for p in prompts]

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams, fake.__version__ = LLM, lambda **kw: kw, "0.33.0"
    monkeypatch.setitem(sys.modules, "vllm", fake)
    prompts = [[1, 10, 11], [1, 20, 21]]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    assert gpu_check.serve("/m", str(tmp_path / "p.json"), str(tmp_path / "r.json")) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["tokens"] == [[3, 4, 5], [3, 4, 5]]
    assert res["prompt_logprobs"] == [[-0.5, -1.0], [-0.5, -1.0]]
    assert res["vllm"] == "0.33.0"
    assert seen["enforce_eager"] is True and seen["max_model_len"] == 256
    assert seen["params"]["temperature"] == 0.0 and seen["params"]["prompt_logprobs"] == 1


def test_prompts_are_seeded_words():
    a, b = gpu_check.prompts(), gpu_check.prompts()
    assert a == b and len(a) == gpu_check.PROMPTS
    assert all(p[0] == 1 and all(7 <= t < gpu_check.VOCAB for t in p[1:]) for p in a)
