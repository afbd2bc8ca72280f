"""The docs say what the code does: ARCHITECTURE's layer table and public API, and every quoted default.

* docs/ARCHITECTURE.md's layer table lists exactly tests/test_layers.py's ``LAYERS`` (same
  modules, same layer numbers), and every module it names exists; its diagram names existing
  modules, the hubjob phases, and code (``make_job``, ``DiskGate``...) some core module defines.
* Every name in its "Public API" block (and the "One request value" block) is importable from
  ``ptq_core``; a name shown with a signature has those parameters (names, kinds, literal
  defaults), and a constant shown with a literal value has that value.
* Every number or default the docs quote for a constant (timeouts, budgets, queue sizes,
  limits, the default scheme, the Space's progress bar, the Action's input defaults) is
  rendered here from the code and must appear in the doc word for word: change one side and
  this fails until the other follows.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from test_layers import LAYERS, _module_path

import ptq_core
from ptq_core import constants, job, matching, parts, remote, stream, workers
from ptq_core._http import _RETRY_DELAYS
from ptq_core.hubjob import stage

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a ``## `` line) up to the next ``## `` heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


# --- the layer table --------------------------------------------------------------
def _doc_module_name(cell: str) -> str:
    """``sources/shards.py`` -> ``sources.shards``; ``hubjob/__init__.py`` -> ``hubjob``."""
    parts_ = cell.removesuffix(".py").split("/")
    return ".".join(parts_[:-1] if parts_[-1] == "__init__" else parts_)


def documented_layers(text: str) -> dict[str, int]:
    """module -> layer from the table's rows; an empty layer cell continues the row above."""
    layers: dict[str, int] = {}
    layer = None
    for line in _section(text, "Layers").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not line.startswith("|") or cells[0] in ("layer", "---"):
            continue
        if cells[0]:
            layer = int(re.match(r"\d+", cells[0])[0])
        for module in re.findall(r"`([\w/]+\.py)`", cells[1]):
            assert _doc_module_name(module) not in layers, f"{module} has two rows in the layer table"
            layers[_doc_module_name(module)] = layer
    return layers


def test_layer_table_is_the_layers_test():
    documented = documented_layers(ARCHITECTURE.read_text())
    assert set(documented) - set(LAYERS) == set(), "rows in docs/ARCHITECTURE.md for modules not in LAYERS"
    assert set(LAYERS) - set(documented) == set(), "modules in LAYERS without a row in docs/ARCHITECTURE.md"
    wrong = {m: (documented[m], LAYERS[m]) for m in LAYERS if documented[m] != LAYERS[m]}
    assert not wrong, f"(docs, LAYERS) layer numbers differ: {wrong}"


def test_layer_table_names_existing_modules():
    missing = [m for m in documented_layers(ARCHITECTURE.read_text()) if not _module_path(m).is_file()]
    assert not missing, f"docs/ARCHITECTURE.md lists modules that do not exist: {missing}"


def test_layer_table_parser_reads_shared_rows_and_subpackages():
    """The parser itself: an empty layer cell continues, several modules per row, ``__init__``."""
    text = ("\n## Layers\n| layer | module | owns |\n|---|---|---|\n| 0 | `errors.py` | x |\n"
            "| | `sources/__init__.py` | y |\n| 2 leaves | `a.py`, `hubjob/b.py` | z |\n## Next\n")
    assert documented_layers(text) == {"errors": 0, "sources": 0, "a": 2, "hubjob.b": 2}


# --- the diagram -------------------------------------------------------------------
# Capitalized words of the diagram that are prose, not code.
_DIAGRAM_PROSE = {"CLI", "Action", "Space", "Python", "Hub", "HTTP", "Range", "ONE"}


def _diagram() -> str:
    return re.search(r"```\n(.*?)```", ARCHITECTURE.read_text(), re.DOTALL)[1]


def _core_attribute(name: str) -> bool:
    """Some core module defines ``name`` (``Footprint.check`` for ``footprint.check()``)."""
    owner, _, attr = name.partition(".")
    for module in LAYERS:
        loaded = importlib.import_module(f"ptq_core.{module}")
        if not attr and hasattr(loaded, owner):
            return True
        if attr and hasattr(getattr(loaded, owner[:1].upper() + owner[1:], None), attr):
            return True
    return False


