"""``ptq_core.rotation``: byte-identical to llm-compressor 0.15's ``SpinQuantConverter``.

The goldens (``tests/golden/rotation.json``, made by ``tests/golden/make_rotation_golden.py``
from the peer's published source) hold the sha256 of every tensor the peer's converter makes
from seeded zoo checkpoints: Llama, Qwen3, Qwen3-MoE (per-expert and fused 3-D experts),
a tied Llama, DeepSeek-V3 (MLA: R1 only), two VLMs whose towers are left alone, a 192-wide
Qwen2 (random Hadamard) and a block-diagonal seeded R1. Here the
same checkpoints are rebuilt, rotated by ``build_spinquant`` (its defaults: the layout,
rotations, tower ignore list and tied head are chosen as the peer chooses them) and compared
tensor by tensor. A rotation changed in one column, or fused in float32, must fail. The one
deliberate difference: a VLM's projector output (``RotationLayout.projector_out``), which the peer
leaves un-rotated although it feeds the rotated stream (a rotated LLaVA then reads images wrongly).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import import_tool
from ptq_core.errors import ConverterError, InvalidOptionError
from ptq_core.rotation import RotationLayout, SpinQuant, build_spinquant, hadamard, rotation_ignore

import_tool("transformers", "transformers is not installed (pip install -e '.[test]')")
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
sys.path.insert(0, str(GOLDEN_DIR))
import zoo  # noqa: E402
from rotation_cases import GOLDEN_FILE, build_source, cases, rotate_checkpoint, source_digest  # noqa: E402

GOLDEN = json.loads((GOLDEN_DIR / GOLDEN_FILE).read_text())["cases"]
CASES = {c.id: c for c in cases()}


def _names(path: Path) -> list[str]:
    names = []
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            names += list(f.keys())
    return names


def _reader(path: Path):
    def read(wanted: list[str]) -> dict[str, torch.Tensor]:
        found = {}
        for shard in sorted(path.glob("*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                found.update({n: f.get_tensor(n) for n in f.keys() if n in wanted})
        return found
    return read


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    built: dict[str, Path] = {}

    def get(case_id: str) -> Path:
        if case_id not in built:
            built[case_id] = build_source(CASES[case_id], tmp_path_factory.mktemp("rotation"))
        return built[case_id]
    return get


def _ours(path: Path, case_id: str) -> SpinQuant:
    config = json.loads((path / "config.json").read_text())
    options = CASES[case_id].options if case_id in CASES else {}
    return build_spinquant(config, _names(path), _reader(path), **options)


def _projector_outputs(names) -> list[str]:
    """The multimodal projector's last linear: rotated by ptq-hub, left alone by the peer (see RotationLayout)."""
    patterns = [re.compile(p) for p in RotationLayout().projector_out]
    return sorted(n for n in names if any(p.search(n.rpartition(".")[0]) for p in patterns))


def _mismatches(got: dict, want: dict) -> list[str]:
    return sorted(n for n in want.keys() | got.keys() if got.get(n) != want.get(n))


def test_every_golden_case_is_built():
    assert set(GOLDEN) == set(CASES)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "default"])
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_rotation_matches_the_peer_byte_for_byte(source, case_id, fast):
    """``fast``: rotation_fast at every width (these models are narrower than its default minimum),
    each tensor from its certified bytes or, where one element is not certified, from the dgemm."""
    path = source(case_id)
    golden = GOLDEN[case_id]
    assert source_digest(path) == golden["source_digest"], "the zoo checkpoint differs from the one the golden used"
    ours = _ours(path, case_id)
    if fast:
        ours.fast.min_width = 0
    assert list(ours.rotations) == golden["rotations"]
    bad = _mismatches(rotate_checkpoint(path, ours.process), golden["tensors"])
    assert (ours.fast.stats["fast"] > ours.fast.stats["fallback"]) if fast else not ours.fast.stats["fast"]
    projector = _projector_outputs(golden["tensors"])
    assert set(bad) <= set(projector)  # every other tensor is the peer's, byte for byte
    assert [n for n in projector if n.endswith(".weight")] == [n for n in bad if n.endswith(".weight")]
    config = json.loads((path / "config.json").read_text())
    updated = ours.update_model_config(json.loads(json.dumps(config)))
    assert [updated.get("tie_word_embeddings"),
            (updated.get("text_config") or {}).get("tie_word_embeddings")] == golden["tie_word_embeddings"]


