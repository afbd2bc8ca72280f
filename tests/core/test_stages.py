"""ptq_core/stages.py: the progress stages, one name each for the core and every front end."""

from __future__ import annotations

import ast
from pathlib import Path

from ptq_core.stages import Stage

ROOT = Path(__file__).resolve().parents[2]


def test_a_stage_is_its_plain_name():
    assert Stage.DOWNLOAD == "download" and f"{Stage.UPLOAD}" == "upload" and str(Stage.CARD) == "card"
    assert {"quantize": 1}[Stage.QUANTIZE] == 1
    assert Stage.parse("commit") is Stage.COMMIT and Stage.parse("reticulate") is None


def test_only_transfers_count_bytes():
    assert {s for s in Stage if s.counts_bytes} == {Stage.DOWNLOAD, Stage.UPLOAD}
    assert all(s.label for s in Stage)


def test_every_stage_the_core_reports_is_a_stage():
    """Read from the source: a progress call with a literal stage name uses a known one."""
    reported = set()
    for path in (ROOT / "ptq_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str) and len(node.args) == 3
                    and "progress" in ast.unparse(node.func).lower() + ast.unparse(node.func)):
                reported.add(node.args[0].value)
    assert reported, "no progress call found: the scan is broken"
    assert reported <= {s.value for s in Stage}, reported - {s.value for s in Stage}


def test_the_front_ends_key_their_tables_by_stage():
    for path in ("action/main.py", "space/app.py"):
        text = (ROOT / path).read_text()
        assert "Stage." in text
        assert '"download": ' not in text and '"upload": ' not in text, f"{path} copies the stage names"
