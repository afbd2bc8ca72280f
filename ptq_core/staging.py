"""The staging branch: where finished output shards wait, resumably, for the one commit on ``main``.

A streamed job commits each finished output shard to a branch of the target repo,
``ptq-staging-<fingerprint>`` (``parts.fingerprint``: source, pinned commit,
scheme and config, ignore list, observer, tool version), together with a small
manifest per part (``.ptq/part-I-of-K.json``: the job's identity, the shards the
part owns, and per staged shard its size and sha256). ``main`` is not touched
until the final step, which makes exactly **one** commit on ``main`` copying
every shard from the branch (``CommitOperationCopy`` with ``src_revision``: no
byte is uploaded again) plus the index, ``config.json``, side files and card,
then deletes the branch.

Why a branch: a rerun (after a crash, a lost runner, a network drop) finds the
branch, trusts the manifests of its own fingerprint, and skips the shards they
list; parts on other machines stage into the same branch independently; and the
``main`` of the target shows no partial model at any time.

Commits are rate-limited on the Hub (128 per hour per repo on a free account):
shards are pre-uploaded (LFS) as soon as they are written, but committed at most
once every ``commit_interval`` seconds (all pending shards in one commit), the
first one too. A shard pre-uploaded and not yet committed when a run dies is
redone by the rerun, whose upload then sends nothing (LFS storage is
content-addressed); after any other failure, pending shards are committed first.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from . import _http
from ._http import HubHttp
from .errors import HubNetworkError, MissingPartError, PartMismatchError, StagingError
from .http_errors import status_of, transient_reason

logger = logging.getLogger(__name__)

__all__ = [
    "BRANCH_PREFIX",
    "FINGERPRINT_TRAILER",
    "Manifest",
    "ShardStager",
    "StagedShard",
    "Staging",
    "finalized_commit",
    "landed_commit",
    "manifest_path",
    "staging_branch",
]

BRANCH_PREFIX = "ptq-staging-"
MANIFEST_DIR = ".ptq"
FINGERPRINT_TRAILER = "ptq-hub-job:"
"""A line of the final commit's description: how a rerun recognises a job that already finished."""

# Identity fields a part must share with the job that combines it, with their words.
_IDENTITY_FIELDS = (
    ("source", "source repo"),
    ("source_sha", "source revision"),
    ("scheme", "scheme"),
    ("ignore", "ignore list"),
    ("observer", "observer"),
    ("quantization_config", "quantization config"),
    ("tool_version", "ptq-hub version"),
)


def staging_branch(fingerprint: str) -> str:
    return f"{BRANCH_PREFIX}{fingerprint}"


def manifest_path(part: int, parts: int) -> str:
    return f"{MANIFEST_DIR}/part-{part}-of-{parts}.json"


