"""The ``ptq`` console script: commands, exit codes, and what it does not import."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from factory import make_checkpoint

from ptq_core import cli
from ptq_core.schemes import DEFAULT_IGNORE


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_does_not_import_torch():
    proc = _run_python(
        "import sys\n"
        "from ptq_core import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'compressed_tensors', 'huggingface_hub', 'gradio') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "quantize" in proc.stdout and "HEAVY []" in proc.stdout


def test_core_imports_no_ui_code():
    proc = _run_python(
        "import sys, ptq_core\n"
        "ptq_core.model_free_ptq, ptq_core.quantize_to_hub, ptq_core.plan_checkpoint\n"
        "print('UI', sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'gradio_client', 'fastapi', 'action', 'space')))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "UI []" in proc.stdout


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("cli") / "llama", "llama", shards=2, split_fused=True)


def test_plan_prints_table_with_default_ignore(llama, capsys):
    assert cli.main(["plan", str(llama), "--scheme", "NVFP4A16"]) == 0
    out = capsys.readouterr().out
    assert "### Plan: NVFP4A16" in out
    assert "default: head (name)" in out
    assert "| q/k/v | 2 | 2 |" in out  # two layers, both split across the two shards
    for pattern in DEFAULT_IGNORE:
        assert f"`{pattern}`" in out


def test_quantize_writes_checkpoint_and_honours_no_default_ignore(llama, tmp_path, capsys):
    out_dir = tmp_path / "q"
    assert cli.main(["quantize", str(llama), str(out_dir), "-s", "FP8_DYNAMIC", "--no-default-ignore",
                     "--ignore", "lm_head", "-j", "2"]) == 0
    config = json.loads((out_dir / "config.json").read_text())["quantization_config"]
    assert config["ignore"] == ["lm_head"]
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.embed_tokens.weight_scale" in index  # embeddings quantized once the defaults are dropped
    assert "lm_head.weight_scale" not in index
    assert f"Wrote {out_dir}: " in capsys.readouterr().out


def test_ignore_is_read_by_the_core_parser_and_auto_workers_by_the_core(llama, tmp_path, monkeypatch):
    import ptq_core.workers

    monkeypatch.setattr(ptq_core.workers, "usable_cores", lambda: 3)
    args = cli.build_parser().parse_args(
        ["quantize", str(llama), str(tmp_path / "q"), "-s", "W4A16", "--no-default-ignore", "-j", "auto",
         "--device", "cpu", "--ignore", "lm_head, re:.*a{1,2}$", "--ignore", r"re:.*\.(q,k)_proj$"])
    job = cli._job(args, str(llama))
    assert job.ignore == ("lm_head", "re:.*a{1,2}$", r"re:.*\.(q,k)_proj$")  # the regexes' commas stay theirs
    assert job.workers == 3


def test_import_of_the_job_module_loads_no_compressed_tensors():
    # compressed-tensors pulls in transformers and torch.distributed (seconds): only a scheme needs it
    proc = _run_python("import sys, ptq_core.job, ptq_core.cli\n"
                       "print('CT', sorted(m for m in sys.modules if m.split('.')[0] in ('compressed_tensors', 'transformers')))")
    assert proc.returncode == 0, proc.stderr
    assert "CT []" in proc.stdout


def test_errors_exit_2_with_message(llama, tmp_path, capsys):
    assert cli.main(["quantize", str(llama), str(tmp_path / "x"), "--scheme", "NVFP4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: NVFP4 needs a calibrated input global scale, which needs calibration data. "
                          "Pick NVFP4A16 for a data-free run.")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("source", ["a" * 5000, "org/" + "m" * 5000])
def test_an_overlong_source_is_refused_by_name_not_with_an_oserror(source, capsys):
    assert cli.main(["plan", source, "--scheme", "FP8_BLOCK"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: source '")
    assert "(5000 characters) is too long to be a checkpoint folder" in err or "(5004 characters)" in err
    assert "File name too long" not in err and len(err) < 400


def test_a_revision_with_a_control_character_is_refused_before_any_request(capsys):
    assert cli.main(["plan", "org/Model", "-s", "FP8_BLOCK", "--revision", "main\r\nx"]) == 2
    assert "holds '\\r', which no branch, tag or commit has" in capsys.readouterr().err


def test_reindex_command(llama, tmp_path, capsys):
    assert cli.reindex_main([str(llama), str(tmp_path / "r"), "--num_workers", "2"]) == 0
    # q/k/v and gate/up in 2 layers; moved: k and v (2 layers x 2) + up (2 layers)
    assert f"Reindexed 4 fused sets into {tmp_path / 'r'}; moved 6 tensors." in capsys.readouterr().out


def test_demo_runs_the_embedded_job(tmp_path, capsys):
    assert cli.main(["demo", "--workdir", str(tmp_path), "--scheme", "W4A16"]) == 0
    out = capsys.readouterr().out
    assert "### Plan: W4A16" in out
    assert re.search(rf"Quantized \d+ tensors: .* \(\d+\.\d+x smaller\) in .* -> {re.escape(str(tmp_path))}", out)
    assert (tmp_path / "tiny-llama-W4A16" / "model.safetensors.index.json").is_file()