@pytest.mark.parametrize("case_id", ["qwen2_5_vl", "llava"])
def test_towers_are_ignored_as_the_golden_was_told(source, case_id):
    path = source(case_id)
    config = json.loads((path / "config.json").read_text())
    assert sorted(rotation_ignore(config, _names(path))) == sorted(CASES[case_id].ignore)


def test_a_perturbed_rotation_fails_the_golden(source):
    path = source("llama")
    golden = GOLDEN["llama"]["tensors"]
    ours = _ours(path, "llama")
    ours.r1 = ours.r1[:, torch.tensor([1, 0, *range(2, ours.r1.shape[1])])]  # still orthogonal: two columns swapped
    bad = _mismatches(rotate_checkpoint(path, ours.process), golden)
    assert any("q_proj" in n for n in bad) and any("embed_tokens" in n for n in bad)


def test_fusing_in_float32_fails_the_golden(source):
    path = source("llama")
    ours = _ours(path, "llama")
    ours.precision = torch.float32
    ours.r1, ours.r2 = ours.r1.float(), ours.r2.float()
    assert _mismatches(rotate_checkpoint(path, ours.process), GOLDEN["llama"]["tensors"])


def _cosine_after_rotation(path: Path, rotation: SpinQuant, out: Path) -> float:
    """Cosine of the logits (float32, a fixed batch) of ``path`` and of ``path`` rotated by ``rotation``."""
    transformers = import_tool("transformers", "transformers is not installed")
    from safetensors.torch import save_file

    out.mkdir()
    tensors = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            tensors.update(rotation.process({n: f.get_tensor(n) for n in f.keys()}))
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(out / "model.safetensors"))
    config = rotation.update_model_config(json.loads((path / "config.json").read_text()))
    (out / "config.json").write_text(json.dumps(config))
    ids = torch.arange(7, 71).reshape(2, 32)
    logits = []
    for folder in (path, out):
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(ids).logits.flatten())
    return torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=0).item()


def test_rotated_llama_computes_the_same_logits(source, tmp_path):
    path = source("llama_tied")
    cosine = _cosine_after_rotation(path, _ours(path, "llama_tied"), tmp_path / "rotated")
    assert cosine > 0.999, cosine  # bf16 rounding of the rotated weights only


_TEXT_ZOO = sorted(name for name, arch in zoo.ZOO.items() if not arch.vlm)


@pytest.mark.parametrize("arch", _TEXT_ZOO)
def test_every_text_architecture_is_rotated_exactly_or_refused(arch, tmp_path):
    """Field proof: on each architecture of the zoo (transformers' own classes and initialisation),
    ``--rotate`` either gives a model that computes the same logits or refuses with a reason.
    A model that loads and computes something else is the one outcome never allowed."""
    path = zoo.build(zoo.ZOO[arch], tmp_path / arch)
    config = json.loads((path / "config.json").read_text())
    try:
        rotation = build_spinquant(config, _names(path), _reader(path))
        cosine = _cosine_after_rotation(path, rotation, tmp_path / "rotated")
    except ConverterError as refused:
        assert arch in _REFUSED, f"{arch} is refused: {refused}"
        assert re.search(_REFUSED[arch], str(refused)), str(refused)
        return
    assert arch not in _REFUSED, f"{arch} was expected to be refused ({_REFUSED[arch]}) but rotated"
    assert cosine > 0.9999, cosine


