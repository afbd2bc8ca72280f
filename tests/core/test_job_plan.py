"""``job_plan.plan_job``: one plan per job, from a folder or a pinned Hub source; config.json read once."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import make_checkpoint

import ptq_core
from ptq_core.errors import InvalidOptionError
from ptq_core.job import make_job
from ptq_core.job_plan import plan_job
from ptq_core.parts import split_parts

SOURCE = "bob/tiny"
ALICE = "hf_test_alice"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("llama") / "tiny", "llama", shards=4, num_hidden_layers=4)


def test_a_folder_plan_carries_its_parts_budgets_and_footprint(llama, tmp_path):
    job = make_job(str(llama), "FP8_BLOCK", part="2/3", disk_budget="10GB")
    planned = plan_job(job, llama, work_root=tmp_path)
    assert planned.source is None and planned.revision is None and planned.config["model_type"] == "llama"
    assert planned.parts == split_parts(planned.plan, 3)
    assert planned.budgets.disk == planned.footprint.disk_budget == 10 * 10**9
    assert planned.footprint.fits
    assert planned.summary()["peak_disk"] == planned.footprint.peak_disk
    assert "| disk: output shards awaiting upload |" in planned.to_markdown()
    assert "| disk: output shards awaiting upload |" not in planned.plan.to_markdown()


def test_more_parts_than_shards_is_refused(llama):
    with pytest.raises(InvalidOptionError, match="use between 1 and 4 parts"):
        plan_job(make_job(str(llama), "FP8_BLOCK"), llama, parts=5)


def test_a_hub_job_reads_config_json_once(hub, llama, tmp_path):
    hub.seed_repo(SOURCE, {p.name: p for p in llama.iterdir() if p.is_file()})
    result = ptq_core.quantize_to_hub(SOURCE, "FP8_BLOCK", token=ALICE, work_dir=tmp_path)
    reads = [(method, path) for method, path, _ in hub.requests_log
             if path.split("?")[0].endswith("/config.json") and f"/{SOURCE}/" in path]
    # one download (huggingface_hub's own HEAD for the metadata, then the GET), not a probe and two downloads
    assert [method for method, _ in reads] == ["HEAD", "GET"], reads
    assert result.footprint is not None and result.footprint.fits