@dataclass(frozen=True)
class StagedShard:
    """One output shard on the staging branch: its size and the sha256 of its bytes."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What one part staged: the job's identity, the shards it owns, those already staged."""

    identity: Mapping[str, Any]
    fingerprint: str
    part: int
    parts: int
    planned: tuple[str, ...]
    staged: Mapping[str, StagedShard] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(shard in self.staged for shard in self.planned)

    @property
    def path(self) -> str:
        return manifest_path(self.part, self.parts)

    def to_json(self) -> str:
        return json.dumps(
            {
                "fingerprint": self.fingerprint,
                "part": self.part,
                "parts": self.parts,
                "identity": dict(self.identity),
                "planned": list(self.planned),
                "staged": {name: {"size": s.size, "sha256": s.sha256} for name, s in sorted(self.staged.items())},
                "complete": self.complete,
            },
            indent=2,
            sort_keys=True,
        ) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Raises ``StagingError`` for a manifest that is not one."""
        try:
            data = json.loads(text)
            return cls(
                identity=dict(data["identity"]),
                fingerprint=str(data["fingerprint"]),
                part=int(data["part"]),
                parts=int(data["parts"]),
                planned=tuple(str(s) for s in data["planned"]),
                staged={str(n): StagedShard(int(v["size"]), str(v["sha256"])) for n, v in data["staged"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StagingError(
                f"{where} is not a ptq-hub part manifest ({err}); delete the staging branch and rerun the parts."
            ) from err


def mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """``["scheme: FP8_BLOCK here, NVFP4A16 in the part", ...]`` for each identity field that differs."""
    lines = []
    for key, words in _IDENTITY_FIELDS:
        if expected.get(key) != found.get(key):
            mine, theirs = _show(expected.get(key)), _show(found.get(key))
            lines.append(f"{words}: {mine} here, {theirs} in the part")
    return lines


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


class Staging:
    """The staging branch of one job (one fingerprint) in the target repo."""

    def __init__(self, http: HubHttp, repo_id: str, fingerprint: str, identity: Mapping[str, Any]) -> None:
        self.http = http
        self.repo_id = repo_id
        self.fingerprint = fingerprint
        self.identity = dict(identity)
        self.branch = staging_branch(fingerprint)

    # --- branch -------------------------------------------------------------------
    def branches(self) -> dict[str, str]:
        """Every staging branch of the target (this job's and others'): name -> head commit."""
        refs = self._call("list the branches of", self.http.api.list_repo_refs, self.repo_id)
        return {b.name: b.target_commit for b in refs.branches if b.name.startswith(BRANCH_PREFIX)}

    def head(self) -> str | None:
        """This job's staging branch head, or ``None`` when it does not exist."""
        return self.branches().get(self.branch)

    def ensure(self) -> None:
        """Create the branch from ``main`` unless another part already did."""
        self._call("create a staging branch in", self.http.api.create_branch, self.repo_id, branch=self.branch,
                   exist_ok=True)

    def delete(self) -> None:
        self._call("delete the staging branch of", self.http.api.delete_branch, self.repo_id, branch=self.branch)
        logger.info("Deleted staging branch %s of %s", self.branch, self.repo_id)

    # --- manifests -----------------------------------------------------------------
    def manifests(self, revision: str, branch: str | None = None) -> dict[str, Manifest]:
        """The part manifests at ``revision`` of ``branch`` (default: this job's), by path."""
        files = self._call("list the staging branch of", self.http.api.list_repo_files, self.repo_id, revision=revision)
        paths = sorted(f for f in files if f.startswith(f"{MANIFEST_DIR}/") and f.endswith(".json"))
        if not paths:
            return {}
        where = f"{self.repo_id}@{branch or self.branch}"
        with tempfile.TemporaryDirectory(prefix="ptq-manifest-") as tmp:
            found = {}
            for path in paths:
                local = self._call(f"download {path} from", self.http.api.hf_hub_download, self.repo_id, path,
                                   revision=revision, local_dir=tmp)
                found[path] = Manifest.from_json(Path(local).read_text(encoding="utf-8"), f"{path} of {where}")
        return found

    def staged(self, manifests: Iterable[Manifest]) -> dict[str, StagedShard]:
        """Shards staged by any manifest of this job: output bytes are the same whichever part made them."""
        staged: dict[str, StagedShard] = {}
        for manifest in manifests:
            if manifest.fingerprint == self.fingerprint and not mismatch(self.identity, manifest.identity):
                staged.update(manifest.staged)
        return staged

    def check_parts(self, revision: str | None, parts: int, shards: Sequence[str]) -> dict[str, StagedShard]:
        """All ``parts`` manifests present, complete, of this job, covering ``shards``; the staged shards.

        Raises:
            MissingPartError: a part has no manifest here (and none under another job either),
                or it is incomplete, or the parts together miss an output shard.
            PartMismatchError: a part was staged by a different job (another source revision,
                scheme, ignore list, observer or version): names the part and each difference.
            StagingError: a staged shard's size or sha256 is not its manifest's.
        """
        found = self.manifests(revision) if revision is not None else {}
        staged: dict[str, StagedShard] = {}
        for i in range(1, parts + 1):
            path = manifest_path(i, parts)
            manifest = found.get(path)
            if manifest is None:
                self._missing_part(i, parts, found)
            differences = mismatch(self.identity, manifest.identity)
            if manifest.fingerprint != self.fingerprint or differences:
                raise PartMismatchError(
                    f"Part {i}/{parts} on {self.repo_id}@{self.branch} was staged by a different job: "
                    f"{'; '.join(differences) or 'another fingerprint'}. Rerun part {i}/{parts} with the same options."
                )
            if not manifest.complete:
                left = [s for s in manifest.planned if s not in manifest.staged]
                raise MissingPartError(
                    f"Part {i}/{parts} is incomplete on {self.repo_id}@{self.branch}: {len(left)} of its "
                    f"{len(manifest.planned)} output shard(s) are not staged ({', '.join(left[:3])}). "
                    f"Rerun part {i}/{parts}; it resumes where it stopped."
                )
            staged.update(manifest.staged)
        uncovered = [s for s in shards if s not in staged]
        if uncovered:
            raise MissingPartError(
                f"The {parts} staged part(s) do not cover output shard(s) {', '.join(uncovered[:3])}: the parts "
                f"were split for another checkpoint. Rerun every part with --part I/{parts}."
            )
        assert revision is not None  # parts were found, so the branch exists
        self._verify_files(revision, {s: staged[s] for s in shards})
        return {s: staged[s] for s in shards}

    def _missing_part(self, part: int, parts: int, found: Mapping[str, Manifest]) -> NoReturn:
        path = manifest_path(part, parts)
        for branch, head in sorted(self.branches().items()):
            if branch == self.branch:
                continue
            other = self.manifests(head, branch).get(path)
            if other is not None:
                differences = mismatch(self.identity, other.identity) or ["another fingerprint"]
                raise PartMismatchError(
                    f"Part {part}/{parts} was staged by a different job (branch {branch} of {self.repo_id}): "
                    f"{'; '.join(differences)}. Rerun part {part}/{parts} with the same source revision, scheme, "
                    "ignore list and observer as the others (pin the revision with --revision)."
                )
        others = sorted({f"{m.part}/{m.parts}" for m in found.values()})
        seen = f" (found part(s) {', '.join(others)})" if others else ""
        raise MissingPartError(
            f"Part {part}/{parts} has not been staged: no {path} on {self.repo_id}@{self.branch}{seen}. "
            f"Run `ptq run {self.identity.get('source')} --scheme {self.identity.get('scheme')} --part {part}/{parts}` "
            "first (with the same options), then finalize again."
        )

    def _verify_files(self, revision: str, staged: Mapping[str, StagedShard]) -> None:
        infos = self._call("read staged shard sizes in", self.http.api.get_paths_info, self.repo_id, list(staged),
                           revision=revision)
        by_path = {info.path: info for info in infos}
        for name, shard in staged.items():
            info = by_path.get(name)
            size = getattr(info, "size", None)
            lfs = getattr(info, "lfs", None)
            sha = getattr(lfs, "sha256", None)
            if info is None or size != shard.size or (sha is not None and sha != shard.sha256):
                raise StagingError(
                    f"Staged shard {name} on {self.repo_id}@{self.branch} is not what its manifest records "
                    f"({shard.size} bytes, sha256 {shard.sha256[:12]}); delete the branch and rerun the job."
                )

    # --- the final commit ------------------------------------------------------------
    def commit_to_main(
        self,
        revision: str | None,
        shards: Iterable[str],
        files: Mapping[str, Path | bytes],
        deletions: Iterable[str],
        *,
        parent_commit: str | None,
        uploaded: Iterable[Any] = (),
        commit_message: str,
        commit_description: str,
    ) -> str:
        """The one commit on ``main``: ``shards`` copied from ``revision`` of the branch, ``files`` added.

        ``uploaded`` are operations of shards already pre-uploaded and not yet committed
        to the branch (a one-machine job's last ones): the commit names them by sha256.
        ``parent_commit`` is the head of ``main`` the job verified: a commit made since
        makes the Hub refuse this one (``MainMovedError``) instead of it overwriting
        anything. A commit whose answer is lost is never sent again blindly: ``main`` is
        read first, and a commit carrying this job's fingerprint ends the matter.

        Returns:
            the new commit's sha (or that of this job's commit found on ``main`` after a
            lost answer).

        Raises:
            MainMovedError: ``main`` is no longer at ``parent_commit`` and holds no commit of this job.
            HubNetworkError: the commit failed on every attempt and did not land.
        """
        from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete

        operations: list[Any] = [
            CommitOperationCopy(src_path_in_repo=s, path_in_repo=s, src_revision=revision) for s in shards
        ]
        operations += list(uploaded)
        operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=v if isinstance(v, bytes) else str(v))
                       for p, v in files.items()]
        operations += [CommitOperationDelete(path_in_repo=p) for p in deletions]
        description = f"{commit_description}\n\n{FINGERPRINT_TRAILER} {self.fingerprint}"
        delays = _http._RETRY_DELAYS  # the same schedule as every other request, read at call time
        for attempt in range(len(delays) + 1):
            try:
                info = self._call("commit to", self.http.api.create_commit, self.repo_id, operations,
                                  commit_message=commit_message, commit_description=description,
                                  parent_commit=parent_commit, retry=False, passthrough=_is_conflict)
                return str(info.oid)
            except HubNetworkError as err:  # no answer, or a 5xx: did it land anyway?
                landed = landed_commit(self.http, self.repo_id, self.fingerprint, since=parent_commit)
                if landed is not None:
                    logger.info("The answer to the commit on main was lost; the commit landed: %s", landed[:10])
                    return landed
                if attempt == len(delays):
                    raise HubNetworkError(self.http.redact(
                        f"Could not commit to ({self.repo_id}) on {self.http.endpoint}: "
                        f"{transient_reason(err.__cause__ or err)}. Gave up after {attempt + 1} attempts "
                        "(main was read after each: the commit had not landed); check the connection or the Hub "
                        "status (https://status.huggingface.co) and retry."
                    )) from err
                logger.warning("The commit on main of %s did not land (%s); retry %d/%d in %g s", self.repo_id,
                               err, attempt + 1, len(delays), delays[attempt])
                time.sleep(delays[attempt])
            except Exception as err:  # 409/412: main moved since parent_commit
                if not _is_conflict(err):
                    raise
                landed = landed_commit(self.http, self.repo_id, self.fingerprint, since=parent_commit)
                if landed is not None:  # not ours: this attempt was refused, so another run's
                    logger.warning("Another run of this same job published it on main of %s first, at commit %s; "
                                   "this run's commit was not needed.", self.repo_id, landed[:10])
                    return landed
                raise MainMovedError(
                    f"main of {self.repo_id} moved since commit {str(parent_commit)[:10]}; the commit was refused."
                ) from err
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.http.call(what, fn, *args, role="target", repo_id=self.repo_id, **kwargs)


