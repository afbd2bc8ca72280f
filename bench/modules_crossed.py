#!/usr/bin/env python3
"""How many core modules a Hub job's finalize step crosses, and how often it goes back and forth.

Method: a tiny Llama checkpoint is seeded on the loopback Hub server
(``tests/hub_server.py``), part 1 of 1 is staged (``quantize_to_hub(part="1/1")``),
then ``finalize_hub_job(parts=1)`` runs under ``sys.setprofile`` (main thread, where
finalize runs). The source is followed: only calls into a ``ptq_core`` module that
receive it count, as an argument equal to the source repo id, or an object whose
``source``, ``repo_id`` or ``job.source`` is it (a ``Job``, ``SourceState``,
``PreparedJob``...). Its caller is the nearest ``ptq_core`` frame below it (frames of
huggingface_hub, logging... are skipped); a call whose module differs from its
caller's is a crossing. Printed:

* modules: distinct core modules entered;
* crossings: calls from one core module into another;
* re-entries: crossings into a module already entered before;
* upward: crossings into a module of a higher layer (callbacks; ``tests/test_layers.LAYERS``);
* per module, how often it was entered (``_http`` above all).

``--no-leaves`` leaves out layer-0/1 modules (errors, constants, sizes, redact...);
``--pairs`` also prints each (caller -> callee) crossing with its count.
Run from the repository root: ``python bench/modules_crossed.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.mkdtemp(prefix="ptq-modules-"))
# before huggingface_hub and ptq_core read them at import
os.environ.update(HF_HOME=str(TMP / "hf"), HF_HUB_CACHE=str(TMP / "hf" / "hub"), HF_HUB_DISABLE_XET="1",
                  PTQ_HUB_CACHE=str(TMP / "cache"), PTQ_DISABLE_PROGRESS="1")
for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
    os.environ.pop(name, None)
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factory import make_checkpoint  # noqa: E402
from hub_server import HubServer  # noqa: E402
from test_layers import LAYERS  # noqa: E402

SOURCE, TOKEN = "bob/tiny", "hf_test_alice"


def _module(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name.removeprefix("ptq_core.") if name.startswith("ptq_core.") else None


def _carries(value: object, source: str) -> bool:
    if isinstance(value, str):
        return value == source
    job = getattr(value, "job", None)
    return any(getattr(v, name, None) == source for v in (value, job) for name in ("source", "repo_id"))


def _receives(frame, source: str) -> bool:
    code = frame.f_code
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return any(_carries(frame.f_locals.get(name), source) for name in names)


def trace(fn, source: str) -> list[tuple[str, str]]:
    """(caller module, callee module) of every crossing that carries ``source`` while ``fn()`` runs."""
    crossings: list[tuple[str, str]] = []

    def profile(frame, event, arg) -> None:
        if event != "call":
            return
        callee = _module(frame)
        if callee is None or not _receives(frame, source):
            return
        back = frame.f_back
        while back is not None and _module(back) is None:
            back = back.f_back
        caller = _module(back) if back is not None else "<caller>"
        if caller != callee:
            crossings.append((caller, callee))

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return crossings


def report(crossings: list[tuple[str, str]], *, leaves: bool) -> None:
    def layer(module: str) -> int:
        return LAYERS.get(module, LAYERS.get(module.split(".")[0], 99))

    kept = [(a, b) for a, b in crossings if leaves or layer(b) > 1]
    entered = Counter(b for _, b in kept)
    upward = sum(1 for a, b in kept if a != "<caller>" and layer(b) > layer(a))
    print(f"modules: {len(entered)}  crossings: {len(kept)}  re-entries: {len(kept) - len(entered)}  upward: {upward}")
    print("entered: " + ", ".join(f"{m} {n}" for m, n in entered.most_common()))
    if "--pairs" in sys.argv:
        print("crossings: " + ", ".join(f"{a}->{b} {n}" for (a, b), n in Counter(kept).most_common()))


def main() -> None:
    import ptq_core
    from ptq_core import constants

    with HubServer() as hub:
        constants.HF_ENDPOINT = hub.endpoint
        os.environ["HF_ENDPOINT"] = hub.endpoint
        import huggingface_hub.constants as hf_constants

        hf_constants.ENDPOINT = hub.endpoint
        checkpoint = make_checkpoint(TMP / "tiny", "llama", shards=4, num_hidden_layers=4)
        hub.seed_repo(SOURCE, {p.name: p for p in checkpoint.iterdir() if p.is_file()})
        ptq_core.quantize_to_hub(SOURCE, "FP8_BLOCK", token=TOKEN, part="1/1", work_dir=TMP / "work")
        hub.requests_log.clear()
        crossings = trace(lambda: ptq_core.finalize_hub_job(SOURCE, "FP8_BLOCK", parts=1, token=TOKEN,
                                                            work_dir=TMP / "work"), SOURCE)
        config_reads = [m for m, p, _ in hub.requests_log if p.split("?")[0].endswith(f"{SOURCE.split('/')[1]}/config.json")
                        or "/config.json" in p and SOURCE in p]
    leaves = "--no-leaves" not in sys.argv
    report(crossings, leaves=leaves)
    print(f"config.json requests during finalize: {Counter(config_reads)}")


if __name__ == "__main__":
    main()
