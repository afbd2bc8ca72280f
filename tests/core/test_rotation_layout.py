"""``ptq_core.rotation_layout``: the names the rotation reads, and the families it refuses by name.

The rotation's arithmetic and its sweep over the zoo are in ``test_rotation.py``; here, what
this module decides on names and config alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import import_tool
from ptq_core.errors import ConverterError
from ptq_core.rotation_layout import OFFSET_NORM_MODELS, RotationLayout, compiled, matches_any, refuse_offset_norms


def test_the_offset_norm_list_covers_the_installed_transformers():
    """Every model type whose transformers RMSNorm multiplies by (1 + w) is refused by name."""
    transformers = import_tool("transformers", "transformers is not installed")
    models = Path(transformers.__file__).parent / "models"
    offset = re.compile(r"\(1(\.0)? \+ self\.weight")
    found = set()
    for modeling in models.glob("*/modeling_*.py"):
        if offset.search(modeling.read_text(errors="replace")):
            for configuration in modeling.parent.glob("configuration_*.py"):
                found |= set(re.findall(r'model_type = "([a-z0-9_]+)"', configuration.read_text(errors="replace")))
    assert {"gemma", "qwen3_next"} <= found  # the scan itself works
    missing = {m for m in found if not m.endswith(("_vision", "_audio"))} - OFFSET_NORM_MODELS
    assert not missing, f"add to rotation_layout.OFFSET_NORM_MODELS: {sorted(missing)}"


@pytest.mark.parametrize("config", [
    {"model_type": "gemma"},
    {"model_type": "qwen3_5", "text_config": {"model_type": "qwen3_5_text"}},
    {"model_type": "some_vlm", "text_config": {"model_type": "gemma3_text"}},
])
def test_offset_norms_are_refused_from_the_config_or_its_text_config(config):
    with pytest.raises(ConverterError, match=r"scales its RMSNorms by \(1 \+ w\)"):
        refuse_offset_norms(config)


def test_a_plain_rmsnorm_model_passes():
    refuse_offset_norms({"model_type": "llama"})
    refuse_offset_norms({"model_type": "llava", "text_config": {"model_type": "llama"}})


@pytest.mark.parametrize(("module", "reads"), [
    ("model.layers.0.block_sparse_moe.experts.3.w1", True),
    ("model.layers.0.block_sparse_moe.experts.3.w3", True),
    ("model.layers.0.block_sparse_moe.gate", True),
    ("model.layers.0.block_sparse_moe.experts.3.w2", False),
])
def test_mixtral_per_expert_names_have_their_place(module, reads):
    layout = RotationLayout()
    assert matches_any(compiled(layout.mlp_in), module) is reads
    assert matches_any(compiled(layout.mlp_out), module) is not reads