def finalized_commit(http: HubHttp, repo_id: str, fingerprint: str) -> str | None:
    """The commit of ``main`` that finished this job, if its head is one (reruns do nothing then)."""
    commits = http.call("list the commits of", http.api.list_repo_commits, repo_id, role="target", repo_id=repo_id)
    if not commits:
        return None
    return commits[0].commit_id if _carries(commits[0], fingerprint) else None


def landed_commit(http: HubHttp, repo_id: str, fingerprint: str, *, since: str | None) -> str | None:
    """A commit of this job on ``main`` made after ``since`` (``None``: the whole history), or ``None``."""
    commits = http.call("list the commits of", http.api.list_repo_commits, repo_id, role="target", repo_id=repo_id)
    for commit in commits:
        if since is not None and commit.commit_id == since:
            return None
        if _carries(commit, fingerprint):
            return str(commit.commit_id)
    return None


def _carries(commit: Any, fingerprint: str) -> bool:
    return f"{FINGERPRINT_TRAILER} {fingerprint}" in f"{commit.title}\n{commit.message}"


def _is_conflict(err: Exception) -> bool:
    """The Hub's answer to a commit whose ``parent_commit`` is no longer the branch head."""
    return status_of(err) in (409, 412)


class MainMovedError(StagingError):
    """``main`` moved since the commit the job verified; the final commit was refused (internal signal)."""


