"""The model card (``README.md``) of a quantized repo.

The card links to the source model instead of copying its body: the source card
stays the reference for intended use, limitations and license terms. The front
matter carries what the Hub indexes (``base_model``, ``base_model_relation:
quantized``, the source's ``license``, ``library_name``, ``pipeline_tag``,
``language``) plus tags for the format and the scheme.

Example:
    >>> text = render_model_card("org/Model", "me/Model-FP8-BLOCK", "FP8_BLOCK",
    ...                          size_before=2_000, size_after=1_100)
    >>> text.startswith("---")
    True
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ._version import __version__
from .errors import InvalidOptionError
from .observers import describe_observer
from .rotation import rotation_note
from .schemes import gpu_support, list_schemes
from .sizes import compression_ratio, format_bytes

logger = logging.getLogger(__name__)

CARD_TAGS = ("compressed-tensors", "quantized", "ptq-hub")
"""Tags every quantized repo gets, before the scheme tag and the source's tags."""

_COPIED_KEYS = ("license", "license_name", "license_link", "language", "pipeline_tag")
"""Front-matter keys copied verbatim from the source card when present."""

def render_model_card(
    source: str,
    target: str,
    scheme: str,
    *,
    size_before: int,
    size_after: int,
    ignore: Sequence[str] = (),
    source_card_data: Mapping[str, Any] | None = None,
    revision: str | None = None,
    plan: Any | None = None,
    scheme_description: str | None = None,
    scheme_format: str | None = None,
    observer: str | None = None,
    tool_version: str | None = None,
    date: _dt.date | None = None,
    endpoint: str = "https://huggingface.co",
) -> str:
    """Render the ``README.md`` of a quantized repo.

    Args:
        source: The source repo id (``org/Model``); becomes ``base_model``.
        target: The quantized repo id; used in the title and the run snippets.
        scheme: The scheme name as resolved (``FP8_BLOCK``).
        size_before: Bytes of the source safetensors weights.
        size_after: Bytes of the quantized safetensors weights.
        ignore: The ignore list the run used (exact names and ``re:`` patterns).
        source_card_data: The source card's front matter (``ModelCardData.to_dict()``
            or ``model_info().card_data``); ``license``, ``license_name``,
            ``license_link``, ``library_name``, ``pipeline_tag``, ``language`` and
            ``tags`` are carried over when present. Never mutated.
        revision: The source commit the run read, shown in the card.
        plan: The run's ``Plan``; its tensor counts and skip reasons go in the card.
        scheme_description: One line in plain words; defaults to what
            ``schemes.list_schemes()`` says about ``scheme``.
        scheme_format: The compressed-tensors format (``float-quantized``...); same default.
        observer: The weight observer that chose the scales (``memoryless_mse``...); shown
            with one line on what it does. ``None`` leaves the row out.
        tool_version: ptq-hub's version; defaults to the installed one.
        date: The date shown; defaults to today (UTC).
        endpoint: Hub base URL used for links to the source.

    Returns:
        The card text: YAML front matter, then Markdown. It parses with
        ``huggingface_hub.ModelCard``.

    Raises:
        InvalidOptionError: sizes are negative, or ``source``/``target``/``scheme`` empty.

    Example:
        >>> card = render_model_card("org/M", "me/M-NVFP4A16", "NVFP4A16",
        ...                          size_before=10, size_after=3, ignore=["lm_head"])
        >>> "base_model_relation: quantized" in card
        True
    """
    _check_arguments(source, target, scheme, size_before, size_after)
    if tool_version is None:
        tool_version = __version__
    date = date or _dt.datetime.now(_dt.timezone.utc).date()
    description, fmt = _describe_scheme(scheme)
    scheme_description = scheme_description or description
    scheme_format = scheme_format or fmt

    front = _front_matter(source, scheme, dict(source_card_data or {}))
    body = _body(
        source=source, target=target, scheme=scheme, size_before=size_before, size_after=size_after,
        ignore=list(ignore), revision=revision, plan=plan, scheme_description=scheme_description,
        scheme_format=scheme_format, observer=observer, tool_version=str(tool_version), date=date,
        source_url=f"{endpoint.rstrip('/')}/{source}",
    )
    text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    _check_parses(text)
    return text


