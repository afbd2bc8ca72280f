"""pipeline_many: several schemes from one read into local folders, each byte for byte its single-scheme run.

Reads are counted through the reader itself (``ShardReader.read_into`` and ``LocalReader.copy_to``,
the only ways a run reads tensor bytes), so "each source byte read once" is what the file saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import make_checkpoint

from ptq_core import cli, constants
from ptq_core.checkpoint import ShardReader
from ptq_core.errors import InvalidOptionError, OutputExistsError, OutputLocationError
from ptq_core.job import make_job, make_jobs
from ptq_core.pipeline import quantize_job
from ptq_core.pipeline_many import output_folders, quantize_jobs
from ptq_core.units import LocalReader

SCHEMES = ("FP8_BLOCK", "NVFP4A16", "W4A16")


@pytest.fixture
def reads(monkeypatch) -> list[tuple[str, int, int]]:
    """Every ``(shard, first byte, length)`` read from a source shard while the test runs."""
    seen: list[tuple[str, int, int]] = []
    read_into, copy_to = ShardReader.read_into, LocalReader.copy_to

    def counted_read(self, info, out, start=0):
        seen.append((info.shard, info.offset + start, out.numel()))
        return read_into(self, info, out, start)

    def counted_copy(self, writer, name, info, start):
        seen.append((info.shard, info.offset + start, info.nbytes - start))
        return copy_to(self, writer, name, info, start)

    monkeypatch.setattr(ShardReader, "read_into", counted_read)
    monkeypatch.setattr(LocalReader, "copy_to", counted_copy)
    return seen


def _tensor_bytes(folder: Path) -> int:
    """The bytes of every tensor in the folder's shards (a file less its 8-byte length and JSON header)."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as f:
            total += path.stat().st_size - 8 - int.from_bytes(f.read(8), "little")
    return total


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(("arch", "shape"), [
    pytest.param("llama", dict(shards=2, num_hidden_layers=4), id="llama"),
    pytest.param("qwen3_moe", dict(shards=3, split_fused=True), id="moe-nvfp4-groups-across-shards"),
])
def test_each_folder_equals_its_single_run_and_each_source_byte_is_read_once(tmp_path, reads, arch, shape):
    source = make_checkpoint(tmp_path / "tiny", arch, **shape)
    result = quantize_jobs(make_jobs(str(source), ",".join(SCHEMES), workers=2), tmp_path / "out")

    assert result.ok and list(result.results) == list(SCHEMES)
    seen: dict[str, set[int]] = {}
    for shard, first, length in reads:
        span = set(range(first, first + length))
        assert not seen.setdefault(shard, set()) & span, f"{shard}: bytes read twice"
        seen[shard] |= span
    assert sum(map(len, seen.values())) == _tensor_bytes(source)  # every tensor byte, once
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"tiny-{s.replace('_', '-')}" for s in SCHEMES)
    for scheme, one in result.results.items():
        assert one.save_directory == tmp_path / "out" / f"tiny-{scheme.replace('_', '-')}"
        single = quantize_job(make_job(str(source), scheme), tmp_path / f"single-{scheme}")
        assert _files(one.save_directory) == _files(single.save_directory), scheme  # every file, byte for byte
        assert (one.size_before, one.size_after) == (single.size_before, single.size_after)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=2)


def test_an_existing_output_is_refused_before_anything_is_read_or_written(tmp_path, reads, llama):
    out = tmp_path / "out"
    (out / "tiny-W4A16").mkdir(parents=True)
    (out / "tiny-W4A16" / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="tiny-W4A16 is not empty; pass overwrite=True"):
        quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,W4A16"), out)
    assert [p.name for p in out.iterdir()] == ["tiny-W4A16"] and reads == []

    result = quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,W4A16", overwrite=True), out)
    assert result.ok and not (out / "tiny-W4A16" / "mine.txt").exists()
    assert "model.safetensors.index.json" in _files(out / "tiny-W4A16")


def test_bad_combinations_are_typed_errors(tmp_path, llama):
    fp8 = make_job(str(llama), "FP8_BLOCK")
    with pytest.raises(InvalidOptionError, match="same scheme"):
        quantize_jobs([fp8, make_job(str(llama), "fp8_block")], tmp_path / "out")
    with pytest.raises(InvalidOptionError, match="must share source, revision and part"):
        quantize_jobs([fp8, make_job(str(tmp_path), "W4A16")], tmp_path / "out")
    with pytest.raises(InvalidOptionError, match="scheme FP8_BLOCK is given twice"):
        make_jobs(str(llama), "FP8_BLOCK,fp8_block")
    with pytest.raises(InvalidOptionError, match="1 output folder"):
        quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,W4A16"), [tmp_path / "a"])
    with pytest.raises(OutputLocationError, match="same or nested"):
        quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,W4A16"), [tmp_path / "a", tmp_path / "a" / "b"])
    with pytest.raises(OutputLocationError, match="is the input folder or inside it"):
        quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,W4A16"), [tmp_path / "a", llama / "b"])
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="is a file; with several schemes it is the parent folder"):
        quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,W4A16"), tmp_path / "file")
    assert not (tmp_path / "out").exists() and not (tmp_path / "a").exists()
    assert output_folders(make_jobs(str(llama), "FP8_BLOCK,W4A16"), "x") == [Path("x/tiny-FP8-BLOCK"),
                                                                           Path("x/tiny-W4A16")]


