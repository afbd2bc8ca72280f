"""The peer (llm-compressor) in its own virtual environment, created on first use.

Why a separate venv: llm-compressor pins its own compressed-tensors and
transformers, and must never become a dependency of this project. Why the
care with torch: a plain ``pip install llmcompressor`` may pull a different,
multi-GB torch build. So torch is settled first and then pinned through a
constraints file while llmcompressor is resolved:

* ``install`` (default when our torch is a CPU build): ``pip install
  torch==<our version>`` first, then pin exactly what got installed.
* ``share`` (default when our torch is a CUDA build): no torch install at all;
  a ``.pth`` file appends the site-packages that holds *our* torch to the
  venv's ``sys.path`` (after the venv's own packages, so the peer's own
  compressed-tensors and transformers still win). Works where our interpreter
  is itself a venv, unlike ``--system-site-packages``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

MARKER = "ptq-bench-peer.json"
LOG = "ptq-bench-install.log"
SHARE_PTH = "_ptq_bench_shared_torch.pth"
VERSIONS_SNIPPET = (
    "import json, importlib.metadata as m\n"
    "from llmcompressor import model_free_ptq\n"
    "names = ['llmcompressor', 'compressed-tensors', 'torch', 'transformers', 'safetensors']\n"
    "print(json.dumps({n: m.version(n) for n in names}))\n"
)


@dataclass
class PeerEnv:
    """What the report needs to say about the peer's environment."""

    python: Path
    versions: dict[str, str]
    torch_mode: str
    install_seconds: dict[str, float] = field(default_factory=dict)
    reused: bool = False


def default_torch_mode() -> str:
    return "share" if torch.version.cuda else "install"


def _public_version(version: str) -> str:
    """'2.13.0+cpu' -> '2.13.0': what a plain ``torch==`` request names."""
    return version.split("+", 1)[0]


def _run(cmd: list[str], log: Path) -> None:
    """Run one install step, appending its output to the install log; fail loudly."""
    with log.open("a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, env=_pip_env())
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"error: peer venv step failed ({shlex.join(cmd)}); log {log}:\n{tail}")


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # nothing of this project may leak into the peer
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _query(python: Path, code: str) -> str:
    out = subprocess.run([str(python), "-c", code], check=False, capture_output=True, text=True, env=_pip_env())
    if out.returncode != 0:
        raise SystemExit(f"error: {python} could not run a check:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def _link_our_torch(python: Path) -> None:
    purelib = Path(_query(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    torch_site = Path(torch.__file__).resolve().parent.parent
    (purelib / SHARE_PTH).write_text(f"{torch_site}\n")


def _make_venv(venv: Path, base_python: str, log: Path) -> list[str]:
    """Create the venv; return the pip command that installs into it.

    Some system Pythons (Debian without python3-venv) lack ensurepip; then the
    venv is made without pip and our own pip installs into it via ``--python``.
    """
    python = _venv_python(venv)
    try:
        _run([base_python, "-m", "venv", str(venv)], log)
        return [str(python), "-m", "pip"]
    except SystemExit:
        with log.open("a") as fh:
            fh.write("\n(retrying without pip: using the outer pip with --python)\n")
        _run([base_python, "-m", "venv", "--without-pip", "--clear", str(venv)], log)
        return [sys.executable, "-m", "pip", "--python", str(python)]


def _create(venv: Path, base_python: str, peer_version: str, torch_mode: str, pip_args: list[str]) -> PeerEnv:
    shutil.rmtree(venv, ignore_errors=True)
    venv.mkdir(parents=True)
    log = venv.parent / f"{venv.name}.{LOG}"  # outside the venv: survives its re-creation
    log.unlink(missing_ok=True)
    python = _venv_python(venv)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    pip = [*_make_venv(venv, base_python, log), "install", *pip_args]
    seconds["venv"] = time.perf_counter() - t

    t = time.perf_counter()
    if torch_mode == "share":
        _link_our_torch(python)
    else:
        _run([*pip, f"torch=={_public_version(torch.__version__)}"], log)
    seconds["torch"] = time.perf_counter() - t

    installed_torch = _query(python, "import importlib.metadata as m; print(m.version('torch'))")
    constraints = venv / "ptq-bench-constraints.txt"
    constraints.write_text(f"torch=={installed_torch}\n")
    t = time.perf_counter()
    _run([*pip, "-c", str(constraints), f"llmcompressor=={peer_version}"], log)
    seconds["llmcompressor"] = time.perf_counter() - t

    found = json.loads(_query(python, VERSIONS_SNIPPET))
    if found["torch"] != installed_torch:
        raise SystemExit(f"error: peer venv ended with torch {found['torch']}, expected {installed_torch}")
    env = PeerEnv(python, found, torch_mode, seconds)
    marker = {"peer_version": peer_version, "torch_mode": torch_mode, "versions": found, "seconds": seconds}
    (venv / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return env


def ensure_peer_env(
    venv: Path,
    *,
    peer_version: str,
    torch_mode: str,
    pip_args: list[str],
    base_python: str = sys.executable,
) -> PeerEnv:
    """Reuse the peer venv if its marker says it holds the wanted version, else (re)build it."""
    marker = venv / MARKER
    if marker.is_file() and _venv_python(venv).exists():
        data = json.loads(marker.read_text())
        if data.get("peer_version") == peer_version and data.get("torch_mode") == torch_mode:
            return PeerEnv(_venv_python(venv), data["versions"], torch_mode, data.get("seconds", {}), reused=True)
    print(f"creating peer venv (llmcompressor=={peer_version}, torch: {torch_mode}) in {venv}", file=sys.stderr)
    return _create(venv, base_python, peer_version, torch_mode, pip_args)