def _check_arguments(source: str, target: str, scheme: str, size_before: int, size_after: int) -> None:
    for name, value in (("source", source), ("target", target), ("scheme", scheme)):
        if not isinstance(value, str) or not value.strip():
            raise InvalidOptionError(f"render_model_card needs a non-empty {name}, got {value!r}.")
    if size_before < 0 or size_after < 0:
        raise InvalidOptionError(
            f"Sizes must be byte counts >= 0, got size_before={size_before}, size_after={size_after}."
        )


def scheme_tag(scheme: str) -> str:
    """The Hub tag for a scheme: ``FP8_BLOCK`` -> ``fp8-block``."""
    return scheme.strip().lower().replace("_", "-")


# --- helpers -----------------------------------------------------------------
def _describe_scheme(scheme: str) -> tuple[str, str | None]:
    """(plain-words description, format) of a preset, from ``schemes.list_schemes``."""
    for info in list_schemes():
        if info.name == scheme.upper():
            return info.description, info.format
    return f"the {scheme} preset of compressed-tensors.", None


def _observer_line(observer: str) -> str:
    """What the observer does in plain words (several, comma-separated, for mixed configs)."""
    return "; ".join(describe_observer(name.strip()) for name in observer.split(","))


def _front_matter(source: str, scheme: str, data: dict[str, Any]) -> dict[str, Any]:
    front: dict[str, Any] = {"base_model": source, "base_model_relation": "quantized"}
    for key in _COPIED_KEYS:
        value = data.get(key)
        if value not in (None, "", []):
            front[key] = value
    front["library_name"] = data.get("library_name") or "transformers"
    tags: list[str] = [*CARD_TAGS, scheme_tag(scheme)]
    source_tags = data.get("tags") or []
    if isinstance(source_tags, str):
        source_tags = [source_tags]
    for tag in source_tags:
        # Hub-computed tags (base_model:..., license:...) would point at the source.
        if isinstance(tag, str) and ":" not in tag and tag not in tags:
            tags.append(tag)
    front["tags"] = tags
    # Keep pipeline_tag/language order stable for readers: base_model first, tags last.
    return front


def _body(
    *,
    source: str,
    target: str,
    scheme: str,
    size_before: int,
    size_after: int,
    ignore: list[str],
    revision: str | None,
    plan: Any | None,
    scheme_description: str,
    scheme_format: str | None,
    observer: str | None,
    tool_version: str,
    date: _dt.date,
    source_url: str,
) -> str:
    rows = _quantization_rows(scheme, scheme_description, scheme_format, plan, observer)
    rows += [
        f"| ignore list | {', '.join(f'`{_md_cell(p)}`' for p in ignore) if ignore else 'none'} |",
        f"| source revision | {f'`{revision}`' if revision else 'default branch'} |",
        f"| tool | ptq-hub {_md_cell(tool_version)} |",
        f"| date | {date.isoformat()} |",
    ]
    lines = [*_intro_lines(source, target, scheme, source_url), *rows, *_plan_lines(plan),
             *_size_lines(size_before, size_after), *_usage_lines(target)]
    return "\n".join(lines)


def _intro_lines(source: str, target: str, scheme: str, source_url: str) -> list[str]:
    """The title, what was done, where the model's own card is, and the head of the quantization table."""
    return [
        f"# {target.split('/')[-1]}",
        "",
        (
            f"This is [{source}]({source_url}) quantized to **{scheme}** in the "
            "[compressed-tensors](https://github.com/neuralmagic/compressed-tensors) format "
            "with ptq-hub, data-free: weights are quantized from their own "
            "values, no calibration data was used."
        ),
        "",
        (
            "For what the model is, its intended use, limitations and license terms, see the "
            f"[original model card]({source_url})."
        ),
        "",
        "## Quantization",
        "",
        "| | |",
        "|---|---|",
    ]


