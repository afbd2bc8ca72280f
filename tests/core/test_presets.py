"""``presets.py``: compressed-tensors' presets as plain values, so planning a preset never imports it.

The table is generated (``scripts/gen_presets.py``); these tests regenerate it from the
installed compressed-tensors and resolve every preset both ways (from the table, and from
compressed-tensors' own objects), so an upgrade that changes a preset fails here, loudly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compressed_tensors.quantization import preset_name_to_scheme
from factory import make_checkpoint

from ptq_core import presets, schemes
from ptq_core.schemes import list_schemes, preset_table, resolve_config, weight_spec

ROOT = Path(__file__).resolve().parents[2]
DATA_FREE = [name for name, preset in presets.PRESETS.items() if preset["data_free"]]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_presets", ROOT / "scripts" / "gen_presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_table_is_what_the_installed_compressed_tensors_generates():
    assert (ROOT / "ptq_core" / "presets.py").read_text() == _generator().render(), (
        "ptq_core/presets.py is stale: run `python scripts/gen_presets.py` and review the diff"
    )
    assert presets.PRESETS == preset_table()  # the literal reads back as the values it was written from


def test_the_table_knows_the_presets_this_tool_can_and_cannot_produce():
    assert {"FP8_BLOCK", "W4A16", "NVFP4A16", "MXFP4A16"} <= set(DATA_FREE)
    assert not {"FP8", "NVFP4", "UNQUANTIZED"} & set(DATA_FREE)  # calibration or no weights


@pytest.mark.parametrize("observer", [None, "mse"])
@pytest.mark.parametrize("name", DATA_FREE)
def test_a_preset_resolves_from_the_table_as_from_compressed_tensors_objects(name, observer):
    fast = resolve_config(name.lower(), ignore=["lm_head"], observer=observer)
    assert fast.objects is None  # planned from the table
    slow = resolve_config(preset_name_to_scheme(name, []), ignore=["lm_head"], observer=observer)
    assert slow.objects is not None
    assert fast.name == name and list(fast.formats.values()) == list(slow.formats.values())
    assert list(fast.weights.values()) == list(slow.weights.values())
    assert list(fast.targets.values()) == list(slow.targets.values()) == [("Linear",)]
    assert fast.ignore == slow.ignore == ["lm_head"]
    # the objects built at first use are compressed-tensors' own, and give the same specs and config block
    (group, scheme), = fast.groups
    (_, other), = slow.groups
    assert group == name and scheme.model_dump() == other.model_dump()
    assert weight_spec(fast.weights[name], fast.formats[name]) == weight_spec(scheme, fast.formats[name])
    block = fast.quantization_config_dict()
    assert block["config_groups"][name] == slow.quantization_config_dict()["config_groups"]["config_group_0"]
    assert block["ignore"] == ["lm_head"]


def test_with_ignore_reaches_the_objects():
    resolved = resolve_config("W4A16", ignore=["lm_head"]).with_ignore(["re:.*gate$", "lm_head"])
    assert resolved.ignore == ["lm_head", "re:.*gate$"]
    assert resolved.config.ignore == resolved.quantization_config_dict()["ignore"] == ["lm_head", "re:.*gate$"]


def test_another_compressed_tensors_version_is_read_from_compressed_tensors(monkeypatch):
    assert schemes._presets() is presets.PRESETS
    monkeypatch.setattr(schemes, "_installed_version", lambda: "0.0.1")
    assert schemes._presets() is not presets.PRESETS
    assert schemes._presets() == presets.PRESETS  # computed from the installed package instead
    assert [s.name for s in list_schemes()] == DATA_FREE


def test_a_refused_preset_says_why_through_compressed_tensors():
    from ptq_core.errors import CalibrationRequiredError

    with pytest.raises(CalibrationRequiredError, match="FP8_DYNAMIC"):
        resolve_config("fp8")


_PROBE = """
import json, sys
from ptq_core.job import make_job
from ptq_core.job_plan import plan_job
planned = plan_job(make_job(sys.argv[1], sys.argv[2]), __import__("pathlib").Path(sys.argv[1]))
planned.to_markdown()
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"compressed_tensors", "transformers"})
planned.plan.resolved.quantization_config_dict()  # writing the output does load it: the probe can see it
print(json.dumps([loaded, "compressed_tensors" in sys.modules, len(planned.plan.quantized)]))
"""


@pytest.mark.parametrize("scheme", ["FP8_BLOCK", "W4A16"])
def test_planning_a_16_bit_checkpoint_leaves_compressed_tensors_unloaded(tmp_path, scheme):
    folder = make_checkpoint(tmp_path / "tiny", "llama", num_hidden_layers=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _PROBE, str(folder), scheme], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded, loaded_after_config, quantized = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"planning {scheme} imported {loaded}"
    assert loaded_after_config and quantized > 0


def test_a_table_that_disagrees_with_compressed_tensors_stops_before_config_json_is_written():
    """The kernels read the table's weights and config.json the objects': a stale table must not split them."""
    from dataclasses import replace

    from ptq_core.errors import SchemeNotSupportedError

    resolved = resolve_config("W4A16")
    assert resolved.config.config_groups  # the table and compressed-tensors agree
    stale = replace(resolved, weights={"W4A16": {**resolved.weights["W4A16"], "group_size": 64}})
    with pytest.raises(SchemeNotSupportedError, match="regenerate it"):
        stale.config  # noqa: B018 - the property builds and checks the objects