class ShardStager:
    """Pre-uploads finished output shards and commits them, with the part's manifest, to the branch.

    ``upload`` returns once the shard's bytes are safe on the Hub (LFS pre-upload
    confirmed, or, for a file the Hub stores inline, held in memory until the
    commit), so the caller may delete the local file. Pending shards are committed
    when ``commit_interval`` has passed since the last commit (``commit_if_due``), and
    by ``commit``.
    """

    def __init__(
        self,
        staging: Staging,
        manifest: Manifest,
        *,
        commit_interval: float,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.staging = staging
        self.manifest = manifest
        self.commit_interval = commit_interval
        self._on_commit = on_commit or (lambda staged: None)
        self._pending: list[tuple[Any, StagedShard]] = []
        self._last_commit = time.monotonic()  # the first commit waits an interval too
        self._lock = threading.Lock()  # guards the pending list
        self._commit_lock = threading.Lock()  # one commit at a time: each writes the whole manifest

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def upload(self, shard: str, path: Path) -> None:
        from huggingface_hub import CommitOperationAdd

        st = self.staging
        op = CommitOperationAdd(path_in_repo=shard, path_or_fileobj=str(path))
        st._call(f"upload {shard} to", st.http.api.preupload_lfs_files, st.repo_id, [op], revision=st.branch)
        # preupload_lfs_files empties the operation's content once its LFS upload is confirmed;
        # a file the Hub takes inline (small) is sent with the commit, so keep its bytes.
        if op.path_or_fileobj != b"":
            op = CommitOperationAdd(path_in_repo=shard, path_or_fileobj=path.read_bytes())
        staged = StagedShard(size=op.upload_info.size, sha256=op.upload_info.sha256.hex())
        with self._lock:
            self._pending.append((op, staged))
        logger.debug("Uploaded %s (%d bytes)", shard, staged.size)

    def commit_if_due(self) -> None:
        """Commit the pending shards when the commit interval has passed since the last commit.

        Never waits: when another thread is committing, that commit takes the pending shards.
        """
        if not self._commit_lock.acquire(blocking=False):
            return
        try:
            if self._pending and time.monotonic() - self._last_commit >= self.commit_interval:
                self._commit()
        finally:
            self._commit_lock.release()

    def pending(self) -> dict[str, tuple[Any, StagedShard]]:
        """Uploaded, not yet committed shards: name -> (commit operation, staged shard)."""
        with self._lock:
            return {op.path_in_repo: (op, shard) for op, shard in self._pending}

    def commit(self) -> None:
        """Commit the pending shards and the updated manifest (also when nothing is pending: a complete part)."""
        with self._commit_lock:
            self._commit()

    def _commit(self) -> None:
        from huggingface_hub import CommitOperationAdd

        with self._lock:
            pending, self._pending = self._pending, []
        staged = dict(self.manifest.staged)
        staged.update({op.path_in_repo: shard for op, shard in pending})
        manifest = Manifest(self.manifest.identity, self.manifest.fingerprint, self.manifest.part,
                            self.manifest.parts, self.manifest.planned, staged)
        ops = [op for op, _ in pending]
        ops.append(CommitOperationAdd(path_in_repo=manifest.path, path_or_fileobj=manifest.to_json().encode()))
        st = self.staging
        names = ", ".join(op.path_in_repo for op, _ in pending) or "no new shard"
        try:
            st._call("commit staged shards to", st.http.api.create_commit, st.repo_id, ops, revision=st.branch,
                     commit_message=f"Stage part {manifest.part}/{manifest.parts}: {names}")
        except BaseException:
            with self._lock:  # still uploaded and uncommitted: a later commit (or the final one) takes them
                self._pending[:0] = pending
            raise
        self.manifest = manifest
        self._last_commit = time.monotonic()
        logger.info("Staged %s on %s@%s", names, st.repo_id, st.branch)
        self._on_commit(len(pending))
