"""hubjob.many: several schemes from one read (issue 21): one download, one repo per scheme, each as its single run.

The joint units and the fan-out underneath: tests/core/test_fanout.py.

Real huggingface_hub client against the loopback Hub (``hub`` fixture). The bytes the
source served are counted from the server's request log (the Range headers of GETs of
the source's weight files), so "downloaded once" is what the server saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import make_checkpoint
from hub_server import LFS_UPLOAD_PATH

from ptq_core import cli
from ptq_core.errors import DiskSpaceError, HubNetworkError, InvalidOptionError
from ptq_core.hubjob import quantize_to_hub
from ptq_core.hubjob.many import prepare_many, quantize_many_to_hub
from ptq_core.job import make_jobs

ALICE, BOB = "hf_test_alice", "hf_test_bob"
SOURCE = "bob/tiny"
SCHEMES = ("FP8_BLOCK", "NVFP4A16", "W4A16")
THRESHOLD = 64 * 1024

pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Path:
    """Fused partners (q/k/v, gate/up per expert) in different input shards: NVFP4's groups read across shards."""
    return make_checkpoint(tmp_path_factory.mktemp("moe") / "tiny", "qwen3_moe", shards=3, split_fused=True)


def _seed(hub, checkpoint: Path) -> None:
    hub.configure(lfs_threshold=THRESHOLD)
    hub.seed_repo(SOURCE, {p.name: p for p in checkpoint.iterdir() if p.is_file()})


def _weight_ranges(hub, since: int) -> list[tuple[str, int, int]]:
    """``(file, first, last)`` of the Range GETs of the source's weight files after request ``since``."""
    return hub.weight_ranges(SOURCE, since)


def _weight_bytes_served(hub, since: int) -> int:
    return sum(last - first + 1 for _, first, last in _weight_ranges(hub, since))


def _fetched_twice(ranges: list[tuple[str, int, int]]) -> int:
    """Bytes asked for more than once."""
    seen: dict[str, set[int]] = {}
    twice = 0
    for name, first, last in ranges:
        got = seen.setdefault(name, set())
        span = set(range(first, last + 1))
        twice += len(got & span)
        got |= span
    return twice


def _repo_files(hub, repo: str) -> dict[str, bytes]:
    return {name: hub.read_file(repo, name) for name in hub.list_files(repo)}


def _single_runs(hub, schemes) -> tuple[dict[str, dict[str, bytes]], list[int]]:
    """Each scheme's single-scheme run (by bob, into his namespace): its files, and the weight bytes it read."""
    files, served = {}, []
    for scheme in schemes:
        start = len(hub.requests_log)
        result = quantize_to_hub(SOURCE, scheme, token=BOB)
        served.append(_weight_bytes_served(hub, start))
        files[scheme] = _repo_files(hub, result.repo_id)
    return files, served


def _card_free(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if name != "README.md"}


def test_three_schemes_from_one_read_equal_their_single_runs(hub, moe, tmp_path):
    _seed(hub, moe)
    singles, single_served = _single_runs(hub, SCHEMES)

    start = len(hub.requests_log)
    result = quantize_many_to_hub(make_jobs(SOURCE, ",".join(SCHEMES), workers=2), token=ALICE,
                                  work_dir=tmp_path / "work")
    ranges = _weight_ranges(hub, start)
    served = _weight_bytes_served(hub, start)

    assert result.ok and list(result.results) == list(SCHEMES)
    source_bytes = sum(p.stat().st_size for p in moe.glob("*.safetensors"))
    # One read: no source byte was served twice, at most one copy of the source in all, and the
    # three single-scheme runs read about three times as much.
    assert _fetched_twice(ranges) == 0 and 0 < served <= source_bytes
    assert served <= min(single_served) * 1.05 and 3 * served < 1.1 * sum(single_served)
    assert result.downloaded == served
    for scheme, one in result.results.items():
        assert one.repo_id == f"alice/tiny-{scheme.replace('_', '-')}"
        files = _repo_files(hub, one.repo_id)
        assert _card_free(files) == _card_free(singles[scheme]), scheme  # same files, same bytes
        assert files["README.md"] == singles[scheme]["README.md"].replace(b"bob/tiny-", b"alice/tiny-")
        assert hub.stats.commits.get((one.repo_id, "main"), 0) == 1 and hub.branches(one.repo_id) == {
            "main": one.commit_sha}
    assert list((tmp_path / "work").rglob("*.safetensors")) == []