# What the rotation cannot express for each refused architecture, as its error says it.
_REFUSED = {
    "deepseek_v3": "kv_a_layernorm",          # zoo widths: its MLA latent (128) is as wide as the stream
    "deepseek_v3_fused": "kv_a_layernorm",    # (the golden's DeepSeek-V3 has distinct widths and rotates)
    "gemma2": r"\(1 \+ w\)",
    "gemma3_text": r"\(1 \+ w\)",
    "phi3": "qkv_proj",                       # fused q/k/v: R2 cannot reach v's rows
    "gpt_oss": "router",
    "glm4": "post_mlp_layernorm",             # a norm on the branch output does not commute with R1
    "granitemoe": "output_linear",
    "olmo2": "input_layernorm",               # post-norm decoder: no norm before q/k/v to fold
    "falcon": "No RMSNorm",                   # LayerNorm with bias
    "gpt_neox": "embed_in",
}


def test_a_gemma_norm_is_refused_not_folded(tmp_path):
    """Gemma multiplies by (1 + w): folding w would give a wrong model with no error (Gemma 1 has no
    sandwich norm that would be refused for another reason, so the check itself is what stops it)."""
    t = import_tool("transformers", "transformers is not installed")
    config = t.GemmaConfig(**zoo._TEXT)
    torch.manual_seed(0)
    model = t.GemmaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "gemma")
    path = tmp_path / "gemma"
    with pytest.raises(ConverterError, match=r"gemma scales its RMSNorms by \(1 \+ w\)"):
        build_spinquant(json.loads((path / "config.json").read_text()), _names(path), _reader(path))


def test_hadamard_is_orthogonal():
    r = hadamard(64)
    assert torch.allclose(r @ r.T, torch.eye(64, dtype=torch.float64))


def test_r2_alone_builds_no_sylvester_r1(monkeypatch):
    """Sylvester's R1 is deterministic and unused with R2 alone: not built (hidden x hidden float64);
    the random one is still drawn first, to keep the peer's generator order for R2."""
    import ptq_core.rotation as rotation_module

    sizes = []
    real = rotation_module.hadamard
    monkeypatch.setattr(rotation_module, "hadamard", lambda size, *a, **k: sizes.append(size) or real(size, *a, **k))
    r2_only = SpinQuant(128, 32, {}, rotations=("R2",))
    assert sizes == [32] and r2_only.r1 is None and r2_only.r2 is not None
    sizes.clear()
    SpinQuant(128, 32, {}, rotations=("R2",), transform_type="random-hadamard")
    assert sizes == [128, 32]


def test_refusals():
    with pytest.raises(ConverterError, match=r"power-of-two R1 block \(hidden_size\); this model's is 96\. Use "
                                             "transform_type='random-hadamard'"):
        SpinQuant(96, 32, {})
    with pytest.raises(ConverterError, match="No Hadamard matrix of size 14 is known"):
        SpinQuant(14, 32, {}, transform_type="random-hadamard")  # 14 = 7 x 2: no Hadamard order 7 or 14
    with pytest.raises(InvalidOptionError, match="transform_block_size 48 must divide hidden_size 128"):
        SpinQuant(128, 32, {}, transform_block_size=48)
    with pytest.raises(InvalidOptionError, match="transform_type must be one of"):
        SpinQuant(128, 32, {}, transform_type="walsh")
    with pytest.raises(InvalidOptionError, match="R1 and/or R2"):
        SpinQuant(128, 32, {}, rotations=("R3",))
    rotation = SpinQuant(128, 32, {"model.layers.0.input_layernorm": torch.ones(128)})
    with pytest.raises(ConverterError, match="quantized"):
        rotation.process({"model.layers.0.self_attn.q_proj.weight": torch.zeros(128, 128, dtype=torch.float8_e4m3fn)})
    with pytest.raises(ConverterError, match="no place in the rotation layout"):
        rotation.process({"model.layers.0.feed_forward.w1.weight": torch.zeros(256, 128)})
    with pytest.raises(ConverterError, match="No RMSNorm"):
        build_spinquant({"hidden_size": 128, "num_attention_heads": 4}, ["a.weight"], lambda names: {})