def test_the_diagram_names_existing_modules_phases_and_code():
    diagram = _diagram()
    modules = {_doc_module_name(m) for m in re.findall(r"\b([\w/]+\.py)\b", diagram)}
    assert modules and modules <= set(LAYERS), modules - set(LAYERS)
    phases = re.findall(r"^\s+(\w+):", diagram, re.MULTILINE)
    assert phases == ["prepare", "stage", "finalize"] and all(f"hubjob.{p}" in LAYERS for p in phases)
    code = {w for w in re.findall(r"[A-Za-z_]\w*(?:\.\w+)?(?=\(\))|\b[a-z]+_\w+\b(?!\.py)|\b[A-Z]\w*\b", diagram)
            if w not in _DIAGRAM_PROSE}
    assert {"make_job", "plan_job", "JobPlan", "DiskGate", "Uploader", "footprint.check"} <= code
    missing = sorted(w for w in code if not _core_attribute(w))
    assert not missing, f"the diagram names code that no core module defines: {missing}"


# --- the public API -----------------------------------------------------------------
def api_entries(block: str) -> list[tuple[str, str | None, str]]:
    """(name, parameter text or None, what follows) for every unindented, uncommented line of a block.

    A call spans lines until its parentheses close; what follows is ``= value``, ``: type``
    or the rest of the line.
    """
    entries = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        match = re.match(r"([A-Za-z_]\w*)", line)
        if not match:  # blank, comment or continuation
            continue
        name, rest = match[1], line[match.end():]
        if not rest.startswith("("):
            entries.append((name, None, rest.split("#")[0].strip()))
            continue
        while rest.count("(") > rest.count(")"):
            rest += "\n" + lines[i].split("#")[0]
            i += 1
        depth = 0
        for end, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
        entries.append((name, rest[1:end], rest[end + 1:].split("#")[0].strip()))
    return entries


