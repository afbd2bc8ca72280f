"""The one request value: canonical names, the ignore rule, one validation of each option."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from factory import load_tensors, make_checkpoint
from ptq_core import DEFAULT_IGNORE, make_job
from ptq_core.cli import main
from ptq_core.errors import (
    CalibrationRequiredError,
    InvalidIgnoreError,
    InvalidOptionError,
    PtqError,
    SchemeNotSupportedError,
)
from ptq_core.job import default_repo_name, is_default_target, make_jobs


def test_scheme_spelling_is_canonical_everywhere():
    for spelling in ("fp8_block", " FP8_Block ", "FP8_BLOCK"):
        job = make_job("org/Model", spelling)
        assert job.scheme_name == "FP8_BLOCK"
        assert list(job.resolved.config.config_groups) == ["FP8_BLOCK"]
        assert job.repo_suffix == "FP8-BLOCK"


def test_unknown_scheme_names_the_presets():
    with pytest.raises(SchemeNotSupportedError, match=r"Unknown scheme 'fp9'\. Data-free presets: .*FP8_BLOCK"):
        make_job("org/Model", "fp9")


def test_ignore_adds_to_the_defaults_unless_they_are_dropped():
    assert make_job("o/m", "W4A16").ignore == DEFAULT_IGNORE
    assert make_job("o/m", "W4A16", ignore=["re:.*o_proj$"]).ignore == (*DEFAULT_IGNORE, "re:.*o_proj$")
    assert make_job("o/m", "W4A16", ignore=["lm_head"]).ignore == DEFAULT_IGNORE  # not listed twice
    assert make_job("o/m", "W4A16", ignore=["x"], default_ignore=False).ignore == ("x",)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("lm_head", r"ignore='lm_head' is a single string, which would be read character by character"),
        (None, r"ignore=None is not a list; pass a list of module names"),
        (5, r"ignore must be a list of module names or 're:' patterns, not a int"),
    ],
)
def test_ignore_must_be_a_list(bad, message):
    with pytest.raises(InvalidIgnoreError, match=message):
        make_job("o/m", "W4A16", ignore=bad)


def test_ignore_is_bounded_at_the_front_door_and_the_defaults_do_not_count():
    entries = [f"re:.*layers\\.{i}\\.mlp\\.gate$" for i in range(1000)]
    assert make_job("o/m", "W4A16", ignore=entries).ignore == (*DEFAULT_IGNORE, *entries)
    with pytest.raises(InvalidIgnoreError, match="more than 1000 entries, the limit"):
        make_job("o/m", "W4A16", ignore=[*entries, "lm_head"])


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2.0", "two", "", None, True])
def test_workers_are_checked_once_with_one_rule(workers):
    with pytest.raises(InvalidOptionError, match=r"max_workers=.* must be a whole number >= 1, or 'auto'") as info:
        make_job("o/m", "W4A16", workers=workers)
    assert info.value.option == "workers"


def test_workers_given_as_text_are_the_number_and_auto_is_resolved_in_the_core(monkeypatch):
    import ptq_core.workers as workers

    assert make_job("o/m", "W4A16", workers=" 3 ").workers == 3  # an Action input, a CLI argument
    monkeypatch.setattr(workers, "usable_cores", lambda: 5)
    assert make_job("o/m", "W4A16", workers="auto", device="cpu").workers == 5
    assert make_job("o/m", "W4A16", workers="AUTO", device="cpu").workers == 5


def test_devices_become_a_tuple_of_names():
    assert make_job("o/m", "W4A16").device is None
    assert make_job("o/m", "W4A16", device="cuda:0, cuda:1").device == ("cuda:0", "cuda:1")
    assert make_job("o/m", "W4A16", device=["cpu"]).device == ("cpu",)
    with pytest.raises(InvalidOptionError, match="device list is empty"):
        make_job("o/m", "W4A16", device=" , ")


def test_job_is_frozen_and_never_shares_the_callers_list():
    ignore = ["x"]
    job = make_job("o/m", "W4A16", ignore=ignore, default_ignore=False)
    ignore.append("y")
    assert job.ignore == ("x",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.workers = 3  # type: ignore[misc]


@pytest.mark.parametrize("bad", ["", "  ", None])
def test_empty_source_or_target_is_refused(bad):
    with pytest.raises(InvalidOptionError, match="source must be a checkpoint folder or a Hub repo id"):
        make_job(bad, "W4A16")
    if bad is not None:
        with pytest.raises(InvalidOptionError, match="is not a repo id; give 'namespace/name'"):
            make_job("o/m", "W4A16", target=bad)


def test_cli_scheme_in_any_case_writes_the_same_checkpoint(tmp_path):
    src = make_checkpoint(tmp_path / "src", "llama", shards=2)
    for spelling in ("fp8_block", "FP8_BLOCK"):
        assert main(["quantize", str(src), str(tmp_path / spelling), "--scheme", spelling]) == 0
    lower, upper = load_tensors(tmp_path / "fp8_block"), load_tensors(tmp_path / "FP8_BLOCK")
    assert lower.keys() == upper.keys()
    for name, tensor in lower.items():
        assert tensor.dtype == upper[name].dtype, name
        assert tensor.reshape(-1).view(torch.uint8).equal(upper[name].reshape(-1).view(torch.uint8)), name
    for name in ("config.json", "model.safetensors.index.json"):
        assert (tmp_path / "fp8_block" / name).read_bytes() == (tmp_path / "FP8_BLOCK" / name).read_bytes(), name


def test_observer_is_resolved_once_and_recorded():
    job = make_job("o/m", "w4a16", observer="mse")
    assert job.observer == "memoryless_mse"  # the peer's plain "mse" runs as memoryless_mse
    weights = job.resolved.quantization_config_dict()["config_groups"]["W4A16"]["weights"]
    assert (weights["observer"], weights.get("observer_kwargs", {})) == ("memoryless_mse", {})
    assert make_job("o/m", "W4A16").observer == "memoryless_minmax"
    with pytest.raises(CalibrationRequiredError, match=r"'imatrix_mse' observer .* calibration activations"):
        make_job("o/m", "W4A16", observer="imatrix_mse")
    with pytest.raises(SchemeNotSupportedError, match=r"Unknown weight observer 'msee'; data-free observers:"):
        make_job("o/m", "W4A16", observer="msee")


def test_cli_observer_gives_the_bytes_of_a_scheme_that_names_it(tmp_path):
    from compressed_tensors.quantization import preset_name_to_scheme

    from ptq_core import model_free_ptq

    src = make_checkpoint(tmp_path / "src", "llama")
    assert main(["quantize", str(src), str(tmp_path / "cli"), "--scheme", "W4A16", "--observer", "memoryless_mse",
                 "--no-default-ignore", "--ignore", "lm_head"]) == 0
    scheme = preset_name_to_scheme("W4A16", ["Linear"])
    scheme.weights = scheme.weights.model_copy(update={"observer": "memoryless_mse"})
    model_free_ptq(src, tmp_path / "py", scheme=scheme, ignore=["lm_head"])
    cli, py = load_tensors(tmp_path / "cli"), load_tensors(tmp_path / "py")
    assert cli.keys() == py.keys()
    for name, tensor in cli.items():
        assert tensor.reshape(-1).view(torch.uint8).equal(py[name].reshape(-1).view(torch.uint8)), name
    minmax = load_tensors(_quantize_minmax(src, tmp_path / "minmax"))
    scales = "model.layers.0.mlp.down_proj.weight_scale"
    assert not minmax[scales].equal(cli[scales])  # the search chose other scales than min/max


def _quantize_minmax(src, out):
    assert main(["quantize", str(src), str(out), "--scheme", "W4A16", "--no-default-ignore", "--ignore", "lm_head"]) == 0
    return out


# --- sources and revisions, refused as typed errors before any file or request -------
def test_an_overlong_source_is_a_typed_error_not_an_oserror():
    for source in ("a" * 5000, "org/" + "m" * 300, "x/" * 2100):
        with pytest.raises(InvalidOptionError, match=r"is too long to be a checkpoint folder .* or a Hub repo id"):
            make_job(source, "FP8_BLOCK")


@pytest.mark.parametrize(
    "source", ["/usr/lib", "/", "~", "~/models", "..", "../x", "./model", "org/../x", "a/b/c", "C:\\models\\x"]
)
def test_hub_only_refuses_paths_before_any_file_access(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidOptionError, match=r"is a file-system path; only Hub repos can be quantized here"):
        make_job(source, "FP8_BLOCK", hub_only=True)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("org/" + "m" * 5000, r"is not a Hub repo id: repo ids are at most 96 characters"),
        ("org/bad name", r"is not a valid Hub repo id"),
        ("gpt2", r"needs its namespace: 'org/gpt2'"),
    ],
)
def test_hub_only_takes_repo_ids_only(source, message):
    with pytest.raises(InvalidOptionError, match=message):
        make_job(source, "FP8_BLOCK", hub_only=True)
    assert make_job(" org/Model ", "FP8_BLOCK", hub_only=True).source == "org/Model"


@pytest.mark.parametrize(
    ("revision", "message"),
    [
        ("main\r\nx", r"holds '\\r', which no branch, tag or commit has"),
        ("ma in", r"holds ' '"),
        ("main\x00", r"holds '\\x00'"),
        ("v1\x7f", r"holds '\\x7f'"),
        ("a:b", r"holds ':'"),
        ("-rf", r"no leading '-', '\.\.'"),
        ("a/../b", r"no leading '-', '\.\.'"),
        ("x@{1}", r"'@\{'"),
        ("dev/", r"trailing '/'"),
        ("r" * 256, r"too long for a branch, tag or commit \(at most 255 characters\)"),
        ("", r"must be a branch, tag or commit"),
        (7, r"must be a branch, tag or commit"),
    ],
)
def test_revision_must_be_a_branch_tag_or_commit(revision, message):
    with pytest.raises(InvalidOptionError, match=message):
        make_job("org/Model", "FP8_BLOCK", revision=revision)


def test_valid_revisions_pass_trimmed():
    for revision in ("main", "v1.0", "refs/pr/1", "release-2024_01", "a" * 40, "0" * 255):
        assert make_job("org/Model", "FP8_BLOCK", revision=f" {revision}\n").revision == revision


def test_parts_stop_at_what_the_hubs_commit_rate_allows():
    from ptq_core.job import MAX_PARTS, parse_part

    assert parse_part(f"{MAX_PARTS}/{MAX_PARTS}") == (MAX_PARTS, MAX_PARTS)
    assert make_job("org/model", "FP8_DYNAMIC", part=(1, MAX_PARTS)).part == (1, MAX_PARTS)
    with pytest.raises(InvalidOptionError, match=rf"part=1/{MAX_PARTS + 1}: at most {MAX_PARTS} parts, .* 128 commits "
                                                 r"per hour"):
        make_job("org/model", "FP8_DYNAMIC", part=f"1/{MAX_PARTS + 1}")
    # the worst hour of staging commits (job.MAX_PARTS's docstring), one run per part, under the Hub's 128
    worst = {k: k * (60 // k + 1) + k + 1 for k in range(1, 100)}
    assert max(worst[k] for k in range(1, MAX_PARTS + 1)) <= 128
    assert worst[MAX_PARTS] == 97 and worst[43] > 128 and worst[64] > 128


@pytest.mark.parametrize("source", ["org/Model", "gpt2", "/abs/folder", "./rel", "~/models/x", "a/b/c", "..."])
def test_a_source_is_a_repo_id_or_a_path(source):
    assert make_job(source, "W4A16").source == source


def test_an_existing_folder_that_is_not_a_repo_id_is_a_path(tmp_path, monkeypatch):
    (tmp_path / "my model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert make_job("my model", "W4A16").source == "my model"


@pytest.mark.parametrize("source", ["org/My Model", "org/--x", "bad name"])
def test_a_source_that_is_neither_is_refused_with_the_hub_reason(source):
    with pytest.raises(InvalidOptionError, match=r"is neither a folder here nor a valid Hub repo id: Repo id must") as info:
        make_job(source, "W4A16")
    assert info.value.option == "source"


@pytest.mark.parametrize("source", ["./rel", "/abs", "a/b/c", "gpt2"])
def test_hub_only_sources_are_repo_ids_with_a_namespace(source):
    with pytest.raises(InvalidOptionError) as info:
        make_job(source, "W4A16", hub_only=True)
    assert info.value.option == "source"


@pytest.mark.parametrize("target", ["me/Model-FP8", "Model-FP8", " me/x "])
def test_targets_are_repo_ids_or_bare_names(target):
    assert make_job("o/m", "W4A16", target=target).target == target.strip()


@pytest.mark.parametrize("target,why", [("a/b/c", "more than one '/'"), ("me/bad name", "Repo id must"),
                                        ("", "is not a repo id"), ("me/-x", "Repo id must")])
def test_bad_targets_are_refused_before_any_request(target, why):
    with pytest.raises(InvalidOptionError, match=re.escape(why)) as info:
        make_job("o/m", "W4A16", target=target)
    assert info.value.option == "target"


@pytest.mark.parametrize("kwargs,option", [
    ({"scheme": "NOPE"}, "scheme"), ({"observer": "imatrix_mse"}, "observer"), ({"ignore": ["re:("]}, "ignore"),
    ({"revision": "a..b"}, "revision"), ({"part": "3/2"}, "part"), ({"tp": "x"}, "tp"), ({"disk_budget": "lots"}, "disk_budget"),
    ({"device": " , "}, "device"), ({"converters": [object()]}, "converters"),
])
def test_every_error_names_the_argument_it_is_about(kwargs, option):
    kwargs = {"scheme": "W4A16", **kwargs}
    with pytest.raises(PtqError) as info:
        make_job("o/m", **kwargs)
    assert info.value.option == option


def test_default_repo_names_follow_the_canonical_scheme():
    assert default_repo_name("meta-llama/Llama-3.2-1B", "fp8_block") == "Llama-3.2-1B-FP8-BLOCK"
    assert is_default_target("me/Llama-3.2-1B-NVFP4A16", "meta-llama/Llama-3.2-1B")
    assert not is_default_target("me/Llama-3.2-1B-mine", "meta-llama/Llama-3.2-1B")


def test_several_schemes_under_one_namespace():
    """``target="my-org/"``: every scheme's default name under that namespace (one scheme too)."""
    jobs = make_jobs("org/Model", "FP8_BLOCK,W4A16", target=" my-org/ ")
    assert [j.target for j in jobs] == ["my-org/Model-FP8-BLOCK", "my-org/Model-W4A16"]
    assert [j.target for j in make_jobs("org/Model", "NVFP4A16", target="my-org/")] == ["my-org/Model-NVFP4A16"]
    assert [j.target for j in make_jobs("org/Model", "W4A16", target="me/Mine")] == ["me/Mine"]


@pytest.mark.parametrize("target", ["me/Mine", "Mine"])
def test_a_repo_target_with_several_schemes_is_refused(target):
    with pytest.raises(InvalidOptionError, match="ending in '/'") as err:
        make_jobs("org/Model", "FP8_BLOCK,W4A16", target=target)
    assert err.value.option == "target"


def test_a_bad_namespace_is_refused_as_a_target():
    with pytest.raises(InvalidOptionError, match="not a valid repo id"):
        make_jobs("org/Model", "FP8_BLOCK,W4A16", target="bad name/")
