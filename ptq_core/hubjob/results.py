"""What a Hub job returns (``HubResult``), how a job is cut into parts (``PartsPlan``), and its stage clock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..parts import Footprint
from ..plan import Plan
from ..sizes import format_bytes
from ..source import ProgressCallback

__all__ = ["HubResult", "PartsPlan", "StageClock"]


@dataclass(frozen=True)
class HubResult:
    """What ``quantize_to_hub`` (or one part, or the finalize step) made.

    Attributes:
        repo_id: the new repo (``user/Model-FP8-BLOCK``).
        repo_url: its URL on the Hub.
        commit_sha: the one commit on ``main`` holding the checkpoint and the card; for a
            part, the head of the staging branch after its shards were staged.
        scheme: the canonical scheme name (``FP8_BLOCK``).
        size_before: bytes of the source safetensors weights.
        size_after: bytes of the quantized safetensors weights.
        ratio: compression ratio ``size_before / size_after`` (2.0 = half the bytes).
        timings: seconds per stage: ``plan``; ``download``, ``quantize``, ``upload`` (they
            overlap: each from its first to its last activity); ``card``, ``commit``; ``total``.
        plan: the plan (which tensor got which scheme, what was skipped and why).
        card: the README.md text that was pushed ("" for a part).
        part: ``(i, k)`` when only part ``i`` of ``k`` was staged; ``None`` for a finished model.
        branch: the staging branch a part was staged on.
        peak_disk: the most bytes of output shards this run held on local disk at once.
        footprint: the planned peaks and budgets of the streamed run (``footprint.fits``).
    """

    repo_id: str
    repo_url: str
    commit_sha: str
    scheme: str
    size_before: int
    size_after: int
    ratio: float
    timings: dict[str, float] = field(default_factory=dict)
    plan: Plan | None = None
    card: str = ""
    part: tuple[int, int] | None = None
    branch: str | None = None
    peak_disk: int = 0
    footprint: Footprint | None = None

    def to_markdown(self) -> str:
        """A Markdown table (repo, scheme, sizes, ratio, time per stage) for job summaries."""
        rows = [
            ("repo", f"[{self.repo_id}]({self.repo_url})"),
            ("scheme", f"`{self.scheme}`"),
            ("size before", format_bytes(self.size_before)),
            ("size after", format_bytes(self.size_after)),
            ("ratio", f"{self.ratio:.2f}x smaller"),
            ("commit", f"`{self.commit_sha[:10]}`" if self.commit_sha else "-"),
        ]
        if self.part is not None:
            rows.append(("part", f"{self.part[0]}/{self.part[1]} staged on branch `{self.branch}`"))
        if self.peak_disk:
            rows.append(("peak disk", format_bytes(self.peak_disk)))
        rows += [(f"time: {stage}", f"{seconds:.1f} s") for stage, seconds in self.timings.items()]
        lines = ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PartsPlan:
    """``ptq plan --parts K``: the output shards of each part, balanced by bytes moved.

    Attributes:
        plan: the job's plan.
        parts: per part, its output shards in plan order.
        costs: per output shard, bytes read plus bytes written.
        revision: the pinned source commit (``None`` for a local folder): pass it to every
            part (``--revision``) so they all quantize the same commit.
        fingerprint: the job's fingerprint (names the staging branch); ``None`` for a folder.
        footprint: the planned peaks of a streamed run of it (what the ``auto`` Jobs flavor is sized by).
    """

    plan: Plan
    parts: tuple[tuple[str, ...], ...]
    costs: dict[str, int]
    revision: str | None = None
    fingerprint: str | None = None
    footprint: Footprint | None = None

    def matrix(self) -> dict[str, list[dict[str, Any]]]:
        """A GitHub Actions matrix: ``{"include": [{"part": "1/3", "revision": ..., ...}, ...]}``."""
        k = len(self.parts)
        include = []
        for i, shards in enumerate(self.parts, start=1):
            moved = sum(self.costs[s] for s in shards)
            entry: dict[str, Any] = {"part": f"{i}/{k}", "shards": len(shards), "bytes": moved}
            if self.revision is not None:
                entry["revision"] = self.revision
            include.append(entry)
        return {"include": include}

    def to_markdown(self) -> str:
        k = len(self.parts)
        lines = [f"### Parts: {k}", "", "| part | output shards | bytes moved |", "|---|---:|---:|"]
        for i, shards in enumerate(self.parts, start=1):
            lines.append(f"| {i}/{k} | {len(shards)} | {format_bytes(sum(self.costs[s] for s in shards))} |")
        if self.revision:
            lines += ["", f"source revision: `{self.revision}` (pass `--revision {self.revision}` to every part)"]
        return "\n".join(lines) + "\n"


class StageClock:
    """The progress callback, forwarded, recording when each stage first and last reported."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self._progress = progress
        self._started = time.monotonic()
        self._spans: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            span = self._spans.setdefault(stage, [now, now])
            span[1] = now
            if self._progress is not None:
                self._progress(stage, done, total)

    def timings(self, plan_seconds: float) -> dict[str, float]:
        spans = {s: last - first for s, (first, last) in self._spans.items()
                 if s in ("download", "quantize", "upload", "card", "commit")}
        return {"plan": plan_seconds, **spans, "total": plan_seconds + time.monotonic() - self._started}
