"""The source side: a local folder or a Hub repo, inspected, and downloaded when needed.

One rule decides which files travel (``repo_files.select_repo_files``) and one
which of them are the shards (``sources.shards.select_shards``), for a folder and
for the Hub alike. Inspection reads metadata, file sizes and the
index, and pins the commit; the streamed Hub job then reads headers and tensor
bytes in place (``remote``), while ``model_free_ptq`` with a Hub id downloads
exactly the inspected files at the pinned commit, checked against the disk rule
of a downloaded job (:func:`disk_needed`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import constants
from ._http import HubHttp, check_repo_id, resolve_token
from .checkpoint import read_config
from .errors import DiskSpaceError, NoSafetensorsError, RepoNotFoundError
from .http_errors import short
from .repo_files import INDEX_NAME, WEIGHT_FILE_SUFFIXES, select_repo_files
from .sizes import format_bytes
from .sources.shards import SHARD_SUFFIX, select_shards, validate_shard_name

logger = logging.getLogger(__name__)

__all__ = [
    "ProgressCallback",
    "SourceState",
    "check_disk_space",
    "disk_needed",
    "download_checkpoint",
    "download_source",
    "inspect_source",
    "read_hub_config",
    "resolve_source",
]

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: the core's one progress protocol."""

_DOWNLOAD_WORKERS = 8


@dataclass(frozen=True)
class SourceState:
    """A Hub source pinned to one commit: the files to fetch and their sizes."""

    repo_id: str
    revision: str | None
    sha: str
    files: Mapping[str, int]  # path -> bytes
    card_data: Mapping[str, Any]
    weight_map: Mapping[str, str] | None = None  # the index's tensor -> shard, if the repo has one
    config: Mapping[str, Any] | None = None  # config.json, read once (it is the access probe)

    @property
    def shards(self) -> tuple[str, ...]:
        """The safetensors files of the checkpoint, by the folder's rule (``sources.shards.select_shards``)."""
        return tuple(select_shards(self.files, self.weight_map))

    @property
    def weight_bytes(self) -> int:
        return sum(size for path, size in self.files.items() if path.endswith(".safetensors"))

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def disk_needed(download_bytes: int, output_bytes: int) -> int:
    """Bytes a download-then-quantize job needs on one disk: the download, then the output beside it.

    Before planning, the source's weight bytes bound the output (quantized weights
    are smaller; copied tensors keep their size); with a plan, ``plan.size_after`` is exact.
    """
    return download_bytes + output_bytes


def check_disk_space(root: Path, download_bytes: int, output_bytes: int) -> None:
    """Refuse when ``disk_needed`` does not fit in ``root``'s free space.

    Raises:
        DiskSpaceError: with the sizes and the fix.
    """
    needed = disk_needed(download_bytes, output_bytes)
    free = shutil.disk_usage(root).free
    if needed > free:
        raise DiskSpaceError(
            f"Not enough free disk space in {root}: the job needs about {format_bytes(needed)} "
            f"({format_bytes(download_bytes)} download + {format_bytes(output_bytes)} output), only "
            f"{format_bytes(free)} is free. Free some space or pass work_dir= on a larger disk."
        )


