"""The architecture zoo as vLLM reads it (tools/vllm_check.py, in the side venv).

Every architecture of ``tests/zoo.py`` x every scheme of ``test_zoo.SCHEMES`` is quantized with
the CLI's defaults (``make_job(src, scheme)``, as ``test_zoo`` does), and the tool runs ONCE
over the 125 outputs and the 25 bf16 sources (the control): vLLM's compressed-tensors config
code, the model built on the meta device at capability 9.0 and 10.0, and its ``load_weights``
over our tensors.

Per architecture x scheme, at both capabilities:

* the output loads with no failure (every tensor into a parameter, no parameter left empty,
  no narrowing cast, every layer the scheme vLLM should pick), or
* the case is in ``VLLM_EXPECTED``: the class of the limit ((b) vLLM 0.33, (c) the GPU-less
  check, (d) the zoo's tiny dims), the vLLM message every failure must match, and the evidence
  in vLLM's source. The entry is strict: a case that loads fails the test. Where the entry says
  ``source_too``, the bf16 source fails the same way (so it is not our output).
* FP8_BLOCK: vLLM refuses for the block size exactly when the plan's tensor-parallel report
  (``Plan.tensor_parallel``, ptq_core/tensor_parallel.py) says the output loads at no TP size,
  and the bf16 source itself has no such failure.

A case where our output is wrong has no entry: it stays a plain failure.
Without the side venv (``scripts/vllm-check.sh``) the module skips, as ``test_vllm_check``.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_vllm_check import TOOL, VENV_PYTHON, require_side_venv
from test_zoo import SCHEMES
from zoo import ZOO, build

from ptq_core import make_job, quantize_job

pytestmark = pytest.mark.slow

CAPABILITIES = ("90", "100")
# vLLM's FP8 block-shape refusals (fp8_utils.py:1313-1343, validate_fp8_block_shape).
BLOCK_REFUSAL = r"is not divisible by weight quantization block_[nk] = \d+"
_VLLM = "vllm 0.33 "


@dataclass(frozen=True)
class VllmExpected:
    """How vLLM 0.33 refuses a zoo case that is not our output's fault.

    cls: "b" (a vLLM 0.33 limit no checkpoint in this layout avoids), "c" (a limit of the
        GPU-less check), "d" (the zoo's tiny dims).
    message: regex every failure's message must match (``re.search``), at both capabilities.
    evidence: where vLLM (or the tool) decides it, and what it requires.
    source_too: the bf16 source fails the same way (the control).
    """

    cls: str
    message: str
    evidence: str
    source_too: bool = True


FP8_BLOCK_KV = VllmExpected(
    "d",
    r"^Weight output_partition_size = 64 is not divisible by weight quantization block_n = 128\.$",
    _VLLM + "quantization/utils/fp8_utils.py:1329-1343 (validate_fp8_block_shape, raise at 1340): "
    "for a merged layer (qkv_proj: output_partition_sizes [q, k, v]) every partition but the last "
    "must be a multiple of block_n = 128, even at TP 1. The zoo's k/v projections have "
    "num_key_value_heads (2) x head_dim (32) = 64 rows; real models (e.g. 8 x 128) have >= 128. "
    "Phi-3's stored qkv_proj and Falcon's query_key_value are split the same way (QKVParallelLinear)",
    source_too=False,
)
MLA_DIMS = VllmExpected(
    "d",
    r"^Selected backend AttentionBackendEnum\.FLASHMLA is not valid for this configuration\. "
    r"Reason: \['head_size not supported'",
    _VLLM + "MLA attention needs a prefill backend for the MLA dims (qk_nope, qk_rope, v): "
    "platforms/interface.py:435-511 (get_mla_prefill_backend_cls; 9.0 tries only FLASH_ATTN) and "
    "v1/attention/backends/mla/prefill/flash_attn.py:313-337 accept (128, 64, 128), (192, 64, 256), "
    "(64, 64, 128), (256, 0, 256); flashinfer.py:41 / trtllm_ragged.py:39 (128, 64, 128) only. "
    "The zoo's DeepSeek-V3 has (32, 32, 32), so auto and TRITON_MLA (any decode head size, "
    "triton_mla.py:110) find no prefill backend; FLASH_ATTN_MLA / FLASHMLA / FLASHINFER_MLA need "
    "the decode head size kv_lora_rank + qk_rope = 576 (flashattn_mla.py:108), the zoo's is 160; "
    "the last fallback's refusal is reported (platforms/cuda.py:443). At 10.0 auto picks "
    "CUTLASS_MLA, whose __init__ allocates a CUDA workspace (cutlass_mla.py:71; a (c) limit, "
    "noted), the others refuse as at 9.0. DeepSeek with real MLA dims loads (test_vllm_check)",
)
FALCON_FFN = VllmExpected(
    "d",
    r"^start \(0\) \+ length \(\d+\) exceeds dimension size \(\d+\)\.$",
    _VLLM + "models/falcon.py:235-254: FalconMLP builds dense_h_to_4h / dense_4h_to_h with "
    "4 * hidden_size and ignores config.ffn_hidden_size; the zoo's Falcon has ffn_hidden_size 256 "
    "with hidden_size 128 (4 x 128 = 512), so dense_4h_to_h's 256 input columns (packed: 128 / 32) "
    "cannot fill the 512-column parameter: narrow() in parameter.py:218 (load_row_parallel_weight). "
    "Real Falcon checkpoints (7B/40B/180B) have ffn = 4 x hidden",
)
VISION_TOWER = VllmExpected(
    "b",
    r"^There is no module or parameter named 'vision_tower\.embeddings' in "
    r"(Llava|Gemma3)ForConditionalGeneration",
    _VLLM + "models/llava.py:505-513 and gemma3_mm.py:515-523: hf_to_vllm_mapper maps only "
    "model.vision_tower. -> vision_tower.; vLLM's CLIPVisionModel / SiglipVisionModel keep the "
    "transformers-4 level vision_model. (vision_tower.vision_model.embeddings...). transformers "
    "5.25's CLIPVisionModel / SiglipVisionModel have no vision_model level, so its save_pretrained "
    "(the zoo's source) writes vision_tower.embeddings / vision_tower.encoder: models/utils.py:448 "
    "raises on the first such tensor. ptq keeps the source's names (as it must)",
)

VLLM_EXPECTED: dict[str, VllmExpected] = {
    **{f"{arch}/FP8_BLOCK": FP8_BLOCK_KV for arch in (
        "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "qwen3_moe_fused", "mixtral", "mixtral_fused",
        "gemma2", "gemma3_text", "phi3", "gpt_oss", "glm4", "glm4_moe", "granite", "granitemoe", "olmo2",
        "falcon", "qwen2_5_vl", "gemma3_vl", "llava", "llama4")},
    **{f"{arch}/{scheme}": MLA_DIMS for arch in ("deepseek_v3", "deepseek_v3_fused") for scheme in SCHEMES},
    **{f"falcon/{scheme}": FALCON_FFN for scheme in SCHEMES if scheme != "FP8_BLOCK"},
    **{f"{arch}/{scheme}": VISION_TOWER for arch in ("llava", "gemma3_vl") for scheme in SCHEMES
       if scheme != "FP8_BLOCK"},
}

# The bf16 sources that vLLM 0.33 does not read (strict, like VLLM_EXPECTED).
SOURCE_EXPECTED: dict[str, VllmExpected] = {
    "deepseek_v3": MLA_DIMS,
    "deepseek_v3_fused": MLA_DIMS,
    "falcon": FALCON_FFN,
    "llava": VISION_TOWER,
    "gemma3_vl": VISION_TOWER,
    # Our output of this source (per-expert experts, as ptq writes them) loads.
    "mixtral_fused": VllmExpected(
        "b",
        r"^There is no module or parameter named 'layers\.0\.mlp' in MixtralModel",
        _VLLM + "models/mixtral.py:131 (FusedMoE ckpt_names w1/w2/w3) and :285-299 (hf_to_vllm_mapper: "
        "per-expert gate/up/down_proj -> w1/w3/w2): only per-expert block_sparse_moe.experts.N tensors "
        "are read; transformers 5.25's runtime layout (save_original_format=False: fused 3-D "
        "mlp.experts.gate_up_proj / down_proj) has no mapping (models/utils.py:448)",
    ),
}


# --------------------------------------------------------------------------- the one run


@pytest.fixture(scope="module")
def zoo_vllm(tmp_path_factory):
    """(reports, tensor_parallel, stdout): reports[(arch, scheme)] and reports[(arch, None)] (the
    source) -> {capability: the tool's report}; tensor_parallel[(arch, scheme)] -> the plan's
    TensorParallelReport."""
    require_side_venv()
    root = tmp_path_factory.mktemp("zoo-vllm")
    folders: dict[tuple[str, str | None], Path] = {}
    tensor_parallel = {}
    for arch in ZOO:
        src = build(ZOO[arch], root / "src" / arch)
        folders[(arch, None)] = src
        for scheme in SCHEMES:
            out = root / "out" / f"{arch}-{scheme}"
            result = quantize_job(make_job(str(src), scheme), out)  # the CLI's defaults
            tensor_parallel[(arch, scheme)] = result.plan.tensor_parallel
            folders[(arch, scheme)] = out
    report_path = root / "report.json"
    proc = subprocess.run([str(VENV_PYTHON), str(TOOL), *map(str, folders.values()), "--json", str(report_path)],
                          capture_output=True, text=True, timeout=1200)
    if not report_path.exists():
        pytest.fail(f"vllm_check.py exited {proc.returncode} without a report:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    by_folder = {c["folder"]: c["by_capability"] for c in json.loads(report_path.read_text())["checkpoints"]}
    reports = {key: by_folder[str(folder)] for key, folder in folders.items()}
    return reports, tensor_parallel, proc.stdout


def _failures(by_cap: dict) -> dict[str, list[str]]:
    return {cap: [f"[{f['stage']}] {f.get('type')}: {f.get('message')}" for f in by_cap[cap]["failures"]]
            for cap in CAPABILITIES}


def _messages(by_cap: dict, cap: str) -> list[str]:
    return [f.get("message") or "" for f in by_cap[cap]["failures"]]


def check_expected(name: str, by_cap: dict, expected: VllmExpected | None) -> None:
    """Loads cleanly at both capabilities, or fails exactly as ``expected`` says (strict)."""
    assert set(by_cap) == set(CAPABILITIES)
    if expected is None:
        problems = {cap: f for cap, f in _failures(by_cap).items() if f}
        assert not problems, f"{name}: vLLM 0.33 does not load it:\n" + "\n".join(
            f"sm_{cap}: {line}" for cap, lines in problems.items() for line in lines[:10])
        for cap in CAPABILITIES:
            load = by_cap[cap]["load"]
            assert load["dropped"] == [] and load["unfilled"] == [], name
            assert not any(c["narrowing"] for c in load["casts"]), name
        return
    for cap in CAPABILITIES:
        messages = _messages(by_cap, cap)
        assert messages, (f"{name}: expected class ({expected.cls}) no longer happens: vLLM loads it at "
                          f"sm_{cap}; move it out of the expected table ({expected.evidence[:200]})")
        other = [m for m in messages if not re.search(expected.message, m)]
        assert not other, (f"{name} at sm_{cap}: failures other than the expected class ({expected.cls}) "
                           f"{expected.message!r}:\n" + "\n".join(other[:10]))


# --------------------------------------------------------------------------- tests


def test_expected_table_is_well_formed():
    cases = {f"{arch}/{s}" for arch in ZOO for s in SCHEMES}
    assert set(VLLM_EXPECTED) <= cases and set(SOURCE_EXPECTED) <= set(ZOO)
    for entry in (*VLLM_EXPECTED.values(), *SOURCE_EXPECTED.values()):
        assert entry.cls in ("b", "c", "d") and entry.evidence.startswith(_VLLM)
        re.compile(entry.message)


@pytest.mark.parametrize("arch", list(ZOO))
def test_vllm_reads_zoo_source(zoo_vllm, arch):
    """The control: the bf16 source loads in vLLM, or fails as SOURCE_EXPECTED says."""
    reports, _, _ = zoo_vllm
    check_expected(f"{arch} (bf16 source)", reports[(arch, None)], SOURCE_EXPECTED.get(arch))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("arch", list(ZOO))
def test_vllm_reads_zoo_output(zoo_vllm, arch, scheme):
    reports, tensor_parallel, _ = zoo_vllm
    case = f"{arch}/{scheme}"
    expected = VLLM_EXPECTED.get(case)
    check_expected(case, reports[(arch, scheme)], expected)
    if expected is not None and expected.source_too:
        # The control: the bf16 source fails the same way, so it is not our output.
        source = reports[(arch, None)]
        for cap in CAPABILITIES:
            messages = _messages(source, cap)
            assert messages and all(re.search(expected.message, m) for m in messages), (
                f"{case}: the bf16 source does not fail the same way at sm_{cap} ({messages[:3]}): "
                "then it is our output's")
    if scheme == "FP8_BLOCK":
        by_cap = reports[(arch, scheme)]
        parallel = tensor_parallel[(arch, scheme)]
        for cap in CAPABILITIES:
            refused = any(re.search(BLOCK_REFUSAL, m) for m in _messages(by_cap, cap))
            assert refused == (parallel.loads == ()), (
                f"{case} at sm_{cap}: vLLM {'refuses' if refused else 'does not refuse'} the FP8 blocks "
                f"at TP 1, the plan says {parallel.summary()!r}")
            if refused:
                source = reports[(arch, None)]
                assert not any(re.search(BLOCK_REFUSAL, m) for m in _messages(source, cap))
                check_expected(f"{arch} (bf16 source)", source, SOURCE_EXPECTED.get(arch))