def _documented_parameters(params: str) -> list[inspect.Parameter] | None:
    """The parameters a ``name(params)`` line declares; None when it is an example call (literals)."""
    try:
        node = ast.parse(f"def f({params}):\n    pass").body[0]
    except SyntaxError:
        return None
    args = node.args
    result = []
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, defaults):
        result.append(_parameter(arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default))
    if args.vararg:
        result.append(inspect.Parameter(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        result.append(_parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY, default))
    if args.kwarg:
        result.append(inspect.Parameter(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return result


_NO_LITERAL = object()


def _parameter(name: str, kind, default: ast.expr | None) -> inspect.Parameter:
    if default is None:
        return inspect.Parameter(name, kind)
    try:
        value = ast.literal_eval(default)
    except ValueError:
        value = _NO_LITERAL  # a name or an expression: only its presence is compared
    return inspect.Parameter(name, kind, default=value)


def _api_blocks() -> list[str]:
    text = ARCHITECTURE.read_text()
    return _code_blocks(_section(text, "Public API (all importable from `ptq_core`)"), "python") + \
        _code_blocks(_section(text, "One request value"), "python")


def _entries() -> list[tuple[str, str | None, str]]:
    return [entry for block in _api_blocks() for entry in api_entries(block)]


def test_public_api_block_lists_names():
    names = [name for name, _, _ in _entries()]
    assert len(names) >= 30 and "make_job" in names and "quantize_to_hub" in names, names


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e[0])
def test_public_api_name_is_importable_and_matches(entry):
    name, params, rest = entry
    assert hasattr(ptq_core, name), f"docs/ARCHITECTURE.md lists ptq_core.{name}, which does not exist"
    value = getattr(ptq_core, name)
    if params is not None:
        documented = _documented_parameters(params)
        if documented is None:
            return  # an example call such as canonical_scheme_name("fp8_block")
        actual = list(inspect.signature(value).parameters.values())
        assert [(p.name, p.kind) for p in documented] == [(p.name, p.kind) for p in actual], \
            f"{name}: docs {[str(p) for p in documented]} != code {[str(p) for p in actual]}"
        for doc, code in zip(documented, actual):
            if doc.default is not inspect.Parameter.empty and doc.default is not _NO_LITERAL:
                assert doc.default == code.default, f"{name}({doc.name}=...): docs say {doc.default!r}, code {code.default!r}"
    elif rest.startswith("="):
        try:
            literal = ast.literal_eval(rest[1:].strip())
        except (ValueError, SyntaxError):
            return  # a type alias written out
        assert value == literal, f"docs say {name} = {literal!r}, the code has {value!r}"


def test_signature_check_catches_a_renamed_parameter():
    """The check bites: a documented signature with a wrong name or default differs from the code."""
    ((name, params, _),) = api_entries("make_job(source, scheme=None, *, colour=None) -> Job\n")
    documented = _documented_parameters(params)
    assert name == "make_job" and [p.name for p in documented] == ["source", "scheme", "colour"]
    assert [p.name for p in documented] != list(inspect.signature(ptq_core.make_job).parameters)[:3]
    assert _documented_parameters('"fp8_block"') is None


# --- quoted numbers and defaults ----------------------------------------------------
def _env_default(path: Path, variable: str) -> object:
    """The default a module gives an environment variable: the literal second argument of the
    call that reads it (``_env_seconds("PTQ_X", 10.0)``), evaluated without builtins."""
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == variable):
            return eval(compile(ast.Expression(node.args[1]), str(path), "eval"), {"__builtins__": {}})
    raise AssertionError(f"{variable} is not read in {path}")


def _space_bar() -> dict[str, tuple[float, float]]:
    """space/app.py's progress table (``_BAR``), read from the source: importing the Space loads gradio."""
    for node in ast.parse((ROOT / "space" / "app.py").read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_BAR":
            return {key.attr: ast.literal_eval(value) for key, value in zip(node.value.keys, node.value.values)}
    raise AssertionError("space/app.py has no _BAR table")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}"


def _iec(n: int) -> str:
    """Bytes as the docs write a power-of-two size: ``64 KiB``, ``16 MiB``, ``4 GiB``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _mutations() -> int:
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return len(module.MUTATIONS)


def _bar_claim() -> str:
    bar = _space_bar()
    middle = [bar[s] for s in ("DOWNLOAD", "QUANTIZE", "WRITE", "UPLOAD")]
    tail = [bar[s] for s in ("STAGE", "CARD", "COMMIT")]
    return (f"validate {_percent(bar['VALIDATE'][0])}–{_percent(bar['VALIDATE'][1])} %; download, quantize "
            f"\"tensor i/n\", write and upload, which overlap\nin a streamed job, {_percent(min(s for s, _ in middle))}–"
            f"{_percent(max(e for _, e in middle))} %, the bar showing the furthest point; stage, card, commit "
            f"{_percent(min(s for s, _ in tail))}–{_percent(max(e for _, e in tail))} %")


def _requirements() -> str:
    """README's "Requires ..." line, rendered from pyproject.toml's lower (and exclusive upper) bounds."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in project["dependencies"]}

    def lower(name: str) -> str:
        return re.search(r">=\s*([\d.]+)", deps[name])[1]

    ct_low = ".".join(lower("compressed-tensors").split(".")[:2])
    major, minor = re.search(r"<\s*(\d+)\.(\d+)", deps["compressed-tensors"]).groups()
    return (f"Requires Python {project['requires-python'].replace('>=', '>= ')}, torch >= {lower('torch')}, "
            f"compressed-tensors {ct_low}-{major}.{int(minor) - 1}, huggingface_hub >= {lower('huggingface_hub')}.")


_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
_PERIODS = {60.0: "once a minute", 3600.0: "once an hour"}

CORE = ROOT / "ptq_core"
# (doc, the claim rendered from the code): the rendered text must appear in the doc.
QUOTED: list[tuple[str, Callable[[], str]]] = [
    ("docs/ARCHITECTURE.md", lambda: f'DEFAULT_SCHEME = "{constants.DEFAULT_SCHEME}"'),
    ("README.md", lambda: f"`DEFAULT_SCHEME` (`{constants.DEFAULT_SCHEME}`)"),
    ("docs/action.md", lambda: f"| `scheme` | `{constants.DEFAULT_SCHEME}` (`ptq_core.DEFAULT_SCHEME`"),
    ("docs/ARCHITECTURE.md", lambda: "(`PTQ_HTTP_CONNECT_TIMEOUT`, "
        f"{_env_default(CORE / 'constants.py', 'PTQ_HTTP_CONNECT_TIMEOUT'):g} s)"),
    ("docs/ARCHITECTURE.md", lambda: f"(`PTQ_HTTP_READ_TIMEOUT`, {_env_default(CORE / 'constants.py', 'PTQ_HTTP_READ_TIMEOUT'):g} s)"),
    ("docs/ARCHITECTURE.md", lambda: f"(`PTQ_STALL_MIN_BYTES` per `PTQ_STALL_WINDOW`, "
        f"{_iec(_env_default(CORE / 'constants.py', 'PTQ_STALL_MIN_BYTES'))} per "
        f"{_env_default(CORE / 'constants.py', 'PTQ_STALL_WINDOW'):g} s)"),
    ("docs/ARCHITECTURE.md", lambda: f"`PTQ_RATE_LIMIT_MAX_WAIT` ({_env_default(CORE / 'constants.py', 'PTQ_RATE_LIMIT_MAX_WAIT'):g} s)"),
    ("docs/ARCHITECTURE.md", lambda: f"(and at most {parts.LOCAL_SHARDS} at once)"),
    ("docs/ARCHITECTURE.md", lambda: f"(gaps < {_iec(remote.RANGE_GAP)}, spans <= {_iec(remote.RANGE_SPAN)})"),
    ("docs/ARCHITECTURE.md", lambda: f"as {_iec(remote.RANGE_PIECE)} pieces on "
        f"{stage._RANGE_THREADS} connections"),
    ("docs/ARCHITECTURE.md", lambda: f"a job has at most {job.MAX_PARTS} parts"),
    ("docs/ARCHITECTURE.md", lambda: f"the RAM budget ({_percent(parts._RAM_SHARE)}% of the available memory"),
    ("docs/ARCHITECTURE.md", lambda: f"free VRAM // {_iec(workers.VRAM_PER_WORKER)}"),
    ("docs/ARCHITECTURE.md", lambda: f"retries {len(_RETRY_DELAYS)} times after "
        + ", ".join(f"{d:g}" for d in _RETRY_DELAYS) + " s"),
    ("README.md", lambda: f"its free memory // {_iec(workers.VRAM_PER_WORKER)}"),
    ("README.md", lambda: f"over {job.MAX_REVISION_LENGTH} characters) and ignore lists of more than "
        f"{matching.MAX_IGNORE_ENTRIES:,} entries"),
    ("README.md", lambda: f"it plants {_mutations()} one-line bugs"),
    ("docs/action.md", lambda: f"at most {job.MAX_REVISION_LENGTH} characters"),
    ("docs/action.md", lambda: f"one per {_iec(workers.VRAM_PER_WORKER)} of its free memory"),
    ("docs/space.md", lambda: f"| `PTQ_SPACE_QUEUE_SIZE` | {_env_default(ROOT / 'space' / 'app.py', 'PTQ_SPACE_QUEUE_SIZE')} |"),
    ("docs/space.md", lambda: f"| `PTQ_SPACE_GPU_SECONDS` | {_env_default(ROOT / 'space' / 'app.py', 'PTQ_SPACE_GPU_SECONDS')} |"),
    ("docs/space.md", _bar_claim),
    ("README.md", _requirements),
    ("README.md", lambda: "vLLM ({}, pinned once in".format(
        (ROOT / "tools" / "vllm-version.txt").read_text().split("vllm==")[1].split()[0])),
    ("docs/ARCHITECTURE.md", lambda: f"by one of {_WORDS[stream.UPLOAD_THREADS]} upload threads (`Uploader`)"),
    ("docs/ARCHITECTURE.md", lambda: f"at most {_PERIODS[stage.STAGE_COMMIT_INTERVAL]} per repo"),
]


@pytest.mark.parametrize("doc,claim", QUOTED, ids=[f"{d}:{i}" for i, (d, _) in enumerate(QUOTED)])
def test_quoted_value_comes_from_the_code(doc, claim):
    text = (ROOT / doc).read_text()
    rendered = claim()
    flat = re.sub(r"\s+", " ", text)  # a claim may wrap across lines in the doc
    assert re.sub(r"\s+", " ", rendered) in flat, f"{doc} should say, from the code: {rendered!r}"


def test_default_disk_budget_is_what_the_docs_say(tmp_path, monkeypatch):
    """'90% of the free space minus min(1 GiB, 10%)' (ARCHITECTURE, action.md), computed on two disks."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text() + (ROOT / "docs" / "action.md").read_text()
    assert text.count("90% of the work folder's free space minus min(1 GiB, 10%)") == 1
    assert "90% of the free space minus min(1 GiB, 10%)" in text
    for free in (100 << 30, 5 << 30):
        usage = type("Usage", (), {"free": free})
        monkeypatch.setattr(parts.shutil, "disk_usage", lambda _folder, usage=usage: usage)
        assert parts.default_disk_budget(tmp_path) == int(free * 0.90) - min(1 << 30, free // 10)


def test_action_input_defaults_are_documented_as_in_action_yml():
    """docs/action.md's inputs table: a default written as one literal is action.yml's default
    (an empty boolean input reads as ``false``, which the table may say)."""
    inputs = yaml.safe_load((ROOT / "action.yml").read_text())["inputs"]
    rows = re.findall(r"^\| `([\w-]+)` \|\s*([^|]*?)\s*\|", _section((ROOT / "docs" / "action.md").read_text(), "Inputs"),
                      re.MULTILINE)
    assert {name for name, _ in rows} == set(inputs)
    for name, cell in rows:
        literal = re.fullmatch(r"`([^`{]*)`(?: \(.*\))?", cell.strip())
        actual = str(inputs[name].get("default", ""))
        if literal is None:
            continue  # words: "free space", "a GPU when there is one"
        assert literal[1] == actual or (actual == "" and literal[1] == "false"), \
            f"docs/action.md says {name} defaults to {literal[1]!r}, action.yml to {actual!r}"