# ---------------------------------------------------------------------------- the rotation in a job
def _write_dense(folder: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _rotated_copy(path: Path, folder: Path) -> Path:
    """The source rotated tensor by tensor (the goldens' ``process``), as a plain dense checkpoint."""
    ours = _ours(path, "")
    tensors = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            tensors.update(ours.process({n: f.get_tensor(n) for n in f.keys()}))
    return _write_dense(folder, tensors, ours.update_model_config(json.loads((path / "config.json").read_text())))


def _outputs(folder: Path) -> dict[str, list]:
    from rotation_cases import shard_tensors, tensor_record

    return {n: tensor_record(t) for shard in shard_tensors(folder) for n, t in shard.items()}


@pytest.mark.parametrize("scheme", ["W4A16", "NVFP4A16"])
def test_a_rotated_job_quantizes_the_rotated_weights(source, tmp_path, scheme):
    from ptq_core.job import make_job
    from ptq_core.pipeline import quantize_job

    path = source("llama_tied")
    rotated = quantize_job(make_job(str(path), scheme, rotate=True, workers=2), tmp_path / "rotated")
    plain = quantize_job(make_job(str(_rotated_copy(path, tmp_path / "dense")), scheme), tmp_path / "plain")
    assert _outputs(tmp_path / "rotated") == _outputs(tmp_path / "plain")
    config = json.loads((tmp_path / "rotated" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and "quantization_config" in config
    assert "SpinQuant R1+R2" in rotated.plan.to_markdown()
    assert len(rotated.plan.quantized) == len(plain.plan.quantized) > 0


def test_an_fp8_block_source_is_dequantized_then_rotated(tmp_path):
    from compressed_tensors.entrypoints.convert.converters import FP8BlockDequantizer
    from factory import load_tensors, make_fp8_block_checkpoint

    from ptq_core.job import make_job
    from ptq_core.pipeline import quantize_job

    src = make_fp8_block_checkpoint(tmp_path / "fp8", "llama")
    config = json.loads((src / "config.json").read_text())
    tensors = load_tensors(src)
    modules = sorted(n.removesuffix(".weight_scale_inv") for n in tensors if n.endswith(".weight_scale_inv"))
    dense = FP8BlockDequantizer(targets=modules).process(tensors)
    config.pop("quantization_config")
    dense_dir = _write_dense(tmp_path / "dense", dense, config)
    quantize_job(make_job(str(src), "MXFP4A16", rotate=True), tmp_path / "from-fp8")
    quantize_job(make_job(str(dense_dir), "MXFP4A16", rotate=True), tmp_path / "from-dense")
    assert _outputs(tmp_path / "from-fp8") == _outputs(tmp_path / "from-dense")


def test_the_card_names_the_rotations(source, tmp_path):
    from ptq_core.card import render_model_card
    from ptq_core.job import make_job
    from ptq_core.pipeline import quantize_job

    result = quantize_job(make_job(str(source("deepseek_v3")), "FP8_DYNAMIC", rotate=True), tmp_path / "out")
    card = render_model_card("org/DeepSeek-tiny", "me/DeepSeek-tiny-FP8", "FP8_DYNAMIC", size_before=1, size_after=1,
                             plan=result.plan)
    assert "| rotation | SpinQuant R1 (Hadamard" in card


def test_a_width_that_is_no_power_of_two_rotates_with_a_random_hadamard(source, tmp_path):
    """hidden 192 (real models: 3584, 5120...): the Sylvester matrix does not exist, so ``--rotate``
    takes the random Hadamard by itself; the model computes the same logits and the card says so."""
    from ptq_core.card import render_model_card
    from ptq_core.job import make_job
    from ptq_core.pipeline import quantize_job

    path = source("qwen2_wide")
    rotation = _ours(path, "qwen2_wide")
    assert rotation.transform_type == "random-hadamard"
    assert _cosine_after_rotation(path, rotation, tmp_path / "rotated") > 0.9999
    # NVFP4A16: its 16-wide groups divide 192 (W4A16's 128 do not, and the planner refuses that)
    result = quantize_job(make_job(str(path), "NVFP4A16", rotate=True), tmp_path / "out")
    card = render_model_card("org/Wide", "me/Wide-NVFP4A16", "NVFP4A16", size_before=1, size_after=1,
                             plan=result.plan)
    assert "| rotation | SpinQuant R1+R2 (random Hadamard rotations" in card


def test_update_model_config_is_honoured_for_any_converter(source, tmp_path):
    from ptq_core.pipeline import model_free_ptq

    class Marker:  # a pass-through converter with llm-compressor 0.15's model-config hook
        def process(self, tensors):
            return tensors

        def get_dependencies(self, weight_name):
            return set()

        def update_config(self, config):
            return config

        def update_model_config(self, config):
            return {**config, "marked_by": "Marker"}

    model_free_ptq(str(source("llama")), tmp_path / "out", "W4A16", converter=Marker())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["marked_by"] == "Marker"


def test_rotate_is_refused_with_append_or_as_text(source):
    from ptq_core.job import make_job

    with pytest.raises(InvalidOptionError, match="append"):
        make_job("org/Model", "W4A16", rotate=True, append=True)
    with pytest.raises(InvalidOptionError, match="True or False"):
        make_job("org/Model", "W4A16", rotate="false")


def test_the_ram_estimate_counts_the_float64_fusing(source):
    from ptq_core.job import make_job
    from ptq_core.job_plan import plan_job
    from ptq_core.parts import _unit_bytes

    path = source("llama")
    plain = _unit_bytes(plan_job(make_job(str(path), "W4A16"), path).plan)
    rotated = _unit_bytes(plan_job(make_job(str(path), "W4A16", rotate=True), path).plan)
    name = "model.layers.0.mlp.down_proj.weight"
    assert rotated[name] == plain[name] + 2 * 8 * 128 * 256  # a float64 copy and product of a 128x256 weight


def test_from_pretrained_as_converter_equals_rotate(source, tmp_path):
    from ptq_core import SpinQuant, model_free_ptq

    path = source("qwen3_moe")
    model_free_ptq(str(path), tmp_path / "converter", "W4A16", converter=SpinQuant.from_pretrained(path))
    from ptq_core.job import make_job
    from ptq_core.pipeline import quantize_job

    quantize_job(make_job(str(path), "W4A16", default_ignore=False, rotate=True), tmp_path / "rotate")
    assert _outputs(tmp_path / "converter") == _outputs(tmp_path / "rotate")


def test_a_streamed_hub_job_rotates_like_a_local_one(hub, source, tmp_path):
    from huggingface_hub import snapshot_download

    from ptq_core.hubjob import quantize_to_hub
    from ptq_core.job import make_job
    from ptq_core.pipeline import quantize_job

    path = source("llama_tied")
    hub.seed_repo("bob/tiny-tied", {p.name: p for p in path.iterdir() if p.is_file()})
    result = quantize_to_hub("bob/tiny-tied", "W4A16", rotate=True, token="hf_test_alice", work_dir=tmp_path / "w")
    got = Path(snapshot_download(result.repo_id, endpoint=hub.endpoint, token="hf_test_alice",
                                 cache_dir=tmp_path / "dl"))
    quantize_job(make_job(str(path), "W4A16", rotate=True), tmp_path / "local")
    assert _outputs(got) == _outputs(tmp_path / "local")
    assert json.loads((got / "config.json").read_text())["tie_word_embeddings"] is False
    assert "| rotation | SpinQuant R1+R2" in (got / "README.md").read_text()


def test_a_rotated_llava_sees_images_as_before(source, tmp_path):
    """Its tower is left alone, but the projector's output joins the rotated stream: rotated too."""
    transformers = import_tool("transformers", "transformers is not installed")
    path = source("llava")
    config = json.loads((path / "config.json").read_text())
    images = config["image_seq_length"]
    ids = torch.cat([torch.tensor([1]), torch.full((images,), config["image_token_index"]), torch.arange(7, 39)])[None]
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits = []
    for folder in (path, _rotated_copy(path, tmp_path / "rotated")):
        model = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids, pixel_values=pixels).logits[0, images + 1:].flatten())
    cosine = torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=0).item()
    assert cosine > 0.999, cosine


def test_a_multimodal_projector_it_does_not_know_is_refused():
    names = ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "vision_tower.blocks.0.w.weight"]
    config = {"hidden_size": 128, "num_attention_heads": 4, "vision_config": {}}
    with pytest.raises(ConverterError, match="projector is not one SpinQuant knows"):
        build_spinquant(config, names, lambda wanted: {n: torch.ones(128) for n in wanted})
