"""Our outputs as vLLM's own code reads them (tools/vllm_check.py, in the side venv).

vLLM is not a dependency of ptq-hub: ``scripts/vllm-check.sh`` installs the pinned release
(tools/vllm-version.txt) into a side venv (``$PTQ_VLLM_VENV``, default
``~/.cache/ptq-hub/vllm-venv``). Without that venv these tests skip and say how
to make it. With it, a few tiny outputs are quantized here and handed to the tool, which
builds vLLM's CompressedTensorsConfig and the model on the meta device at capability 9.0
and 10.0, and runs the model's ``load_weights`` over our tensors (no GPU needed).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from factory import make_checkpoint

from ptq_core import model_free_ptq
from ptq_core.schemes import DEFAULT_IGNORE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PTQ_VLLM_VENV") or Path.home() / ".cache" / "ptq-hub" / "vllm-venv")
VENV_PYTHON = VENV / "bin" / "python"
TOOL = ROOT / "tools" / "vllm_check.py"
PIN = next(line.strip() for line in (ROOT / "tools" / "vllm-version.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#"))

# (name, arch, scheme, extra ignore)
CASES = [
    ("llama-FP8_BLOCK", "llama", "FP8_BLOCK", ()),
    ("llama-NVFP4A16", "llama", "NVFP4A16", ()),
    ("llama-MXFP4A16", "llama", "MXFP4A16", ()),
    ("qwen3_moe-W4A16", "qwen3_moe", "W4A16", ()),
    # Only q of the fused q/k/v asked to be ignored: ptq ignores its siblings too, so vLLM
    # gets one scheme for qkv_proj.
    ("llama-FP8_BLOCK-q-ignored", "llama", "FP8_BLOCK", ("re:.*q_proj$",)),
]
# A config that ignores only q (what ptq wrote before it ignored fused siblings together):
# made by editing the FP8_BLOCK output's config.json; vLLM must refuse it.
BROKEN = "llama-FP8_BLOCK-only-q-in-config"
# Known not to load in vLLM 0.33 (see test_w4afp8_is_not_what_vllm_loads).
KNOWN_BAD = [("llama-W4AFP8", "llama", "W4AFP8", ())]


def _installed_pin() -> str | None:
    marker = VENV / ".installed"
    return marker.read_text().strip() if marker.is_file() else None


def require_side_venv() -> None:
    """Skip (with how to fix it) unless the side venv holds the pinned vLLM."""
    if not VENV_PYTHON.is_file():
        pytest.skip(f"no side venv with vLLM ({VENV}); make it with "
                    "scripts/vllm-check.sh (about 4 min and 9.5 GB)")
    if _installed_pin() != PIN:
        pytest.skip(f"{VENV} holds {_installed_pin()}, tools/vllm-version.txt pins {PIN}; "
                    "rerun scripts/vllm-check.sh")


@pytest.fixture(scope="module")
def vllm_report(tmp_path_factory) -> tuple[int, dict, str]:
    require_side_venv()
    work = tmp_path_factory.mktemp("vllm")
    outs = []
    for name, arch, scheme, ignore in CASES + KNOWN_BAD:
        src = work / f"src-{arch}"
        if not src.exists():
            make_checkpoint(src, arch)
        out = work / name
        model_free_ptq(src, out, scheme=scheme, ignore=[*DEFAULT_IGNORE, *ignore])
        outs.append(str(out))
    broken = work / BROKEN
    shutil.copytree(work / "llama-FP8_BLOCK", broken)
    config = json.loads((broken / "config.json").read_text())
    config["quantization_config"]["ignore"].append("re:.*q_proj$")
    (broken / "config.json").write_text(json.dumps(config, indent=2))
    outs.append(str(broken))
    report_path = work / "report.json"
    proc = subprocess.run([str(VENV_PYTHON), str(TOOL), *outs, "--json", str(report_path)],
                          capture_output=True, text=True, timeout=1200)
    if not report_path.exists():
        pytest.fail(f"vllm_check.py exited {proc.returncode} without a report:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    report = json.loads(report_path.read_text())
    return proc.returncode, {Path(c["folder"]).name: c["by_capability"] for c in report["checkpoints"]}, proc.stdout


def _failures(by_cap: dict) -> list[str]:
    return [f"sm_{cap}: {f.get('type')}: {f.get('message')}" for cap, rep in by_cap.items()
            for f in rep["failures"]]


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_vllm_loads_our_output(vllm_report, name):
    _, reports, stdout = vllm_report
    by_cap = reports[name]
    assert set(by_cap) == {"90", "100"}
    assert _failures(by_cap) == [], stdout
    for rep in by_cap.values():
        load = rep["load"]
        assert load["dropped"] == [] and load["unfilled"] == []
        assert not any(c["narrowing"] for c in load["casts"])
        # Every layer stored quantized got a vLLM scheme on both capabilities.
        assert any(e["scheme"] != "unquantized" for e in rep["layers"].values())


def test_vllm_schemes_per_capability(vllm_report):
    _, reports, _ = vllm_report
    qkv = "model.layers.0.self_attn.qkv_proj"
    assert reports["llama-FP8_BLOCK"]["90"]["layers"][qkv]["scheme"] == "CompressedTensorsW8A8Fp8"
    assert reports["llama-NVFP4A16"]["100"]["layers"][qkv]["scheme"].startswith("CompressedTensorsW4A4Fp4")
    # MXFP4A16: vLLM 0.33 ignores the missing input_activations and picks its W4A4 MXFP4
    # scheme with MXFP4-dynamic activations; on Blackwell the FlashInfer kernel runs them
    # (W4A4), on Hopper another kernel (Humming) decides after loading (docs/loaders.md).
    mx = reports["llama-MXFP4A16"]
    assert mx["100"]["layers"][qkv]["built"] == "CompressedTensorsW4A4Mxfp4 [FlashInferMxFp4LinearKernel]"
    assert mx["90"]["layers"][qkv]["built"].startswith("CompressedTensorsW4A4Mxfp4 [")
    assert "FlashInfer" not in mx["90"]["layers"][qkv]["built"]
    assert mx["100"]["mxfp4_activations"].startswith("float4e2m1")
    # Humming's fallback from FP4 activations, evaluated for 9.0: FP8 per token (W4A8).
    assert mx["90"]["mxfp4_activations"] == "float8e4m3 (dynamic_token)"
    experts = reports["qwen3_moe-W4A16"]["90"]["layers"]["model.layers.0.mlp.experts"]["built"]
    assert experts.startswith("CompressedTensorsWNA16MoEMethod")


def test_vllm_refuses_one_ignored_member_of_qkv(vllm_report):
    returncode, reports, stdout = vllm_report
    assert returncode == 1
    by_cap = reports[BROKEN]
    for cap in ("90", "100"):
        messages = [f["message"] for f in by_cap[cap]["failures"]]
        assert ("Found different quantization schemes for the shards of "
                "model.layers.0.self_attn.qkv_proj. vLLM requires all to use the same scheme.") in messages, stdout
        wheres = [f["where"] for f in by_cap[cap]["failures"] if f.get("where")]
        assert any(w.startswith("vllm/model_executor/layers/quantization/compressed_tensors/utils.py:")
                   for w in wheres)
        assert any(f["stage"] == "build" for f in by_cap[cap]["failures"])  # the model refuses too


def test_tool_does_not_import_ptq_core():
    """The tool runs in the side venv, where ptq_core is not installed."""
    tree = ast.parse(TOOL.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "ptq_core" not in imported


def test_w4afp8_is_not_what_vllm_loads(vllm_report):
    """W4AFP8 is written as compressed-tensors 0.20 infers it, ``int-quantized`` (an int8
    ``weight`` holding int4 values). vLLM 0.33 reads W4A8-FP8 only as ``pack-quantized``
    (``CompressedTensorsW4A8Fp8`` registers ``weight_packed``; its comment in
    ``_quantization_scheme_map_from_config``: "w4a8fp8 is in packed-quantized format") and
    only on exactly 9.0. This pins the incompatibility: when ptq writes a W4AFP8 that vLLM
    loads, this test fails and the case moves to CASES."""
    _, reports, _ = vllm_report
    by_cap = reports["llama-W4AFP8"]
    hopper = [f for f in by_cap["90"]["failures"] if f["stage"] == "load"]
    assert hopper and "There is no module or parameter named 'layers.0." in hopper[0]["message"]
    assert "weight_packed" in hopper[0]["message"]
    blackwell = [f["message"] for f in by_cap["100"]["failures"]]
    assert any(m.startswith("No compressed-tensors compatible scheme was found") for m in blackwell)
