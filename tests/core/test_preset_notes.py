"""``preset_notes``: the front ends' words about each preset, keyed by names compressed-tensors defines."""

from __future__ import annotations

from ptq_core.preset_notes import DESCRIPTIONS, GPUS, describe, gpu_support
from ptq_core.presets import PRESETS


def test_every_note_is_about_a_preset_compressed_tensors_defines():
    assert set(DESCRIPTIONS) <= set(PRESETS), "a note names a preset the installed compressed-tensors lacks"
    assert set(GPUS) <= set(PRESETS)


def test_the_presets_people_pick_have_their_own_words():
    for name in ("FP8_BLOCK", "FP8_DYNAMIC", "NVFP4A16", "MXFP4A16", "W4A16", "W8A8"):
        assert DESCRIPTIONS[name] and gpu_support(name), name
    assert gpu_support("config_group_0") is None  # a custom config: nothing to claim


def test_a_preset_without_words_is_described_from_its_args():
    assert describe(PRESETS["W4A8"]["weights"], PRESETS["W4A8"]["inputs"]) == (
        "INT4 weights (group, groups of 128), dynamic INT8 activations."
    )
    assert describe(PRESETS["W2A16"]["weights"], None) == "INT2 weights (group, groups of 128), 16-bit activations."
    assert describe(None, None) == "No quantization."