def _quantization_rows(
    scheme: str, scheme_description: str, scheme_format: str | None, plan: Any | None, observer: str | None
) -> list[str]:
    """Scheme, format, the source's own format when it was dequantized first, the observer."""
    rows = [f"| scheme | `{scheme}`: {_md_cell(scheme_description)} |"]
    if scheme_format:
        rows.append(f"| format | compressed-tensors `{_md_cell(scheme_format)}` |")
    source_format = getattr(getattr(plan, "source", None), "format", None)
    if source_format is not None and source_format.is_quantized:  # FP8 blocks, AWQ...: dequantized first
        rows.append(f"| source weights | {_md_cell(source_format.summary)} |")
    if note := rotation_note(getattr(getattr(plan, "source", None), "converters", ())):
        rows.append(f"| rotation | {_md_cell(note)} |")
    if observer:
        rows.append(f"| weight observer | `{_md_cell(observer)}`: {_md_cell(_observer_line(observer))} |")
    return rows


def _size_lines(size_before: int, size_after: int) -> list[str]:
    ratio = compression_ratio(size_before, size_after)
    saved = (1 - size_after / size_before) * 100 if size_before else 0.0
    return [
        "",
        "## Size",
        "",
        "| | size | bytes |",
        "|---|---:|---:|",
        f"| original | {format_bytes(size_before)} | {size_before:,} |",
        f"| quantized | {format_bytes(size_after)} | {size_after:,} |",
        f"| ratio | {ratio:.2f}x smaller | {saved:.1f}% saved |",
        "",
        "Sizes count the safetensors weights only.",
    ]


def _usage_lines(target: str) -> list[str]:
    """How to run it: vLLM and transformers."""
    return [
        "",
        "## How to use",
        "",
        "With [vLLM](https://docs.vllm.ai):",
        "",
        "```bash",
        f"vllm serve {target}",
        "```",
        "",
        "With transformers (`pip install transformers compressed-tensors`):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model_id = "{target}"',
        "tokenizer = AutoTokenizer.from_pretrained(model_id)",
        'model = AutoModelForCausalLM.from_pretrained(model_id, device_map="auto")',
        'inputs = tokenizer("Hello, my name is", return_tensors="pt").to(model.device)',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))",
        "```",
        "",
    ]


def _plan_lines(plan: Any | None) -> list[str]:
    """Tensor counts and skip reasons from a Plan, if one was given."""
    if plan is None:
        return []
    lines: list[str] = []
    quantized = getattr(plan, "quantized", None)
    if quantized is not None:
        lines.append(f"| quantized tensors | {len(quantized)} |")
    skipped = getattr(plan, "skipped", None) or {}
    if skipped:
        reasons = Counter(str(reason) for reason in skipped.values())
        kept = "; ".join(f"{_md_cell(reason)} ({count})" for reason, count in reasons.most_common())
        lines.append(f"| kept in original precision | {kept} |")
    gpus = gpu_support(getattr(plan, "scheme_name", ""))
    if gpus and quantized:
        lines.append(f"| GPUs (vLLM 0.33) | {_md_cell(gpus)} |")
    parallel = getattr(plan, "tensor_parallel", None)
    if parallel is not None and quantized:
        lines.append(f"| tensor parallel (vLLM 0.33) | {_md_cell(parallel.summary())} |")
    return lines


def _md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _check_parses(text: str) -> None:
    """Cheap parse check: the front matter must load as ModelCard metadata."""
    from huggingface_hub import ModelCard

    card = ModelCard(text, ignore_metadata_errors=False)
    data = card.data.to_dict()
    if data.get("base_model_relation") != "quantized":  # pragma: no cover - a bug here, not bad input
        raise RuntimeError("the rendered model card lost its front matter")


__all__ = ["CARD_TAGS", "render_model_card", "scheme_tag"]