def test_a_scheme_that_fails_leaves_its_folder_as_it_was_and_the_others_published(tmp_path, llama):
    out = tmp_path / "out"

    def intrude(stage: str, done: int, total: int) -> None:
        if stage == "quantize" and not (out / "tiny-W4A16").exists():  # another process writes there meanwhile
            (out / "tiny-W4A16").mkdir(parents=True)
            (out / "tiny-W4A16" / "theirs.txt").write_text("theirs")

    result = quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,W4A16,NVFP4A16"), out, progress=intrude)

    assert list(result.results) == ["FP8_BLOCK", "NVFP4A16"] and list(result.errors) == ["W4A16"]
    assert isinstance(result.errors["W4A16"], OutputExistsError)
    assert _files(out / "tiny-W4A16") == {"theirs.txt": b"theirs"}
    assert sorted(p.name for p in out.iterdir()) == ["tiny-FP8-BLOCK", "tiny-NVFP4A16", "tiny-W4A16"]  # no work folder
    for scheme in ("FP8_BLOCK", "NVFP4A16"):
        single = quantize_job(make_job(str(llama), scheme), tmp_path / scheme)
        assert _files(result.results[scheme].save_directory) == _files(single.save_directory)


def test_a_failure_of_the_shared_read_is_raised_and_leaves_no_folder(tmp_path, llama):
    def fail(stage: str, done: int, total: int) -> None:
        if stage == "quantize" and done >= 2:
            raise RuntimeError("quantize step broke")

    with pytest.raises(RuntimeError, match="quantize step broke"):
        quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,W4A16", workers=2), tmp_path / "out", progress=fail)
    assert not (tmp_path / "out").exists()  # the parent it created, empty again, is gone too


def test_cli_writes_a_folder_per_scheme_and_refuses_to_replace_them(tmp_path, llama, capsys):
    out = tmp_path / "out"
    assert cli.main(["quantize", str(llama), str(out), "--scheme", "FP8_BLOCK,W4A16", "-j", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"Wrote {out / 'tiny-FP8-BLOCK'}:" in printed and f"Wrote {out / 'tiny-W4A16'}:" in printed
    before = {name: _files(out / name) for name in ("tiny-FP8-BLOCK", "tiny-W4A16")}
    single = quantize_job(make_job(str(llama), "W4A16"), tmp_path / "single")
    assert before["tiny-W4A16"] == _files(single.save_directory)

    assert cli.main(["quantize", str(llama), str(out), "--scheme", "FP8_BLOCK,W4A16"]) == 2
    assert "tiny-FP8-BLOCK is not empty; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert {name: _files(out / name) for name in before} == before
    assert cli.main(["quantize", str(llama), str(out), "--scheme", "W4A16,w4a16"]) == 2
    assert "scheme W4A16 is given twice" in capsys.readouterr().err


def test_progress_is_one_bar_per_stage_summed_over_the_schemes(tmp_path, llama):
    """The stages of ``quantize_job`` (no upload): validate once, quantize and write summed, each ending at its total."""
    events: list[tuple[str, int, int]] = []
    result = quantize_jobs(make_jobs(str(llama), "FP8_BLOCK,NVFP4A16", workers=2), tmp_path / "out",
                           progress=lambda *event: events.append(event))
    assert result.ok
    assert list(dict.fromkeys(stage for stage, _, _ in events)) == ["validate", "quantize", "write"]
    last = {stage: (done, total) for stage, done, total in events}
    shards = sum(len(r.plan.shards) for r in result.results.values())
    assert last["validate"] == (1, 1) and last["write"] == (shards + 2, shards + 2)  # + each index and config
    assert last["quantize"][0] == last["quantize"][1] >= len(result.results["FP8_BLOCK"].plan.quantized)
    for stage in ("quantize", "write"):
        assert all(done <= total for s, done, total in events if s == stage)
        assert sum(1 for s, done, total in events if s == stage and done == total) == 1, stage  # closes once


def test_a_hub_source_is_downloaded_once_for_every_scheme(hub, tmp_path, llama, monkeypatch):
    monkeypatch.setattr(constants, "PTQ_HUB_CACHE", tmp_path / "cache")  # a fresh download, not a cached one
    hub.seed_repo("bob/tiny", {p.name: p for p in llama.iterdir() if p.is_file()})
    since = len(hub.requests_log)
    result = quantize_jobs(make_jobs("bob/tiny", "FP8_BLOCK,W4A16"), tmp_path / "out", token="hf_test_alice")
    weights = [(path, headers.get("range")) for method, path, headers in hub.requests_log[since:]
               if method == "GET" and path.split("?")[0].endswith(".safetensors")]
    # each weight file fetched once, whole (a Hub source is downloaded, then read as a folder)
    assert sorted((path.rsplit("/", 1)[-1], r) for path, r in weights) == sorted(
        (p.name, None) for p in llama.glob("*.safetensors"))
    assert [r.save_directory.name for r in result.results.values()] == ["tiny-FP8-BLOCK", "tiny-W4A16"]
    single = quantize_job(make_job(str(llama), "W4A16"), tmp_path / "single")
    assert _files(result.results["W4A16"].save_directory) == _files(single.save_directory)
