"""schemes: presets by their canonical names, one validated request, calibration schemes refused."""

from __future__ import annotations

import pytest
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

from ptq_core.constants import DEFAULT_SCHEME
from ptq_core.errors import CalibrationRequiredError, InvalidIgnoreError, SchemeNotSupportedError
from ptq_core.schemes import (
    DEFAULT_IGNORE,
    canonical_scheme_name,
    gpu_support,
    list_schemes,
    resolve_config,
    scheme_repo_suffix,
)


@pytest.mark.parametrize("typed", ["fp8_block", " FP8_Block ", "FP8_BLOCK"])
def test_canonical_name_is_the_preset_spelling(typed):
    assert canonical_scheme_name(typed) == "FP8_BLOCK"


def test_unknown_scheme_names_the_data_free_presets():
    with pytest.raises(SchemeNotSupportedError, match=r"Unknown scheme 'FP9'. Data-free presets: .*FP8_BLOCK"):
        canonical_scheme_name("FP9")


def test_repo_suffix():
    assert scheme_repo_suffix("FP8_BLOCK") == "FP8-BLOCK" and scheme_repo_suffix("w4a16_asym") == "W4A16-ASYM"


def test_list_schemes_shows_only_what_needs_no_data_unless_asked():
    free = {s.name: s for s in list_schemes()}
    every = {s.name: s for s in list_schemes(data_free_only=False)}
    assert DEFAULT_SCHEME in free and free[DEFAULT_SCHEME].format == "float-quantized" and free[DEFAULT_SCHEME].data_free
    assert "NVFP4" not in free and "NVFP4" in every and not every["NVFP4"].data_free
    assert set(free) < set(every) and all(s.description for s in every.values())
    assert gpu_support("FP8_BLOCK").startswith("FP8 block GEMMs") and gpu_support("custom") is None


def test_a_preset_resolves_to_one_group_with_its_format_and_the_ignore_appended():
    resolved = resolve_config("nvfp4a16", ignore=["lm_head"])
    assert resolved.name == "NVFP4A16" and [name for name, _ in resolved.groups] == ["NVFP4A16"]
    assert resolved.formats == {"NVFP4A16": "nvfp4-pack-quantized"} and resolved.ignore == ["lm_head"]
    assert resolved.groups[0][1].targets == ["Linear"]
    block = resolved.quantization_config_dict()
    assert block["quant_method"] == "compressed-tensors" and block["format"] == "nvfp4-pack-quantized"
    assert block["quantization_status"] == "compressed"
    again = resolved.with_ignore([DEFAULT_IGNORE[1], "lm_head"])  # appended once, in order
    assert again.ignore == ["lm_head", DEFAULT_IGNORE[1]] and resolved.ignore == ["lm_head"]


def test_the_observer_is_recorded_on_every_group():
    resolved = resolve_config("W4A16", observer="memoryless_mse")
    assert all(group.weights.observer == "memoryless_mse" for _, group in resolved.groups)


def test_the_caller_s_config_is_copied_not_changed():
    scheme = QuantizationScheme(targets=[], weights=QuantizationArgs(num_bits=8, type="int", strategy="channel"))
    config = QuantizationConfig(config_groups={"g": scheme}, ignore=["head"])
    resolved = resolve_config(config=config, ignore=["x"])
    assert resolved.ignore == ["head", "x"] and resolved.groups[0][1].targets == ["Linear"]
    assert scheme.targets == [] and config.ignore == ["head"]


@pytest.mark.parametrize("scheme,config,error,words", [
    ("FP8_BLOCK", QuantizationConfig(config_groups={}), SchemeNotSupportedError, "not both"),
    (None, None, SchemeNotSupportedError, "No scheme given"),
    ("FP8", None, CalibrationRequiredError, "Pick FP8_DYNAMIC"),
    ("NVFP4", None, CalibrationRequiredError, "Pick NVFP4A16"),
    (42, None, SchemeNotSupportedError, "not int"),
])
def test_refusals_say_what_to_do(scheme, config, error, words):
    with pytest.raises(error, match=words):
        resolve_config(scheme, config)


def test_a_regex_that_does_not_compile_is_refused():
    with pytest.raises(InvalidIgnoreError):
        resolve_config("FP8_BLOCK", ignore=["re:("])
