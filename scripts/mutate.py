#!/usr/bin/env python3
"""Plant one small bug at a time in ptq_core and check that the tests catch each one.

Each entry of ``MUTATIONS`` below names a file, an anchor (an exact substring that
must occur exactly once in that file), its replacement, and the pytest arguments
(test files, node ids, ``-k`` selections) that should catch it. For every mutation
the tool writes the mutated file into a temporary copy of the repository (tracked
and untracked, not ignored, files; never the working tree), runs
``python -m pytest -x -q <tests>`` there with ``PYTHONPATH=<copy>``, and restores
the file. It prints a Markdown table: the mutation and the first failing test,
or SURVIVED.

First every distinct test selection runs once on the unmutated copy: a selection
that fails anyway would seem to catch every mutation.

Exit status: 0 when every mutation is caught (or survives and is marked
``equivalent``, with the reason in the table); 1 when one survives; 2 when an
anchor is missing or ambiguous (the code was refactored: re-anchor the entry)
or when the unmutated code already fails a selection.

It is slow (a pytest run per mutation) and not part of ``.ci/run``:

    .venv/bin/python scripts/mutate.py               # all mutations
    .venv/bin/python scripts/mutate.py --list        # the table of mutations only
    .venv/bin/python scripts/mutate.py --only nibble-order --only retry-count
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    """One planted bug: ``anchor`` (occurring once in ``path``) becomes ``replacement``."""

    name: str
    path: str
    anchor: str
    replacement: str
    tests: tuple[str, ...]
    equivalent: str = ""  # why surviving is acceptable (the mutation changes no observable behaviour)


# ============================================================================
# The mutations. Anchors are written against the current code; when a refactor
# moves the code, `--list` still works and a run names every stale anchor.
# ============================================================================
NUMERICS_SPEC, NUMERICS_SCALES, NUMERICS_MSE, FUSED, PLANNER, WRITER, HTTP, HTTP_ERRORS, STAGING, REDACT, CONVERT, OUTPUT_CONFIG, SHARDS = (
    "ptq_core/numerics/spec.py", "ptq_core/numerics/scales.py", "ptq_core/numerics/mse_search.py",
    "ptq_core/fused_groups.py", "ptq_core/planner.py", "ptq_core/writer.py",
    "ptq_core/_http.py", "ptq_core/http_errors.py", "ptq_core/staging.py", "ptq_core/redact.py",
    "ptq_core/convert.py", "ptq_core/output_config.py", "ptq_core/sources/shards.py",
)
STREAM, UNITS, PARTS, FINALIZE = (
    "ptq_core/stream.py", "ptq_core/units.py", "ptq_core/parts.py", "ptq_core/hubjob/finalize.py",
)
ROTATION, ROTATION_LAYOUT, ROTATION_FAST = (
    "ptq_core/rotation.py", "ptq_core/rotation_layout.py", "ptq_core/rotation_fast.py",
)
NUMERICS_INT, NUMERICS_FLOAT = "ptq_core/numerics/int_codes.py", "ptq_core/numerics/float_codes.py"
MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "offset-norm-guard", ROTATION_LAYOUT,
        "offset = types & OFFSET_NORM_MODELS",
        "offset = set()",
        ("tests/core/test_rotation.py", "-k", "test_a_gemma_norm_is_refused_not_folded"),
    ),
    Mutation(
        "mixtral-expert-writer", ROTATION_LAYOUT,
        r'r"\.block_sparse_moe\.experts\.\d+\.w2$"',
        r'r"\.block_sparse_moe\.experts\.\d+\.w9$"',
        ("tests/core/test_rotation.py", "-k", "test_every_text_architecture_is_rotated_exactly_or_refused and mixtral"),
    ),
    Mutation(
        "random-hadamard-choice", ROTATION,
        'transform_type = "hadamard" if all(map(_power_of_two, widths)) else "random-hadamard"',
        'transform_type = "hadamard"',
        ("tests/core/test_rotation.py", "-k", "test_a_width_that_is_no_power_of_two"),
    ),
    Mutation(
        "fast-rotation-margin", ROTATION_FAST,
        "margin = (total * self.c) * coefficient",
        "margin = (total * self.c) * coefficient * 0",
        ("tests/core/test_rotation_fast.py",),
    ),
    Mutation(
        "scale-formula", NUMERICS_SCALES,
        "scales = max_val_pos / (bit_range.to(max_val_pos.dtype) / 2)",
        "scales = max_val_pos / bit_range.to(max_val_pos.dtype)",
        ("tests/core/test_numerics.py", "-k", "test_quantize_weight_matches_reference"),
    ),
    Mutation(
        "fp4-rounding-tie", NUMERICS_SCALES,
        "idx += a >= 0.75",
        "idx += a > 0.75",
        ("tests/core/test_numerics.py", "-k", "test_ties_construction or test_quantize_weight_matches_reference"),
    ),
    Mutation(
        "nibble-order", NUMERICS_SCALES,
        "pairs = codes.view(codes.shape[0], -1, 2)",
        "pairs = codes.view(codes.shape[0], -1, 2).flip(-1)",
        ("tests/core/test_numerics.py", "-k", "test_quantize_weight_matches_reference"),
    ),
    Mutation(
        "int-packing-offset", NUMERICS_SCALES,
        "offset = 1 << (num_bits - 1)",
        "offset = (1 << (num_bits - 1)) - 1",
        ("tests/core/test_numerics.py", "-k", "test_quantize_weight_matches_reference or test_channel_int_schemes"),
    ),
    Mutation(
        "int4-pair-multiplier", NUMERICS_INT,
        "_PAIR = (1 << 24) + (1 << 12)",
        "_PAIR = (1 << 24) + (1 << 11)",
        ("tests/core/test_int_codes.py", "-k", "every_pattern"),
    ),
    Mutation(
        "mx-fp8-exponent-step-bound", NUMERICS_FLOAT,
        "_MAX_STEP = 116",
        "_MAX_STEP = 117",
        ("tests/core/test_float_codes.py", "-k", "every_bf16_pattern"),
    ),
    Mutation(
        "int8-mse-one-sided-clamp", NUMERICS_INT,
        "return spec.observer == observers.MINMAX and spec.symmetric",
        "return spec.symmetric",
        ("tests/core/test_int_codes.py", "-k", "mse"),
    ),
    Mutation(
        "minmax-one-sign-cells", NUMERICS_SCALES,
        "if bool(torch.minimum(top, neg).lt(0).any()):",
        "if False:",
        ("tests/core/test_int_codes.py", "-k", "min_max"),
    ),
    Mutation(
        "mx-exponent-offset", NUMERICS_SPEC,
        "_MX_ELEM_OFFSET = {4: 2, 6: 2, 8: 8}",
        "_MX_ELEM_OFFSET = {4: 3, 6: 2, 8: 8}",
        ("tests/core/test_numerics.py", "-k", "test_quantize_weight_matches_reference"),
    ),
    Mutation(
        "table-sum-margin", "ptq_core/numerics/table_sums.py",
        "return _gamma(2 * width) + 4 * _U",
        "return 0.0",
        ("tests/core/test_observers.py", "-k", "test_table_errors_equal_the_direct_errors"),
    ),
    Mutation(
        "gathered-sum-order", "ptq_core/numerics/gathered_errors.py",
        "out[f] = laid.sum(dim=-1)",
        "out[f] = laid.double().sum(dim=-1).to(dtype)",
        ("tests/core/test_gathered_errors.py", "-k", "test_gathered_errors_equal_the_direct_errors"),
    ),
    Mutation(
        "global-scale-sharing", FUSED,
        'specs[u.group].strategy == "tensor_group"',
        'specs[u.group].strategy == "group"',
        ("tests/core/test_pipeline.py", "-k", "test_llama_every_preset_matches_reference and NVFP4A16"),
    ),
    Mutation(
        "fused-group-detection", FUSED,
        '"mla q_a/kv_a": ("q_a_proj", "kv_a_proj_with_mqa"),',
        '"mla q_a/kv_a": ("q_a_proj", "kv_a_proj"),',
        ("tests/core/test_pipeline.py", "-k", "test_architectures_match_reference and deepseek_v3-split-NVFP4A16"),
    ),
    Mutation(
        "ignore-matching", PLANNER,
        "entry = ignore.match(module)",
        'entry = ignore.match(module + ".weight")',
        ("tests/core/test_pipeline.py", "-k", "test_llama_every_preset_matches_reference and FP8_BLOCK"),
    ),
    Mutation(
        "norm-skip", PLANNER,
        'if module.endswith("norm"):',
        'if module.endswith("layernorm"):',
        ("tests/test_space.py", "-k", "test_preview_reads_headers_only"),
    ),
    Mutation(
        "shard-data-offset", WRITER,
        "self._data_start = 8 + len(raw)",
        "self._data_start = len(raw)",
        ("tests/core/test_pipeline.py", "-k", "test_llama_every_preset_matches_reference and FP8_BLOCK"),
    ),
    Mutation(
        "shard-alignment", WRITER,
        "ordered = sorted(tensors, key=lambda t: (-DTYPE_SIZES[t.dtype], t.name))",
        "ordered = sorted(tensors, key=lambda t: (DTYPE_SIZES[t.dtype], t.name))",
        ("tests/core/test_pipeline.py", "-k", "test_shards_keep_every_tensor_aligned"),
    ),
    Mutation(
        "index-weight-map", WRITER,
        '"weight_map": dict(sorted(weight_map.items()))',
        '"weight_map": dict(sorted(weight_map.items())[1:])',
        ("tests/core/test_pipeline.py", "-k", "test_llama_every_preset_matches_reference and FP8_BLOCK"),
    ),
    Mutation(
        "config-quantization-config", WRITER,
        'data["quantization_config"] = quantization_config',
        'data["quantization_config"] = {**quantization_config, "quantization_status": "frozen"}',
        ("tests/core/test_pipeline.py", "-k", "test_llama_every_preset_matches_reference and FP8_BLOCK"),
    ),
    Mutation(
        "retry-count", HTTP,
        "attempts = len(_RETRY_DELAYS) + 1",
        "attempts = len(_RETRY_DELAYS)",
        ("tests/test_hub.py", "-k", "test_transient_download_failures or test_network_failure_during_download"),
    ),
    Mutation(
        "transient-status", HTTP_ERRORS,
        "return status in _TRANSIENT_STATUS or status >= 500",
        "return status in _TRANSIENT_STATUS",
        ("tests/test_hub.py", "-k", "test_transient_download_failures or test_network_failure_during_download"),
    ),
    Mutation(
        "pre-upload", STAGING,
        'st._call(f"upload {shard} to", st.http.api.preupload_lfs_files,',
        'st._call(f"upload {shard} to", lambda *args, **kwargs: None,',
        ("tests/test_hub.py", "-k", "test_quantize_to_hub_end_to_end or test_each_shard_is_preuploaded"),
    ),
    Mutation(
        "redaction", REDACT,
        'text = text.replace(form, "***")',
        "text = text.replace(form, form)",
        ("tests/test_hub.py", "-k", "test_invalid_token or test_network_failure_during_download or test_redaction"),
    ),
    Mutation(
        "converter-in-place-unseen", CONVERT,
        "out[n] is metas[n] and metas[n]._version == versions[n]",
        "out[n] is metas[n]",
        ("tests/core/test_convert.py", "-k", "in_place"),
    ),
    Mutation(
        "dequantized-qparams-kept", CONVERT,
        "if k.rpartition(\".\")[2] not in qparams}",
        "if k}",
        ("tests/test_converter_sources.py", "-k", "test_cli_dequantizes"),
    ),
    Mutation(
        "merge-drops-shared-ignore", OUTPUT_CONFIG,
        "if hits_now and not any(match_name(m, entry) for m in others):",
        "if hits_now:",
        ("tests/core/test_convert.py", "-k", "append"),
    ),
    Mutation(
        "merge-regex-too-wide", OUTPUT_CONFIG,
        "if len(members) > 1 and all(m in chosen for m in members):",
        "if len(members) > 1 and any(m in chosen for m in members):",
        ("tests/core/test_convert.py", "-k", "exact_targets"),
    ),
    Mutation(
        "disk-gate-ignores-budget", STREAM,
        "self.shards >= self.max_shards or self.bytes + needed > self.budget",
        "self.shards >= self.max_shards",
        ("tests/core/test_stream.py", "tests/test_stream.py", "-k", "gate or disk_budget"),
    ),
    Mutation(
        "executor-queue-unbounded", UNITS,
        "self._in_flight >= 2 * self._workers",
        "self._in_flight >= 4 * self._workers",
        ("tests/core/test_units.py",),
    ),
    Mutation(
        "fits-verdict-off-by-one", PARTS,
        "if self.largest_shard_bytes > self.disk_budget:",
        "if self.largest_shard_bytes >= self.disk_budget:",
        ("tests/core/test_parts.py",),
    ),
    Mutation(
        "config-downloaded-again", FINALIZE,
        'if path == "config.json" and state.config is not None:',
        "if False:",
        ("tests/core/test_job_plan.py", "-k", "config_json_once"),
    ),
    Mutation(
        "shard-rule-single-file", SHARDS,
        "return [SINGLE_FILE] if SINGLE_FILE in top else top",
        "return top",
        ("tests/core/test_shards.py", "-k", "mistral"),
    ),
)
# ============================================================================

TIMEOUT_S = 1800  # one pytest run; a mutation that hangs the suite counts as caught


@dataclass(frozen=True)
class Outcome:
    caught_by: str  # first failing test id, or a short reason; "" when it survived
    seconds: float


def stale_anchors(mutations: tuple[Mutation, ...], root: Path) -> list[str]:
    """One line per mutation whose anchor is not exactly once in its file (or is a no-op)."""
    problems = []
    for m in mutations:
        path = root / m.path
        if not path.is_file():
            problems.append(f"{m.name}: {m.path} does not exist")
            continue
        count = path.read_text(encoding="utf-8").count(m.anchor)
        if count != 1:
            problems.append(f"{m.name}: anchor {m.anchor!r} occurs {count} times in {m.path} (must be once)")
        elif m.anchor == m.replacement:
            problems.append(f"{m.name}: the replacement equals the anchor")
    return problems


def copy_repo(root: Path, dest: Path) -> None:
    """Tracked and untracked, not ignored, files of ``root`` into ``dest`` (no .git, no venv)."""
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = root / rel
        if not src.is_file():  # deleted in the working tree, or a submodule
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


_FIRST_FAILURE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def run_tests(copy: Path, tests: tuple[str, ...], python: str) -> Outcome:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")])),
        "PTQ_DISABLE_PROGRESS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # a stale .pyc of another mutation must never be reused
    }
    command = [python, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Outcome(f"timed out after {TIMEOUT_S} s", time.monotonic() - start)
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        return Outcome("", seconds)
    if proc.returncode == 5:
        raise SystemExit(f"no test selected by {shlex.join(tests)}: fix the mutation's test selection")
    found = _FIRST_FAILURE.search(proc.stdout)
    if found:
        return Outcome(found.group(1), seconds)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["?"]
    return Outcome(f"pytest exit {proc.returncode}: {tail[0][:120]}", seconds)


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def markdown_row(m: Mutation, outcome: Outcome | None) -> str:
    change = f"{_cell(m.anchor.strip())} → {_cell(m.replacement.strip())}"
    if outcome is None:
        result = f"`{shlex.join(m.tests)}`"
    elif outcome.caught_by:
        result = f"caught by `{outcome.caught_by}` ({outcome.seconds:.0f} s)"
    elif m.equivalent:
        result = f"survived, equivalent: {m.equivalent}"
    else:
        result = f"**SURVIVED** ({outcome.seconds:.0f} s)"
    return f"| {m.name} | `{m.path}` | {change} | {result} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the mutations and their tests, run nothing")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs pytest (default: this one)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not first check that each test selection passes on the unmutated code")
    args = parser.parse_args(argv)

    unknown = set(args.only) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s) {sorted(unknown)}; see --list")
    chosen = tuple(m for m in MUTATIONS if not args.only or m.name in args.only)
    header = ["| mutation | file | change | " + ("tests" if args.list else "result") + " |", "|---|---|---|---|"]
    if args.list:
        print("\n".join(header + [markdown_row(m, None) for m in chosen]))
        return 0
    problems = stale_anchors(chosen, ROOT)
    if problems:
        print("Stale mutations (re-anchor them in MUTATIONS):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2

    rows, survived = [], []
    with tempfile.TemporaryDirectory(prefix="ptq-mutate-") as tmp:
        copy = Path(tmp) / "repo"
        copy_repo(ROOT, copy)
        if not args.skip_baseline:  # a selection that fails anyway would "catch" every mutation
            for tests in dict.fromkeys(m.tests for m in chosen):
                clean = run_tests(copy, tests, args.python)
                print(f"[baseline] {shlex.join(tests)}: {clean.caught_by or 'passes'} ({clean.seconds:.0f} s)",
                      file=sys.stderr, flush=True)
                if clean.caught_by:
                    print(f"The unmutated code already fails ({clean.caught_by}); fix that first.", file=sys.stderr)
                    return 2
        for i, m in enumerate(chosen, 1):
            target = copy / m.path
            original = target.read_text(encoding="utf-8")
            target.write_text(original.replace(m.anchor, m.replacement), encoding="utf-8")
            try:
                outcome = run_tests(copy, m.tests, args.python)
            finally:
                target.write_text(original, encoding="utf-8")
            status = outcome.caught_by or ("equivalent" if m.equivalent else "SURVIVED")
            print(f"[{i}/{len(chosen)}] {m.name}: {status} ({outcome.seconds:.0f} s)", file=sys.stderr, flush=True)
            rows.append(markdown_row(m, outcome))
            if not outcome.caught_by and not m.equivalent:
                survived.append(m.name)
    print("\n".join(header + rows))
    if survived:
        print(f"\n{len(survived)} mutation(s) survived: {', '.join(survived)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
