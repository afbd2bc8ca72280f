"""Regenerate ``rotation.json``: llm-compressor 0.15's ``SpinQuantConverter`` on ``rotation_cases``.

The peer's converter is one published file,
``vllm-project/llm-compressor: src/llmcompressor/entrypoints/model_free/spinquant.py`` (0.15,
the version that defaults MLA models to R1 only). It is loaded by path, with no llmcompressor
install: its imports are compressed-tensors, pydantic, loguru and safetensors. Setup, outside
the repository::

    python3 -m venv ~/.cache/ptq-hub/spinquant-venv
    # share the project's torch + compressed-tensors + transformers instead of installing them:
    echo /work/main/.venv/lib/python3.11/site-packages \
        > ~/.cache/ptq-hub/spinquant-venv/lib/python3.11/site-packages/_shared.pth
    ~/.cache/ptq-hub/spinquant-venv/bin/pip install pydantic loguru   # if the shared site lacks them
    # put the peer's spinquant.py at ~/.cache/ptq-hub/spinquant-venv/peer/spinquant.py
    ~/.cache/ptq-hub/spinquant-venv/bin/python tests/golden/make_rotation_golden.py [PATH/TO/spinquant.py]

Each case's checkpoint is built by transformers (``tests/zoo.py``), the peer's
``SpinQuantConverter.from_pretrained(path, ignore=..., mapping=...)`` is made from it, and its
``process`` runs shard by shard, as the peer's ``model_free_ptq`` does. The file keeps, per
case, each output tensor's dtype, shape and sha256, ``update_model_config``'s answer for the
source's config, the rotations the peer chose, and the source's digest. A rerun writes the
same file.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rotation_cases import GOLDEN_FILE, build_source, cases, rotate_checkpoint, source_digest  # noqa: E402

DEFAULT_PEER = Path.home() / ".cache/ptq-hub/spinquant-venv/peer/spinquant.py"


def load_peer(path: Path):
    spec = importlib.util.spec_from_file_location("peer_spinquant", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    peer = load_peer(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PEER)
    torch.set_num_threads(1)
    records = {}
    for case in cases():
        with tempfile.TemporaryDirectory() as tmp:
            path = build_source(case, Path(tmp))
            kwargs = {"ignore": list(case.ignore), **case.peer_options}
            if case.attn_in is not None:
                kwargs["mapping"] = peer.SpinQuantConverterMapping(attn_in=list(case.attn_in))
            converter = peer.SpinQuantConverter.from_pretrained(str(path), **kwargs)
            config = json.loads((path / "config.json").read_text())
            updated = converter.update_model_config(json.loads(json.dumps(config)))
            records[case.id] = {
                "source_digest": source_digest(path),
                "rotations": list(converter.rotations),
                "tie_word_embeddings": [updated.get("tie_word_embeddings"),
                                        (updated.get("text_config") or {}).get("tie_word_embeddings")],
                "tensors": rotate_checkpoint(path, converter.process),
            }
        print(f"{case.id}: {len(records[case.id]['tensors'])} tensors, {records[case.id]['rotations']}")
    versions = {n: md.version(n) for n in ("compressed-tensors", "torch", "transformers", "safetensors")}
    versions["peer"] = "llm-compressor 0.15 spinquant.py (vllm-project/llm-compressor@a5a768fb)"
    (HERE / GOLDEN_FILE).write_text(json.dumps({"versions": versions, "cases": records}, indent=1, sort_keys=True) + "\n")
    print(f"{len(records)} cases -> {HERE / GOLDEN_FILE}")


if __name__ == "__main__":
    main()