def test_a_budget_the_shared_read_cannot_hold_is_refused_before_any_repo(hub, moe, tmp_path):
    """Each scheme's gate gets 1/n of the budget; a budget one scheme fits but three do not is refused up front."""
    _seed(hub, moe)
    jobs = make_jobs(SOURCE, ",".join(SCHEMES))
    largest = max(p.planned.footprint.largest_shard_bytes
                  for p in prepare_many(jobs, token=ALICE, work_dir=tmp_path / "w"))
    budget = 2 * largest  # every scheme alone fits; a third of it does not hold the largest shard
    with pytest.raises(DiskSpaceError, match=r"1/3 of .*3 schemes from one read"):
        quantize_many_to_hub(make_jobs(SOURCE, ",".join(SCHEMES), disk_budget=budget), token=ALICE,
                             work_dir=tmp_path / "work")
    assert not any(hub.repo_exists(f"alice/tiny-{s.replace('_', '-')}") for s in SCHEMES)
    one = quantize_many_to_hub(make_jobs(SOURCE, SCHEMES[0], disk_budget=budget), token=ALICE,
                               work_dir=tmp_path / "one")
    assert one.ok  # the same budget holds one scheme


def test_one_schemes_upload_failure_keeps_the_others_and_a_rerun_finishes(hub, moe, tmp_path):
    _seed(hub, moe)
    singles, single_served = _single_runs(hub, ["W4A16"])
    jobs = make_jobs(SOURCE, "FP8_BLOCK,W4A16")
    batch = "tiny-W4A16.git/info/lfs/objects/batch"  # W4A16's uploads only: its first shard lands, then all fail
    hub.on_request(batch, lambda *_: hub.fail_requests(batch, 10_000, 520, method="POST"), nth=2, method="POST")

    first = quantize_many_to_hub(jobs, token=ALICE, work_dir=tmp_path / "work")

    assert list(first.results) == ["FP8_BLOCK"] and list(first.errors) == ["W4A16"]
    assert isinstance(first.errors["W4A16"], HubNetworkError)
    assert "staged on branch ptq-staging-" in str(first.errors["W4A16"])
    assert hub.list_files("alice/tiny-W4A16") == [".gitattributes"]  # its main untouched, its work kept
    fp8 = first.results["FP8_BLOCK"]
    assert hub.branches(fp8.repo_id) == {"main": fp8.commit_sha}

    with hub._lock:  # the outage is over
        hub._failures.clear()
    start = len(hub.requests_log)
    second = quantize_many_to_hub(jobs, token=ALICE, work_dir=tmp_path / "work")
    served = _weight_bytes_served(hub, start)

    assert second.ok and second.results["FP8_BLOCK"].commit_sha == fp8.commit_sha  # finished: found, not redone
    w4 = second.results["W4A16"]
    assert _card_free(_repo_files(hub, w4.repo_id)) == _card_free(singles["W4A16"])
    assert hub.stats.commits.get((w4.repo_id, "main"), 0) == 1
    assert 0 < served < single_served[0]  # the staged shards' inputs are not fetched again
    assert list((tmp_path / "work").rglob("*.safetensors")) == []


