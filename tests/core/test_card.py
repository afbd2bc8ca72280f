"""The model card of a quantized repo (ptq_core/card.py)."""

from __future__ import annotations

import copy
import datetime as dt
from types import SimpleNamespace

import pytest
import yaml
from hub_server import _validate_card
from huggingface_hub import ModelCard

from ptq_core import __version__
from ptq_core.card import render_model_card, scheme_tag
from ptq_core.sizes import compression_ratio, format_bytes
from ptq_core.errors import InvalidOptionError

SOURCE_CARD = {
    "license": "llama3.2",
    "language": ["en", "de"],
    "library_name": "transformers",
    "pipeline_tag": "text-generation",
    "tags": ["facebook", "llama-3", "base_model:finetune:meta-llama/Llama-3.2-1B", "compressed-tensors"],
    "extra_gated_prompt": "a long legal text that must not be copied",
}


def _render(**overrides) -> str:
    kwargs = {
        "size_before": 2_471_000_000,
        "size_after": 1_300_000_000,
        "ignore": ["lm_head", "re:.*embed_tokens$", "re:a|b"],
        "source_card_data": SOURCE_CARD,
        "revision": "4e20de362430cd3b72f300e6b0f18e50e7166e08",
        "date": dt.date(2025, 1, 2),
    }
    kwargs.update(overrides)
    return render_model_card("meta-llama/Llama-3.2-1B", "alice/Llama-3.2-1B-FP8-BLOCK", "FP8_BLOCK", **kwargs)


def _front(text: str) -> dict:
    return ModelCard(text).data.to_dict()


def test_front_matter():
    data = _front(_render())
    assert data["base_model"] == "meta-llama/Llama-3.2-1B"
    assert data["base_model_relation"] == "quantized"
    assert data["license"] == "llama3.2"
    assert data["language"] == ["en", "de"]
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    # our tags first, the scheme, then the source's own tags; Hub-computed ones are dropped, no duplicates
    assert data["tags"] == ["compressed-tensors", "quantized", "ptq-hub", "fp8-block", "facebook", "llama-3"]
    assert "extra_gated_prompt" not in data


def test_front_matter_is_valid_for_the_hub():
    errors, warnings, metadata = _validate_card(_render(), "model")
    assert errors == [] and warnings == []
    assert metadata["base_model_relation"] == "quantized"