# --- inspection --------------------------------------------------------------
def inspect_source(http: HubHttp, repo_id: str, revision: str | None) -> SourceState:
    """Metadata, file sizes and a read-access probe of a Hub source; no weight bytes.

    Raises:
        RepoNotFoundError / GatedRepoError / TokenError / HubNetworkError: no access.
        NoSafetensorsError: no safetensors weights at the repo root.
    """
    from huggingface_hub.errors import RevisionNotFoundError

    def revision_missing(err: Exception) -> RepoNotFoundError | None:
        if not isinstance(err, RevisionNotFoundError):
            return None
        return RepoNotFoundError(
            f"Revision {revision!r} was not found in {repo_id}: check the branch, tag or commit "
            f"at {http.endpoint}/{repo_id}/tree/main, or leave revision out for the main branch."
        )

    info = http.call(
        "read the source repo",
        http.api.model_info,
        repo_id,
        revision=revision,
        files_metadata=True,
        role="source",
        repo_id=repo_id,
        translate=revision_missing,
    )
    siblings = {s.rfilename: s.size for s in info.siblings or []}
    wanted = select_repo_files(siblings)
    if not any(path.endswith(".safetensors") for path in wanted):
        others = sorted(p for p in siblings if p.lower().endswith(WEIGHT_FILE_SUFFIXES))
        found = f" (it has {', '.join(others[:5])})" if others else ""
        raise NoSafetensorsError(
            f"{repo_id} has no *.safetensors weights at its root{found}. ptq-hub reads safetensors only; "
            "convert the checkpoint first (e.g. save_pretrained with safe_serialization) and push that."
        )
    sha = info.sha or revision or "main"
    missing = [path for path in wanted if siblings.get(path) is None]
    if missing:  # the server did not return sizes with model_info: ask paths-info
        entries = http.call(
            "read file sizes", http.api.get_paths_info, repo_id, missing, revision=sha, role="source", repo_id=repo_id
        )
        siblings.update({e.path: getattr(e, "size", 0) or 0 for e in entries})
    wanted, weight_map = _weights_from_index(http, repo_id, sha, wanted)
    config = probe_access(http, repo_id, sha, wanted)
    card_data = info.card_data.to_dict() if info.card_data is not None else {}
    if not card_data and "README.md" in siblings:
        card_data = _fetch_card_data(http, repo_id, sha)
    files = {path: int(siblings.get(path) or 0) for path in wanted}
    logger.info("Source %s@%s: %d files to download (%d bytes)", repo_id, sha[:10], len(files), sum(files.values()))
    return SourceState(repo_id=repo_id, revision=revision, sha=sha, files=files, card_data=card_data,
                       weight_map=weight_map, config=config)


def probe_access(http: HubHttp, repo_id: str, revision: str, paths: Sequence[str]) -> dict[str, Any] | None:
    """model_info is readable on gated repos, the files are not: read ``config.json`` (returned), or HEAD one file."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    if "config.json" in paths:  # the job needs it anyway: reading it is the probe
        return read_hub_config(http, repo_id, revision)
    probe = paths[0]
    try:
        http.call(
            "read files of the source repo",
            http.api.hf_hub_download,
            repo_id,
            probe,
            revision=revision,
            dry_run=True,
            role="source",
            repo_id=repo_id,
            passthrough=lambda err: isinstance(err, RemoteEntryNotFoundError),
        )
    except RemoteEntryNotFoundError:
        pass  # a missing probe file is fine: access was granted
    return None


def read_hub_config(http: HubHttp, repo_id: str, revision: str | None) -> dict[str, Any] | None:
    """The source's ``config.json`` (a few KB), so a plan knows an FP8-block source; None without one."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    with tempfile.TemporaryDirectory(prefix="ptq-config-") as tmp:
        try:
            path = http.call(
                "download config.json", http.api.hf_hub_download, repo_id, "config.json",
                revision=revision, local_dir=tmp, role="source", repo_id=repo_id,
                passthrough=lambda err: isinstance(err, RemoteEntryNotFoundError),
            )
        except RemoteEntryNotFoundError:
            return None
        return read_config(Path(path).parent)


def _fetch_card_data(http: HubHttp, repo_id: str, sha: str) -> dict[str, Any]:
    from huggingface_hub import ModelCard

    with tempfile.TemporaryDirectory(prefix="ptq-card-") as tmp:
        path = http.call(
            "download README.md", http.api.hf_hub_download, repo_id, "README.md",
            revision=sha, local_dir=tmp, role="source", repo_id=repo_id,
        )
        try:
            return ModelCard(Path(path).read_text(encoding="utf-8"), ignore_metadata_errors=True).data.to_dict()
        except (ValueError, UnicodeDecodeError) as err:  # a broken source card must not stop the run
            logger.warning("Could not parse the source model card of %s: %s", repo_id, short(err))
            return {}