def test_parts_of_several_schemes_then_finalize_each(hub, moe, tmp_path, monkeypatch, capsys):
    _seed(hub, moe)
    singles, _ = _single_runs(hub, ["FP8_BLOCK", "NVFP4A16"])
    for i in (1, 2):  # each part: part i of each scheme's own cut, from one read
        staged = quantize_many_to_hub(make_jobs(SOURCE, "FP8_BLOCK,NVFP4A16", part=f"{i}/2"), token=ALICE,
                                      work_dir=tmp_path / "work")
        assert staged.ok and all(r.part == (i, 2) and r.branch for r in staged.results.values())
    assert hub.list_files("alice/tiny-FP8-BLOCK") == [".gitattributes"]  # parts never touch main
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(["run", SOURCE, "--scheme", "FP8_BLOCK,NVFP4A16", "--finalize", "2"]) == 0
    assert capsys.readouterr().out.count("| commit |") == 2
    for scheme in ("FP8_BLOCK", "NVFP4A16"):
        repo = f"alice/tiny-{scheme.replace('_', '-')}"
        assert _card_free(_repo_files(hub, repo)) == _card_free(singles[scheme])
        assert hub.stats.commits.get((repo, "main"), 0) == 1


# --- front ends ------------------------------------------------------------------------
def test_make_jobs_validates_the_request_once():
    jobs = make_jobs("org/Model", "fp8_block, NVFP4A16\nw4a16", ignore=["re:.*gate$"], revision="main")
    assert [j.scheme_name for j in jobs] == list(SCHEMES)
    assert {(j.source, j.revision, j.ignore) for j in jobs} == {(jobs[0].source, "main", jobs[0].ignore)}
    assert [j.scheme_name for j in make_jobs("org/Model", ["FP8_BLOCK"])] == ["FP8_BLOCK"]
    with pytest.raises(InvalidOptionError, match="scheme FP8_BLOCK is given twice") as err:
        make_jobs("org/Model", "FP8_BLOCK,fp8_block")
    assert err.value.option == "scheme"
    with pytest.raises(InvalidOptionError, match="target cannot be given with several schemes") as err:
        make_jobs("org/Model", "FP8_BLOCK,W4A16", target="me/x")
    assert err.value.option == "target"
    with pytest.raises(InvalidOptionError, match="names no scheme"):
        make_jobs("org/Model", " , ")


def test_cli_run_and_plan_take_several_schemes(hub, moe, monkeypatch, capsys):
    _seed(hub, moe)
    monkeypatch.setenv("HF_TOKEN", ALICE)
    assert cli.main(["plan", SOURCE, "--scheme", "FP8_BLOCK,W4A16"]) == 0
    out = capsys.readouterr().out
    assert out.count("## FP8_BLOCK") == 1 and out.count("## W4A16") == 1
    assert out.count("## One read for every scheme") == 1

    start = len(hub.requests_log)
    assert cli.main(["run", SOURCE, "--scheme", "FP8_BLOCK,W4A16", "--collection", "tiny quantized"]) == 0
    out = capsys.readouterr().out
    assert "[alice/tiny-FP8-BLOCK](" in out and "[alice/tiny-W4A16](" in out and "downloaded once" in out
    assert _weight_bytes_served(hub, start) <= sum(p.stat().st_size for p in moe.glob("*.safetensors"))
    (collection,) = hub.collections.collections.values()
    assert collection["title"] == "tiny quantized"
    assert [i["id"] for i in collection["items"]] == ["alice/tiny-FP8-BLOCK", "alice/tiny-W4A16"]

    assert cli.main(["run", SOURCE, "--scheme", "FP8_BLOCK,W4A16", "--to", "alice/x"]) == 2
    assert "target cannot be given with several schemes" in capsys.readouterr().err
    # --on-jobs runs every scheme in one job (tests/core/test_hf_jobs_many.py); parts there take one scheme.
    assert cli.main(["run", SOURCE, "--scheme", "FP8_BLOCK,W4A16", "--on-jobs", "--parts", "2"]) == 2
    assert "--parts, --part and --finalize take one scheme" in capsys.readouterr().err
    assert cli.main(["plan", SOURCE, "--scheme", "FP8_BLOCK,W4A16", "--parts", "2"]) == 2
    assert "--parts plans one scheme" in capsys.readouterr().err