def test_front_matter_comes_first_and_key_order_is_stable():
    text = _render()
    assert text.startswith("---\nbase_model: meta-llama/Llama-3.2-1B\nbase_model_relation: quantized\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert list(front)[-1] == "tags"


def test_minimal_source_card():
    data = _front(_render(source_card_data=None))
    assert "license" not in data and "language" not in data and "pipeline_tag" not in data
    assert data["library_name"] == "transformers"
    assert data["tags"] == ["compressed-tensors", "quantized", "ptq-hub", "fp8-block"]


def test_other_license_keeps_name_and_link():
    card = {"license": "other", "license_name": "deepseek", "license_link": "LICENSE", "tags": "single-tag"}
    data = _front(_render(source_card_data=card))
    assert (data["license"], data["license_name"], data["license_link"]) == ("other", "deepseek", "LICENSE")
    assert data["tags"][-1] == "single-tag"


def test_body():
    text = _render(endpoint="https://huggingface.co/")
    body = ModelCard(text).text.lstrip()
    assert body.startswith("# Llama-3.2-1B-FP8-BLOCK\n")
    assert "[meta-llama/Llama-3.2-1B](https://huggingface.co/meta-llama/Llama-3.2-1B)" in body
    assert "[original model card](https://huggingface.co/meta-llama/Llama-3.2-1B)" in body
    assert "| scheme | `FP8_BLOCK`: FP8 weights in 128x128 blocks" in body  # plain words from schemes.py
    assert "| format | compressed-tensors `float-quantized` |" in body
    assert r"| ignore list | `lm_head`, `re:.*embed_tokens$`, `re:a\|b` |" in body  # pipe escaped in the table
    assert "| source revision | `4e20de362430cd3b72f300e6b0f18e50e7166e08` |" in body
    assert f"| tool | ptq-hub {__version__} |" in body
    assert "| date | 2025-01-02 |" in body
    assert "| original | 2.47 GB | 2,471,000,000 |" in body
    assert "| quantized | 1.30 GB | 1,300,000,000 |" in body
    assert "| ratio | 1.90x smaller | 47.4% saved |" in body
    assert "vllm serve alice/Llama-3.2-1B-FP8-BLOCK" in body
    assert 'model_id = "alice/Llama-3.2-1B-FP8-BLOCK"' in body
    assert "AutoModelForCausalLM.from_pretrained(model_id" in body
    assert "legal text" not in body


def test_plan_counts_and_skip_reasons():
    plan = SimpleNamespace(
        quantized=[object()] * 14,
        skipped={
            "lm_head.weight": "ignored: matches `lm_head`",
            "model.norm.weight": "norm layer",
            "model.layers.0.input_layernorm.weight": "norm layer",
        },
    )
    body = _render(plan=plan)
    assert "| quantized tensors | 14 |" in body
    assert "| kept in original precision | norm layer (2); ignored: matches `lm_head` (1) |" in body


def test_no_ignore_and_default_date():
    text = _render(ignore=(), date=None)
    assert "| ignore list | none |" in text
    assert f"| date | {dt.datetime.now(dt.timezone.utc).date().isoformat()} |" in text


def test_caller_data_is_not_mutated():
    before = copy.deepcopy(SOURCE_CARD)
    _render()
    assert SOURCE_CARD == before


def test_unknown_scheme_still_renders():
    text = render_model_card("a/b", "c/d", "MY_SCHEME", size_before=10, size_after=5, date=dt.date(2025, 1, 1))
    assert "| scheme | `MY_SCHEME`: the MY_SCHEME preset of compressed-tensors. |" in text
    assert "my-scheme" in _front(text)["tags"]


@pytest.mark.parametrize(
    "kwargs",
    [{"size_before": -1, "size_after": 1}, {"size_before": 1, "size_after": -5}],
)
def test_bad_sizes(kwargs):
    with pytest.raises(InvalidOptionError, match="byte counts"):
        render_model_card("a/b", "c/d", "FP8_BLOCK", **kwargs)


def test_empty_names():
    with pytest.raises(InvalidOptionError, match="non-empty target"):
        render_model_card("a/b", " ", "FP8_BLOCK", size_before=1, size_after=1)


def test_helpers():
    assert format_bytes(999) == "999 B"
    assert format_bytes(1_234_000) == "1.23 MB"
    assert format_bytes(1_234_000_000_000_000) == "1234.00 TB"
    assert compression_ratio(10, 4) == 2.5
    assert compression_ratio(10, 0) == 0.0
    assert scheme_tag("W4A16_ASYM") == "w4a16-asym"


def test_the_card_names_the_observer_and_what_it_does():
    text = render_model_card("a/b", "c/d", "W4A16", size_before=10, size_after=5, observer="memoryless_mse")
    assert "| weight observer | `memoryless_mse`: searches 20 shrunk ranges per scale cell" in text
    assert "weight observer" not in render_model_card("a/b", "c/d", "W4A16", size_before=10, size_after=5)


def test_card_says_where_vllm_runs_the_output(tmp_path):
    from factory import make_checkpoint

    from ptq_core import plan_checkpoint

    plan = plan_checkpoint(make_checkpoint(tmp_path / "m", "llama"), scheme="MXFP4A16")
    card = render_model_card("org/m", "alice/m-MXFP4A16", "MXFP4A16", size_before=plan.size_before,
                             size_after=plan.size_after, ignore=[], plan=plan)
    assert "| GPUs (vLLM 0.33) | not always with 16-bit activations: Marlin with 16-bit activations from 8.0" in card
    assert "dynamic FP8 activations on Hopper (9.0); dynamic MXFP4 activations on Blackwell (10.0)" in card
    assert f"| tensor parallel (vLLM 0.33) | {plan.tensor_parallel.summary()} |" in card