def _weights_from_index(
    http: HubHttp, repo_id: str, sha: str, wanted: list[str]
) -> tuple[list[str], dict[str, str] | None]:
    """Only the shards the checkpoint uses (``sources.shards.select_shards``, the folder's rule).

    Repos such as Mistral's also hold ``consolidated.safetensors``, the same weights
    under other names; quantizing both would duplicate every tensor. Also returns the
    index's weight map (``None`` without an index, or with one the reader will refuse).

    Raises:
        UnsafePathError: a shard name that points outside the repo, before any download.
    """
    weight_map = _read_hub_index(http, repo_id, sha) if INDEX_NAME in wanted else None
    shards = set(select_shards(wanted, weight_map))
    for shard in shards:
        validate_shard_name(shard)
    return [p for p in wanted if not p.endswith(SHARD_SUFFIX) or p in shards], weight_map


def _read_hub_index(http: HubHttp, repo_id: str, sha: str) -> dict[str, str] | None:
    """The index's ``weight_map``; ``None`` when it is broken (the checkpoint reader reports it precisely)."""
    with tempfile.TemporaryDirectory(prefix="ptq-index-") as tmp:
        path = http.call(
            f"download {INDEX_NAME}", http.api.hf_hub_download, repo_id, INDEX_NAME,
            revision=sha, local_dir=tmp, role="source", repo_id=repo_id,
        )
        try:
            weight_map = json.loads(Path(path).read_text(encoding="utf-8"))["weight_map"]
            pairs = weight_map.items()
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
        return None
    return weight_map


# --- download ----------------------------------------------------------------
def download_source(http: HubHttp, state: SourceState, local_dir: Path, progress: ProgressCallback) -> None:
    """Download the inspected files at the pinned commit into ``local_dir``."""
    local_dir.mkdir(parents=True, exist_ok=True)
    total = state.total_bytes
    done = 0
    progress("download", 0, total)
    logger.info("Downloading %d files of %s", len(state.files), state.repo_id)
    quiet = {"tqdm_class": _silent_tqdm()} if constants.PTQ_DISABLE_PROGRESS else {}

    def fetch(path: str) -> str:
        return http.call(
            f"download {path}", http.api.hf_hub_download, state.repo_id, path,
            revision=state.sha, local_dir=local_dir, role="source", repo_id=state.repo_id, **quiet,
        )

    pool = ThreadPoolExecutor(max_workers=max(1, min(_DOWNLOAD_WORKERS, len(state.files))), thread_name_prefix="ptq-download")
    try:
        pending = {pool.submit(fetch, path): path for path in state.files}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                path = pending.pop(future)
                future.result()  # raises the translated error
                done += state.files[path]
                logger.debug("Downloaded %s", path)
                progress("download", done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    # hf_hub_download keeps resume metadata under local_dir/.cache; not part of the checkpoint.
    shutil.rmtree(local_dir / ".cache", ignore_errors=True)


def download_checkpoint(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    progress: ProgressCallback | None = None,
    local_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Download the files a quantized copy needs (``select_repo_files``) into a folder.

    This is what ``model_free_ptq`` does with a Hub id. The folder defaults to
    ``PTQ_HUB_CACHE/models/{org}--{name}/{commit}``, so a second run reuses it.

    Raises:
        RepoNotFoundError / GatedRepoError / TokenError / HubNetworkError: no access.
        NoSafetensorsError: the repo has no safetensors weights.
        DiskSpaceError: the files do not fit.
    """
    check_repo_id(repo_id, "source")
    http = HubHttp(resolve_token(token, required=False))
    state = inspect_source(http, repo_id, revision)
    root = Path(local_dir) if local_dir is not None else (
        Path(constants.PTQ_HUB_CACHE) / "models" / repo_id.replace("/", "--") / state.sha
    )
    root.mkdir(parents=True, exist_ok=True)
    check_disk_space(root, state.total_bytes, state.weight_bytes)  # model_free_ptq writes the output next
    download_source(http, state, root, progress or _no_progress)
    return root


def resolve_source(source: str, *, revision: str | None, token: str | None, progress: ProgressCallback | None) -> Path:
    """A local folder as is; anything else is a Hub repo id, downloaded (see ``download_checkpoint``)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    return download_checkpoint(source, revision=revision, token=token, progress=progress)


def _no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: nothing to show."""


def _silent_tqdm() -> type:
    """A tqdm class that draws nothing (``PTQ_DISABLE_PROGRESS``): CI logs stay readable."""
    from tqdm.auto import tqdm

    class _SilentTqdm(tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _SilentTqdm
