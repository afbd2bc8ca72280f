"""A Hub-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It speaks the routes the real ``huggingface_hub`` client (2.x) calls, so tests
drive ``HfApi(endpoint=server.endpoint, token=...)``, ``hf_hub_download`` and
``snapshot_download`` over real HTTP with no monkeypatching of the client::

    server = HubServer().start()
    api = HfApi(endpoint=server.endpoint, token="hf_test_alice")
    api.create_repo("alice/tiny")
    ...
    server.stop()

State lives in memory: ``(repo_type, repo_id) -> repo`` with every commit's full
file snapshot (so old commit ids stay resolvable: ``snapshot_download`` pins the
commit it read from ``model_info``), its branches, and its LFS storage.

Behaviour copied from the Hub (and relied on by the client):

* Errors carry ``X-Error-Code``/``X-Error-Message`` and a JSON ``{"error": ...}``
  body, so ``hf_raise_for_status`` raises its own typed errors. The header is
  always explicit: the client's fallback "401 on a repo URL means
  RepositoryNotFound" only matches ``https://`` URLs, never this ``http://`` one.
* A missing repo and a private repo the caller cannot read look the same:
  401 + ``RepoNotFound``. A gated repo's metadata (info, tree) is readable by
  anyone; its files need a grant: 401 (anonymous) or 403 (signed in) +
  ``GatedRepo``.
* ``POST /api/repos/create`` makes an initial commit holding a ``.gitattributes``
  (as the Hub does); ``seed_repo`` stores exactly the files it is given.
* LFS: ``preupload`` answers ``lfs`` for files of ``lfs_threshold`` bytes or more
  (10 MiB, as the Hub) and ``regular`` for smaller ones (sent inline, base64, in
  the NDJSON commit). The LFS batch endpoint
  (``POST {repo}.git/info/lfs/objects/batch``) gives an upload action only for
  objects this repo does not store yet (content-addressed by sha256: what makes
  a re-run skip what already arrived), basic transfer up to ``lfs_part_size``,
  multipart above it; the PUT (or the multipart completion) stores the object
  only if its sha256 and size match; ``verify`` answers 404 for a missing
  object. A commit's ``lfsFile`` must name an object this repo stores (uploaded,
  or already in one of its commits: what ``CommitOperationCopy`` sends), and an
  inline file of ``lfs_threshold`` bytes or more is refused. Upload URLs are on
  the "storage host" (``http://localhost:PORT``, another host for the client, as
  S3 is for the Hub): they take no token.
* Whether a file is LFS is decided when it is committed, as git-lfs does: files
  committed as ``lfsFile``, files whose name matches the Hub's default
  ``.gitattributes`` patterns (``*.safetensors``, ``*.bin``, ...) however they were
  sent, and seeded files of ``lfs_threshold`` bytes or more. They are reported as
  LFS (``lfs`` in tree/paths-info/siblings, ``X-Linked-Etag`` = sha256 and
  ``X-Linked-Size`` on resolve) and sit in the repo's LFS storage. With
  ``lfs_redirect=True`` their resolve answers 302 to the storage host, as the Hub
  redirects to its CDN (Range honoured there, no token needed).
* No Xet: no ``X-Xet-Hash`` header, no ``xetHash`` in listings, and the Xet
  token routes answer 501. The client (``huggingface_hub`` 2.x) picks Xet for
  uploads on its own side whenever ``hf_xet`` is installed, whatever the server
  says, so a test that uploads LFS files must set ``HF_HUB_DISABLE_XET`` (the
  ``hub`` fixture in conftest.py does).
* Branches: ``create_branch`` (from any revision), ``delete_branch`` (not
  ``main``), commits and preuploads to a branch, downloads/listings/commit
  history at a branch or commit, ``list_repo_refs``.
* A commit is applied all-or-nothing; ``parentCommit`` must be the branch head.
* A README.md with invalid YAML front matter is refused both by
  ``/api/validate-yaml`` and by the commit route (400), like the Hub.

For tests and benchmarks: ``fail_requests`` injects errors (before or after the
request is processed), ``on_request`` runs another writer (``commit_files``,
``delete_branch``) just before the Nth matching request, ``stats`` counts bytes, LFS PUTs and commits, and
``upload_bandwidth``/``download_bandwidth`` cap the bytes per second of request
and response bodies over all connections together (one token bucket each way).
``python tests/hub_server.py --help`` serves in its own process (``main``), with
the counters as JSON at ``STATS_PATH``.

Hugging Face Jobs (``/api/jobs``, ``tests/hub_jobs_server.py``, ``server.jobs``): create,
inspect, logs (streamed), cancel; each job's command really runs as a local process against
this server. Collections (``/api/collections``, ``tests/hub_collections_server.py``): create,
get, add an item.

Not implemented (404 or 400): pull requests, tags, Xet transfers, cross-repo
LFS duplication, buckets, spaces runtime.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import hmac
import itertools
import json
import mimetypes
import pathlib
import re
import secrets
import signal
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from hub_collections_server import CollectionsApi
from hub_jobs_server import JobsApi

DEFAULT_USERS: dict[str, str] = {
    "hf_test_alice": "alice",
    "hf_test_bob": "bob",
    "hf_test_readonly": "carol",
}
"""token -> username used when ``HubServer(users=None)``."""

DEFAULT_ORGS: dict[str, tuple[str, ...]] = {"ptq-org": ("alice",)}
"""org -> members used when ``HubServer(orgs=None)``."""

DEFAULT_READ_ONLY_TOKENS: frozenset[str] = frozenset({"hf_test_readonly"})
"""Tokens whose role is ``read``: ``whoami`` says so and every write gets 403."""

# The Hub's default .gitattributes for a new model repo tracks these with LFS.
LFS_PATTERNS: tuple[str, ...] = (
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gguf",
    "*.gz",
    "*.h5",
    "*.joblib",
    "*.lfs.*",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pickle",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "*.tar",
    "*.tflite",
    "*.tgz",
    "*.wasm",
    "*.xz",
    "*.zip",
    "*.zst",
    "*tfevents*",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
"""Default ``lfs_threshold``: the Hub refuses regular (git) files of 10 MiB or more."""
LFS_PART_SIZE = 5 * 1024**3
"""Default ``lfs_part_size``: objects above it use the multipart transfer (S3 takes at most 5 GiB per PUT)."""
LFS_UPLOAD_PATH = "/lfs-upload/"
"""Path prefix of LFS upload URLs (basic PUT, multipart parts): ``fail_requests(LFS_UPLOAD_PATH, ...)``."""
LFS_CDN_PATH = "/lfs-cdn/"
"""Path prefix of the redirect target of LFS downloads when ``lfs_redirect`` is on."""
STATS_PATH = "/_test/stats"
"""``GET`` it for ``stats`` as JSON: how a benchmark reads a server that runs in another process."""
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HEX_RE = re.compile(r"^[0-9a-f]{7,40}$")
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
# Same expression as huggingface_hub.repocard.REGEX_YAML_BLOCK.
_YAML_BLOCK_RE = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
_BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Branch names the Hub accepts: git ref rules, minus what would clash with revision parsing.
_BRANCH_RE = re.compile(r"^(?!refs/)(?!.*\.\.)(?!.*//)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}(?<![./])$")
_IO_CHUNK = 64 * 1024  # fewest bytes per read/write (and per bandwidth-limiter step) of a body
_IO_CHUNK_MAX = 1 << 20  # most bytes per step: 10 ms of traffic at 100 MB/s, not one step per 64 KiB


# --------------------------------------------------------------------------- state


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Blob(bytearray):
    """File content whose hashes are computed once (commit snapshots share blobs); never changed once made.

    A ``bytearray`` so that a request body is read straight into the blob an LFS upload
    stores (``_Handler._read``): copying 100 MB bodies into ``bytes`` cost more server CPU
    (fresh pages) than their SHA-256.
    """

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self).hexdigest()

    @functools.cached_property
    def git_oid(self) -> str:
        return _git_blob_oid(self)

    @functools.cached_property
    def lfs_pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self)}\n".encode()

    @functools.cached_property
    def pointer_oid(self) -> str:
        """The git blob id of the LFS pointer: what git, and the Hub, store for an LFS file."""
        return _git_blob_oid(self.lfs_pointer)


def _matches_lfs_pattern(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch(name, pattern) for pattern in LFS_PATTERNS)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class _Commit:
    oid: str
    parent: str | None  # oid of the previous commit on the branch it was made on
    message: str
    description: str
    author: str
    date: datetime
    files: dict[str, _Blob]  # full snapshot of the tree at this commit
    lfs: frozenset[str]  # paths stored as LFS pointers (decided when committed, as in git)
    changed: list[str]
    deleted: list[str]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    gated: str | bool  # False, "auto" or "manual"
    granted: set[str]
    created_at: datetime
    commits: dict[str, _Commit] = field(default_factory=dict)  # every commit by oid, oldest first
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> head commit oid
    lfs: dict[str, _Blob] = field(default_factory=dict)  # this repo's LFS storage: sha256 -> content

    @property
    def owner(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def head(self) -> _Commit:
        return self.commits[self.branches["main"]]

    def history(self, commit: _Commit) -> list[_Commit]:
        """``commit`` and its ancestors, oldest first."""
        chain = [commit]
        while chain[-1].parent:
            chain.append(self.commits[chain[-1].parent])
        return chain[::-1]


@dataclass
class HubStats:
    """What the server received and sent since it started (or since ``reset``).

    ``lfs_puts`` counts every PUT to an LFS upload URL (a basic upload or one
    multipart part), failed and injected ones included; ``lfs_bytes`` the request
    body bytes those PUTs carried, per object sha256 (what a resumed upload must
    keep small); ``lfs_stored`` how many times each object was actually stored
    (a PUT of an object the repo already holds stores nothing). ``commits`` counts
    commits made through the commit API per ``(repo_id, branch)``.
    """

    bytes_in: int = 0  # request-body bytes read, every route
    bytes_out: int = 0  # response-body bytes written, every route
    lfs_puts: int = 0
    lfs_bytes: dict[str, int] = field(default_factory=dict)
    lfs_stored: dict[str, int] = field(default_factory=dict)
    commits: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def lfs_bytes_total(self) -> int:
        return sum(self.lfs_bytes.values())


@dataclass
class _Failure:
    path_substring: str
    remaining: int
    status: int
    method: str | None
    after: bool  # process the request, then answer the error (a lost response)

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.path_substring in path and self.method in (None, method)


@dataclass
class _Hook:
    """``HubServer.on_request``: an action run before the ``nth`` matching request is processed."""

    path_substring: str
    method: str | None
    nth: int
    action: Callable[[str, str], None]


@dataclass
class _LfsUpload:
    """One upload action handed out by the batch endpoint (its URLs carry ``upload_id``)."""

    repo_key: tuple[str, str]
    oid: str
    size: int
    part_size: int | None  # None: basic transfer (one PUT)
    parts: dict[int, tuple[bytes | bytearray, str]] = field(default_factory=dict)  # number -> (body, its ETag)

    @property
    def part_count(self) -> int:
        return -(-self.size // self.part_size) if self.part_size else 1


class _TokenBucket:
    """A bytes-per-second cap shared by every connection in one direction.

    Each caller takes tokens before moving a chunk; the bucket may go into debt
    and the caller then sleeps until it is paid back, so over any interval the
    bytes moved are at most ``burst + rate * seconds`` whatever the number of
    connections. ``burst`` (20 ms of traffic, at least one step) absorbs sleep
    overshoot without letting a transfer run ahead of the rate. ``step``, the bytes a
    body moves per ``take``, is 10 ms of traffic (64 KiB to 1 MiB): at 100 MB/s a
    step per 64 KiB was ~1,500 sleeps a second, a visible share of the server's CPU.
    """

    def __init__(self, rate: float | None):
        self.rate = rate
        self.step = int(min(_IO_CHUNK_MAX, max(_IO_CHUNK, rate / 100))) if rate else _IO_CHUNK_MAX
        self._burst = max(float(self.step), rate / 50) if rate else 0.0
        self._tokens = self._burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.rate) - nbytes
            self._stamp = now
            wait = -self._tokens / self.rate
        if wait > 0:
            time.sleep(wait)


@dataclass(frozen=True)
class _User:
    name: str
    token: str
    can_write: bool
    orgs: tuple[str, ...]

    def owns(self, namespace: str) -> bool:
        return namespace == self.name or namespace in self.orgs


class _HubError(Exception):
    """An HTTP error answered in Hub style (status, X-Error-Code, JSON body)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        body: dict | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.body = body if body is not None else {"error": message}
        self.headers = headers or {}


def _repo_not_found() -> _HubError:
    # The Hub answers 401 (not 404) so that a private repo's existence does not leak.
    return _HubError(401, "Repository not found", "RepoNotFound")


def _validate_card(text: str, repo_type: str) -> tuple[list[str], list[str], dict | None]:
    """Check a README's YAML front matter as the Hub does: (errors, warnings, metadata)."""
    match = _YAML_BLOCK_RE.search(text)
    if match is None:
        return [], ["Empty or missing yaml metadata in repo card"], None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as err:
        return [f"YAML Metadata Error: invalid YAML: {str(err).splitlines()[0]}"], [], None
    if data is None:
        return [], ["Empty or missing yaml metadata in repo card"], None
    if not isinstance(data, dict):
        return ["YAML Metadata Error: the metadata must be a mapping"], [], None
    errors = []

    def is_str_list(value: Any) -> bool:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))

    for key in ("license", "library_name", "pipeline_tag", "base_model_relation", "license_name"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'YAML Metadata Error: "{key}" must be a string')
    for key in ("tags", "language", "datasets", "base_model"):
        if key in data and not is_str_list(data[key]):
            errors.append(f'YAML Metadata Error: "{key}" must be a string or a list of strings')
    if repo_type == "model" and is_str_list(data.get("base_model")):
        bases = [data["base_model"]] if isinstance(data["base_model"], str) else data["base_model"]
        for base in bases:
            if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", base):
                errors.append(f'YAML Metadata Error: "base_model" {base!r} is not a valid model id')
    relation = data.get("base_model_relation")
    if isinstance(relation, str) and relation not in _BASE_MODEL_RELATIONS:
        errors.append(f'YAML Metadata Error: "base_model_relation" must be one of {", ".join(_BASE_MODEL_RELATIONS)}')
    return errors, [], data


def _safetensors_header(data: bytes) -> dict | None:
    if len(data) < 8:
        return None
    (size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


# ============================================================================
# Network chaos: stalls, trickles and rate limits (issue 19, transfer deadlines)
# ----------------------------------------------------------------------------
# ``HubServer.inject_network_fault`` arms a fault for the next matching requests;
# ``_Handler._dispatch`` asks ``_take_net_fault`` once per request and hands a
# rate limit to ``_send_rate_limited`` (the request is not processed) and the
# others to ``_send_faulty`` (processed, then answered badly). Every fault is
# bounded in time (``hold``), and ``reset`` wakes every handler still holding one.
# ============================================================================
NET_FAULT_KINDS = ("stall", "trickle", "slow_read", "rate_limit")


@dataclass
class _NetFault:
    path_substring: str
    kind: str
    method: str | None
    remaining: int
    hold: float
    trickle_bytes: int
    trickle_every: float
    retry_after: str | None
    ratelimit: str | None
    window: float | None  # rate_limit: answer 429 for this many seconds from the first hit (then ``remaining`` is ignored)
    first_hit: float | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.path_substring not in path or self.method not in (None, method):
            return False
        if self.window is not None:
            return self.first_hit is None or time.monotonic() - self.first_hit < self.window
        return self.remaining > 0


class _NetChaosServer:
    """``HubServer``'s network faults (mixin, so that this section stays apart)."""

    _lock: threading.RLock

    def inject_network_fault(
        self,
        path_substring: str,
        kind: str,
        *,
        times: int = 1,
        method: str | None = None,
        hold: float = 5.0,
        trickle_bytes: int = 100,
        trickle_every: float = 2.0,
        retry_after: str | None = None,
        ratelimit: str | None = None,
        window: float | None = None,
    ) -> None:
        """Misbehave on the next ``times`` requests whose path contains ``path_substring``.

        ``kind``:
            * ``"stall"``: process the request, send the status line and headers, then nothing
              for ``hold`` seconds, then close the connection (a download stalled after its
              headers). An answer without a body (an upload's) is not sent at all.
            * ``"trickle"``: like ``stall``, but send ``trickle_bytes`` of the body every
              ``trickle_every`` seconds until ``hold`` seconds have passed (a slow loris).
        * ``"slow_read"``: read the request body ``trickle_bytes`` every ``trickle_every``
          seconds until ``hold`` seconds have passed, then close without answering (an
          upload whose receiver barely reads).
            * ``"rate_limit"``: answer 429 without processing, with ``Retry-After: retry_after``
              and/or ``RateLimit: ratelimit`` (e.g. ``'"api";r=0;t=55'``) when given. With
              ``window``, every matching request gets it for ``window`` seconds from the first.

        ``method`` narrows the match. Faults are served in the order injected; ``reset`` clears
        them and releases every handler still holding a connection.
        """
        if kind not in NET_FAULT_KINDS:
            raise ValueError(f"kind must be one of {NET_FAULT_KINDS}, got {kind!r}")
        if not 0 < hold <= 60:
            raise ValueError(f"hold must be in (0, 60] seconds so a test cannot hang, got {hold}")
        fault = _NetFault(path_substring, kind, method, times, hold, trickle_bytes, trickle_every, retry_after, ratelimit,
                          window)
        with self._lock:
            self._net_state()[0].append(fault)

    def _net_state(self) -> tuple[list[_NetFault], threading.Event, list[tuple[str, str, str, float]]]:
        """(armed faults, event set by ``reset`` to release held connections, log of faults served)."""
        state = self.__dict__.get("_net_faults_state")
        if state is None:
            state = self.__dict__["_net_faults_state"] = ([], threading.Event(), [])
        return state

    def _clear_net_faults(self) -> None:
        with self._lock:
            faults, released, _log = self._net_state()
            released.set()
            self.__dict__["_net_faults_state"] = ([], threading.Event(), [])

    def _take_net_fault(self, method: str, path: str) -> _NetFault | None:
        with self._lock:
            faults, _released, log = self._net_state()
            fault = next((f for f in faults if f.matches(method, path)), None)
            if fault is not None:
                fault.remaining -= 1
                if fault.first_hit is None:
                    fault.first_hit = time.monotonic()
                log.append((fault.kind, method, path, time.monotonic()))
            return fault

    @property
    def net_fault_log(self) -> list[tuple[str, str, str, float]]:
        """``(kind, method, path, monotonic time)`` per request a fault was served to, in order."""
        with self._lock:
            return list(self._net_state()[2])


class _NetChaosHandler:
    """``_Handler``'s side of the network faults (mixin)."""

    def _send_early_fault(self, fault: _NetFault) -> None:
        """A fault served instead of processing the request: a slow reader, or a 429."""
        if fault.kind == "slow_read":
            self.close_connection = True
            released = self.hub._net_state()[1]
            deadline = time.monotonic() + fault.hold
            left = int(self.headers.get("content-length") or 0)
            while left > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read(min(left, fault.trickle_bytes))
                if not chunk:
                    return
                left -= len(chunk)
                if released.wait(fault.trickle_every):
                    return
            return
        self._read_body()  # read and dropped: the connection stays usable for the retry
        payload = json.dumps({"error": "You have been rate-limited; retry later."}).encode()
        self.send_response(429)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if fault.retry_after is not None:
            self.send_header("Retry-After", fault.retry_after)
        if fault.ratelimit is not None:
            self.send_header("RateLimit", fault.ratelimit)
            self.send_header("RateLimit-Policy", '"fixed window";"api";q=500;w=300')
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_head(self, status: int, headers: dict, length: int) -> None:
        """Status line, headers and Content-Length: every answer, faulty or not, starts so."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send_faulty(self, fault: _NetFault, status: int, headers: dict, payload: bytes, *, head: bool) -> None:
        self.close_connection = True  # the connection is unusable afterwards, as after a real stall
        released = self.hub._net_state()[1]
        deadline = time.monotonic() + fault.hold
        try:
            if fault.kind == "stall" and (head or not payload):  # no body to stall in: the answer never comes
                released.wait(fault.hold)
                return
            self._send_head(status, headers, len(payload))
            self.wfile.flush()
            sent = 0
            while not head and fault.kind == "trickle" and sent < len(payload):
                if released.wait(min(fault.trickle_every, max(0.0, deadline - time.monotonic()))):
                    return
                if time.monotonic() >= deadline:
                    return
                self.wfile.write(payload[sent : sent + fault.trickle_bytes])
                self.wfile.flush()
                sent += fault.trickle_bytes
            if fault.kind == "stall":
                released.wait(fault.hold)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on us: what it should do
            return


# -------------------------------------------------------------------------- server


class _Unset:
    """Marks a ``configure`` argument that was not given (``None`` there means "no cap")."""


_UNSET = _Unset()


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a killed job, a cancelled read) is the Hub's daily life, not a
    server error: no traceback for it; anything else is still printed."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class HubServer(_NetChaosServer):
    """In-memory Hub for tests, served over HTTP on ``127.0.0.1`` (a free port).

    Args:
        users: token -> username; defaults to ``DEFAULT_USERS`` (``hf_test_alice``,
            ``hf_test_bob``, ``hf_test_readonly`` -> carol).
        orgs: org -> member usernames; defaults to ``DEFAULT_ORGS`` (alice in ``ptq-org``).
        read_only_tokens: tokens with the ``read`` role; defaults to ``{"hf_test_readonly"}``.
        lfs_threshold: files of this many bytes or more go through LFS (``preupload``
            answers ``lfs``; inline content that big is refused). Default 10 MiB, as the Hub;
            lower it so tiny test files take the LFS path.
        lfs_part_size: LFS objects larger than this are uploaded in parts of this size
            (multipart transfer); smaller ones in one PUT (basic transfer).
        lfs_redirect: resolve of an LFS file answers 302 to the storage host, as the
            Hub redirects to its CDN (off by default: request logs then show one GET per
            download).
        upload_bandwidth: bytes/s cap on request bodies read, all connections together
            (what clients upload); ``None`` = no cap.
        download_bandwidth: bytes/s cap on response bodies written, all connections
            together (what clients download); ``None`` = no cap.

    The last five can be changed on a running server with ``configure``; ``reset``
    restores the values given here.

    Attributes:
        endpoint: ``"http://127.0.0.1:PORT"`` once started.
        storage_endpoint: ``"http://localhost:PORT"``: the same server under another host
            name, where LFS upload and CDN URLs point (the client sends no token there).
        requests_log: ``(method, path_with_query, headers)`` per request received, in order;
            header names are lower-cased (``headers.get("authorization")``).
        server_errors: tracebacks of unexpected exceptions in this server (each answered 500);
            the ``hub`` fixture fails a test that leaves any.
        stats: a ``HubStats`` of bytes, LFS PUTs and commits.
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        orgs: dict[str, tuple[str, ...]] | None = None,
        read_only_tokens: set[str] | frozenset[str] | None = None,
        lfs_threshold: int = LFS_MIN_SIZE,
        lfs_part_size: int = LFS_PART_SIZE,
        lfs_redirect: bool = False,
        upload_bandwidth: float | None = None,
        download_bandwidth: float | None = None,
    ):
        users = DEFAULT_USERS if users is None else users
        orgs = DEFAULT_ORGS if orgs is None else orgs
        read_only = DEFAULT_READ_ONLY_TOKENS if read_only_tokens is None else read_only_tokens
        self._users = {
            token: _User(
                name=name,
                token=token,
                can_write=token not in read_only,
                orgs=tuple(org for org, members in orgs.items() if name in members),
            )
            for token, name in users.items()
        }
        self._defaults: dict[str, Any] = {
            "lfs_threshold": lfs_threshold,
            "lfs_part_size": lfs_part_size,
            "lfs_redirect": lfs_redirect,
            "upload_bandwidth": upload_bandwidth,
            "download_bandwidth": download_bandwidth,
        }
        self.lfs_threshold = lfs_threshold
        self.lfs_part_size = lfs_part_size
        self.lfs_redirect = lfs_redirect
        self._inbound = _TokenBucket(upload_bandwidth)
        self._outbound = _TokenBucket(download_bandwidth)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._failures: list[_Failure] = []
        self._uploads: dict[str, _LfsUpload] = {}
        self._secret = secrets.token_bytes(16)  # signs CDN URLs
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""
        self.storage_endpoint = ""
        self.requests_log: list[tuple[str, str, dict[str, str]]] = []
        self.server_errors: list[str] = []
        self.stats = HubStats()
        self._hooks: list[_Hook] = []  # chaos: races with the client (see "chaos: commit races")
        self.jobs = JobsApi(_HubError)  # /api/jobs: Hugging Face Jobs run as local processes (hub_jobs_server.py)
        self.collections = CollectionsApi(_HubError)  # /api/collections (hub_collections_server.py)

    # ---------------------------------------------------------------- lifecycle

    def start(self, port: int = 0) -> HubServer:
        """Bind ``port`` (0: a free one) on 127.0.0.1 and serve in a daemon thread; returns self."""
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = _QuietServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        # Another host name for the same socket: the client treats it as a foreign host
        # (no redirect following on HEAD, no token sent), as it does S3 or the Hub's CDN.
        self.storage_endpoint = f"http://localhost:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.jobs.stop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------- test helpers

    def weight_ranges(self, repo_id: str, since: int = 0) -> list[tuple[str, int, int]]:
        """``(file, first, last)`` of the Range GETs of ``repo_id``'s weight files after request ``since``.

        Header reads (from byte 0: planning) are left out; tensor bytes never start there. A
        weight file read without a Range header fails the test (a streamed job reads ranges only).
        """
        ranges = []
        for method, path, headers in self.requests_log[since:]:
            if method == "GET" and f"/{repo_id}/" in path and path.split("?")[0].endswith(".safetensors"):
                match = re.fullmatch(r"bytes=(\d+)-(\d+)", headers.get("range", ""))
                assert match, f"a weight file was read without a Range header: {path}"
                if int(match[1]) > 0:
                    ranges.append((path.split("?")[0].rsplit("/", 1)[-1], int(match[1]), int(match[2])))
        return ranges

    def reset(self) -> None:
        """Drop every repo, pending upload, the request log, server errors, injected
        failures and stats, and restore the constructor's settings."""
        with self._lock:
            self.server_errors.clear()
            self._repos.clear()
            self._failures.clear()
            self._hooks.clear()
            self._uploads.clear()
            self.requests_log.clear()
            self.stats = HubStats()
            self.configure(**self._defaults)
        self._clear_net_faults()  # network chaos (section below)
        self.jobs.reset()
        self.collections.reset()

    def configure(
        self,
        *,
        lfs_threshold: int | None = None,
        lfs_part_size: int | None = None,
        lfs_redirect: bool | None = None,
        upload_bandwidth: float | None | _Unset = _UNSET,
        download_bandwidth: float | None | _Unset = _UNSET,
    ) -> None:
        """Change settings on a running server (see the class docstring); omitted ones stay.

        ``upload_bandwidth=None`` / ``download_bandwidth=None`` lift that cap.
        """
        if lfs_threshold is not None and lfs_threshold < 1:
            raise ValueError(f"lfs_threshold must be at least 1 byte, got {lfs_threshold}")
        if lfs_part_size is not None and lfs_part_size < 1:
            raise ValueError(f"lfs_part_size must be at least 1 byte, got {lfs_part_size}")
        for name, rate in (("upload_bandwidth", upload_bandwidth), ("download_bandwidth", download_bandwidth)):
            if isinstance(rate, (int, float)) and rate <= 0:
                raise ValueError(f"{name} must be a positive number of bytes/s or None, got {rate}")
        with self._lock:
            if lfs_threshold is not None:
                self.lfs_threshold = lfs_threshold
            if lfs_part_size is not None:
                self.lfs_part_size = lfs_part_size
            if lfs_redirect is not None:
                self.lfs_redirect = lfs_redirect
            if not isinstance(upload_bandwidth, _Unset):
                self._inbound = _TokenBucket(upload_bandwidth)
            if not isinstance(download_bandwidth, _Unset):
                self._outbound = _TokenBucket(download_bandwidth)

    @property
    def upload_bandwidth(self) -> float | None:
        return self._inbound.rate

    @property
    def download_bandwidth(self) -> float | None:
        return self._outbound.rate

    def seed_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | str | pathlib.Path],
        *,
        private: bool = False,
        gated: bool | str = False,
        granted: tuple[str, ...] | list[str] = (),
        repo_type: str = "model",
        message: str = "Initial commit",
    ) -> None:
        """Create (or replace) ``repo_id`` holding exactly ``files`` in one commit on ``main``.

        ``files`` maps repo paths to bytes, text, or a local file to read. ``gated=True``
        means ``"auto"``; ``granted`` lists usernames allowed to download a gated repo.
        Files reported as LFS are in the repo's LFS storage, as if uploaded.
        """
        namespace, _, name = repo_id.partition("/")
        if not namespace or not _NAME_RE.match(name) or not _NAME_RE.match(namespace):
            raise ValueError(f"seed_repo needs a 'namespace/name' repo id, got {repo_id!r}")
        contents = {}
        for path, value in files.items():
            try:
                _check_path(path)
            except _HubError as err:
                raise ValueError(err.message) from None
            if isinstance(value, pathlib.Path):
                value = value.read_bytes()
            elif isinstance(value, str):
                value = value.encode()
            contents[path] = bytes(value)
        with self._lock:
            repo = _Repo(
                repo_type=repo_type,
                repo_id=repo_id,
                private=private,
                gated="auto" if gated is True else gated,
                granted=set(granted),
                created_at=datetime.now(timezone.utc),
            )
            self._repos[(repo_type, repo_id)] = repo
            self._append_commit(repo, "main", contents, message, "", namespace, sorted(contents), [])

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def list_files(self, repo_id: str, *, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Sorted paths at ``revision`` (including ``.gitattributes`` for repos made by ``create_repo``)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return sorted(self._commit_at(repo, revision).files)

    def read_file(self, repo_id: str, path: str, *, revision: str = "main", repo_type: str = "model") -> bytes:
        """Content of ``path`` at ``revision``; ``KeyError`` if absent."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return bytes(self._commit_at(repo, revision).files[path])

    def commits(self, repo_id: str, *, revision: str = "main", repo_type: str = "model") -> list[dict]:
        """Commits reachable from ``revision`` (a branch or commit id), oldest first.

        Each: ``oid``, ``message``, ``description``, ``author``, ``files`` (paths added or
        modified by this commit), ``deleted`` (paths it removed), ``tree`` (all paths after it).
        """
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return [
                {
                    "oid": c.oid,
                    "message": c.message,
                    "description": c.description,
                    "author": c.author,
                    "files": list(c.changed),
                    "deleted": list(c.deleted),
                    "tree": sorted(c.files),
                }
                for c in repo.history(self._commit_at(repo, revision))
            ]

    def branches(self, repo_id: str, *, repo_type: str = "model") -> dict[str, str]:
        """Branch name -> head commit oid."""
        with self._lock:
            return dict(self._repos[(repo_type, repo_id)].branches)

    def lfs_objects(self, repo_id: str, *, repo_type: str = "model") -> dict[str, int]:
        """The repo's LFS storage: sha256 -> size (uploaded objects and LFS files of its commits)."""
        with self._lock:
            return {oid: len(data) for oid, data in self._repos[(repo_type, repo_id)].lfs.items()}

    def fail_requests(
        self, path_substring: str, times: int, status: int = 503, *, method: str | None = None, after: bool = False
    ) -> None:
        """Answer the next ``times`` requests whose path contains ``path_substring`` with ``status``.

        ``method`` narrows the match (``"PUT"``). ``after=True`` processes the request
        first (an upload is stored, a commit lands) and then answers the error: a
        response lost on the way back. Use ``LFS_UPLOAD_PATH`` to hit LFS uploads.
        """
        with self._lock:
            self._failures.append(_Failure(path_substring, times, status, method, after))

    # ------------------------------------------------------ chaos: commit races
    # Someone else writes to a repo while a client works on it: ``on_request`` runs an
    # action (``commit_files``, ``delete_branch``) just before the Nth matching request
    # is processed. A commit applied and its answer lost is ``fail_requests(after=True)``.

    def on_request(
        self, path_substring: str, action: Callable[[str, str], None], *, nth: int = 1, method: str | None = None
    ) -> None:
        """Call ``action(method, path)`` once, before the ``nth`` request whose path contains ``path_substring``
        (and whose method is ``method``, if given) is processed: what the client sees is the repo after it."""
        with self._lock:
            self._hooks.append(_Hook(path_substring, method, nth, action))

    def commit_files(
        self,
        repo_id: str,
        files: dict[str, bytes | str],
        *,
        branch: str = "main",
        message: str = "Edit files",
        description: str = "",
        author: str | None = None,
        repo_type: str = "model",
    ) -> str:
        """Commit ``files`` (added or replaced) on ``branch`` of an existing repo, as another writer would; its oid."""
        contents = {path: value.encode() if isinstance(value, str) else bytes(value) for path, value in files.items()}
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            merged = dict(repo.commits[repo.branches[branch]].files)
            merged.update(contents)
            commit = self._append_commit(repo, branch, merged, message, description, author or repo.owner,
                                         sorted(contents), [])
            return commit.oid

    def delete_branch(self, repo_id: str, branch: str, *, repo_type: str = "model") -> None:
        with self._lock:
            self._delete_branch(self._repos[(repo_type, repo_id)], branch)

    def _fire_hooks(self, method: str, path: str) -> None:
        due = []
        with self._lock:
            for hook in self._hooks:
                if hook.nth > 0 and hook.path_substring in path and hook.method in (None, method):
                    hook.nth -= 1
                    if hook.nth == 0:
                        due.append(hook)
        for hook in due:  # outside the lock: an action may take it, or ask this server over HTTP
            hook.action(method, path)

    # ------------------------------------------------------------------ helpers

    def _user_for(self, headers: Any) -> _User | None:
        auth = headers.get("authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        user = self._users.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise _HubError(401, _INVALID_CREDENTIALS, headers={"X-Error-Message": _INVALID_CREDENTIALS})
        return user

    def _is_lfs(self, path: str, size: int) -> bool:
        """Whether content committed at ``path`` is stored as an LFS object (git-lfs's filter)."""
        return size >= self.lfs_threshold or _matches_lfs_pattern(path)

    def _append_commit(
        self,
        repo: _Repo,
        branch: str,
        files: dict[str, bytes],
        message: str,
        description: str,
        author: str,
        changed: list[str],
        deleted: list[str],
        lfs_added: frozenset[str] = frozenset(),
    ) -> _Commit:
        """Add a commit on ``branch``; ``lfs_added`` are the paths committed by sha256 (``lfsFile``)."""
        parent = repo.branches.get(branch)
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_type}/{repo.repo_id}\n{parent}\n{message}\n{next(self._counter)}\n".encode())
        files = {path: data if isinstance(data, _Blob) else _Blob(data) for path, data in files.items()}
        inherited = repo.commits[parent].lfs if parent else frozenset()
        fresh = set(changed)
        lfs = frozenset(
            path
            for path, data in files.items()
            if path in lfs_added or (self._is_lfs(path, len(data)) if path in fresh else path in inherited)
        )
        for path in sorted(files):
            # git holds an LFS file as its pointer blob, as the Hub does: the commit never rehashes the
            # content (sha1 of a model's shards took ~1 s of every final commit here, nothing on the Hub)
            oid = files[path].pointer_oid if path in lfs else files[path].git_oid
            digest.update(f"{path}\0{oid}\n".encode())
        commit = _Commit(
            oid=digest.hexdigest(),
            parent=parent,
            message=message,
            description=description,
            author=author,
            date=datetime.now(timezone.utc),
            files=files,
            lfs=lfs,
            changed=changed,
            deleted=deleted,
        )
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        # What the repo reports as LFS is in its LFS storage, so a commit can point at it
        # by sha256 (CommitOperationCopy sends an lfsFile for those).
        for path in fresh & lfs:
            repo.lfs.setdefault(files[path].sha256, files[path])
        return commit

    def _url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _can_read(self, repo: _Repo, user: _User | None) -> bool:
        return not repo.private or (user is not None and user.owns(repo.owner))

    def _search_models(self, user: _User | None, query: dict[str, list[str]]) -> tuple:
        """``GET /api/models?search=&limit=``: readable model repos whose id contains the text, by id."""
        text = (query.get("search") or [""])[0].lower()
        limit = int((query.get("limit") or ["1000"])[0])
        with self._lock:
            found = sorted(r.repo_id for (kind, _), r in self._repos.items()
                           if kind == "model" and text in r.repo_id.lower() and self._can_read(r, user))
        return _ok([{"id": repo_id, "modelId": repo_id} for repo_id in found[:limit]])

    def _can_download(self, repo: _Repo, user: _User | None) -> bool:
        if not repo.gated:
            return True
        return user is not None and (user.owns(repo.owner) or user.name in repo.granted)

    def _readable(self, repo_type: str, repo_id: str, user: _User | None) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or not self._can_read(repo, user):
            raise _repo_not_found()
        return repo

    def _writable(self, repo_type: str, repo_id: str, user: _User | None) -> _Repo:
        if user is None:
            raise _HubError(401, "You must be authenticated to write to a repo", "RepoNotFound")
        repo = self._readable(repo_type, repo_id, user)
        if not user.owns(repo.owner):
            raise _HubError(403, f"You don't have the rights to write to {repo_id}")
        if not user.can_write:
            raise _HubError(403, "This token has the read role; a write token is required")
        return repo

    @staticmethod
    def _commit_at(repo: _Repo, revision: str) -> _Commit:
        name = revision.removeprefix("refs/heads/")
        if name in repo.branches:
            return repo.commits[repo.branches[name]]
        if _HEX_RE.match(revision):
            for commit in reversed(repo.commits.values()):
                if commit.oid.startswith(revision):
                    return commit
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _branch(repo: _Repo, revision: str) -> str:
        """The branch a write to ``revision`` goes to; only branches take commits."""
        name = revision.removeprefix("refs/heads/")
        if name not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {revision}: not a branch of {repo.repo_id}", "RevisionNotFound")
        return name

    def _entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict:
        """A tree / paths-info entry (file) in the Hub's JSON shape."""
        data = commit.files[path]
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data)}
        if path in commit.lfs:
            entry["oid"] = data.pointer_oid
            entry["lfs"] = {"oid": data.sha256, "size": len(data), "pointerSize": len(data.lfs_pointer)}
        else:
            entry["oid"] = data.git_oid
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, lambda files: files.get(path))
        return entry

    def _folder(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict:
        prefix = path + "/"
        listing = sorted((p, d.git_oid) for p, d in commit.files.items() if p.startswith(prefix))
        entry: dict[str, Any] = {
            "type": "directory",
            "path": path,
            "oid": hashlib.sha1(repr(listing).encode()).hexdigest(),
        }
        if expand:
            entry["lastCommit"] = self._last_commit(
                repo, commit, lambda files: sorted((p, d.git_oid) for p, d in files.items() if p.startswith(prefix))
            )
        return entry

    @staticmethod
    def _last_commit(repo: _Repo, commit: _Commit, view: Any) -> dict:
        history = repo.history(commit)
        last = history[-1]
        for older in reversed(history[:-1]):
            if view(older.files) != view(last.files):
                break
            last = older
        return {"id": last.oid, "title": last.message, "date": _iso(last.date)}

    @staticmethod
    def _folders(files: dict[str, _Blob]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    def _stats_json(self) -> dict:
        stats = self.stats
        return {
            "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
            "lfs_puts": stats.lfs_puts,
            "lfs_bytes": dict(stats.lfs_bytes),
            "lfs_bytes_total": stats.lfs_bytes_total,
            "lfs_stored": dict(stats.lfs_stored),
            "commits": [{"repo_id": r, "branch": b, "count": n} for (r, b), n in sorted(stats.commits.items())],
        }

    def _cdn_signature(self, oid: str) -> str:
        return hmac.new(self._secret, oid.encode(), hashlib.sha256).hexdigest()[:32]


    # ------------------------------------------------------------------- routes

    def _handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes) -> tuple:
        """Route one request; returns (status, headers, body bytes) or raises _HubError."""
        raw = path.split("/")[1:]
        if path.startswith(LFS_UPLOAD_PATH):  # presigned-style URLs: no token, the id is the credential
            return self._lfs_transfer(method, raw[1:], body)
        if path.startswith(LFS_CDN_PATH) and method in ("GET", "HEAD") and len(raw) == 2:
            return self._cdn(method, raw[1], query, headers)
        user = self._user_for(headers)

        if path == STATS_PATH and method == "GET":
            return _ok(self._stats_json())
        if path == "/api/whoami-v2" and method == "GET":
            return self._whoami(user)
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(_json(body))
        if path == "/api/models" and method == "GET":
            return self._search_models(user, query)
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(user, _json(body))
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo(user, _json(body))
        if raw[:2] == ["api", "jobs"]:
            from huggingface_hub import JobHardware

            return self.jobs.handle(method, [unquote(p) for p in raw[2:]], user, body, {h.value for h in JobHardware})
        if raw[:2] == ["api", "collections"]:
            return self.collections.handle(method, [unquote(p) for p in raw[2:]], user, body)
        if len(raw) >= 4 and raw[0] == "api" and raw[1] in _REPO_TYPES:
            repo_type, repo_id = _REPO_TYPES[raw[1]], f"{unquote(raw[2])}/{unquote(raw[3])}"
            action, rest = (raw[4], raw[5:]) if len(raw) > 4 else ("", [])
            return self._repo_api(method, repo_type, repo_id, action, rest, query, user, body)
        repo_type = "model"
        if raw and raw[0] in ("datasets", "spaces"):
            repo_type, raw = _REPO_TYPES[raw[0]], raw[1:]
        # LFS API (git-lfs batch protocol): /{repo_id}.git/info/lfs/objects/{batch,verify}
        if method == "POST" and len(raw) == 6 and raw[1].endswith(".git") and raw[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{unquote(raw[0])}/{unquote(raw[1][: -len('.git')])}"
            repo = self._writable(repo_type, repo_id, user)
            if raw[5] == "batch":
                return self._lfs_batch(repo, _json(body))
            if raw[5] == "verify":
                return self._lfs_verify(repo, _json(body))
        # Downloads: /{repo_id}/resolve/{rev}/{path} (models), /datasets/{repo_id}/resolve/... (others)
        if method in ("GET", "HEAD") and len(raw) >= 5 and raw[2] == "resolve":
            repo_id = f"{unquote(raw[0])}/{unquote(raw[1])}"
            filename = unquote("/".join(raw[4:]))
            return self._resolve(method, repo_type, repo_id, unquote(raw[3]), filename, headers, user)
        raise _HubError(404, f"Route not found: {method} {path}")

    def _whoami(self, user: _User | None) -> tuple:
        if user is None:
            raise _HubError(401, _INVALID_CREDENTIALS, headers={"X-Error-Message": _INVALID_CREDENTIALS})
        return _ok(
            {
                "type": "user",
                "id": hashlib.sha1(user.name.encode()).hexdigest()[:24],
                "name": user.name,
                "fullname": user.name.title(),
                "email": f"{user.name}@example.test",
                "emailVerified": True,
                "isPro": False,
                "avatarUrl": f"{self.endpoint}/avatars/{user.name}.png",
                "orgs": [
                    {"type": "org", "name": org, "fullname": org, "roleInOrg": "write" if user.can_write else "read"}
                    for org in user.orgs
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": f"{user.name}-test", "role": "write" if user.can_write else "read"},
                },
            }
        )

    def _validate_yaml(self, payload: dict) -> tuple:
        errors, warnings, _ = _validate_card(str(payload.get("content", "")), payload.get("repoType", "model"))
        body = {"errors": [{"message": m} for m in errors], "warnings": [{"message": m} for m in warnings]}
        if errors:
            # Hub style: 400 with the list of errors in the body (the client turns it into ValueError).
            raise _HubError(400, errors[0], body={"error": "\n".join(errors), **body})
        return _ok(body)

    def _create_repo(self, user: _User | None, payload: dict) -> tuple:
        if user is None:
            raise _HubError(401, "You must be authenticated to create a repo")
        name, namespace = payload.get("name") or "", payload.get("organization") or user.name
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"Invalid repo type {repo_type!r}")
        if not _NAME_RE.match(name):
            raise _HubError(400, f"Invalid repo name {name!r}: use letters, digits, '-', '_' or '.' (96 at most)")
        repo_id = f"{namespace}/{name}"
        if not user.owns(namespace):
            raise _HubError(
                403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"'
            )
        if not user.can_write:
            raise _HubError(403, "This token has the read role; a write token is required")
        existing = self._repos.get((repo_type, repo_id))
        if existing is not None:
            raise _HubError(
                409,
                f"You already created this {repo_type} repo",
                body={"error": f"You already created this {repo_type} repo", "url": self._url(existing)},
            )
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = _Repo(repo_type, repo_id, private, False, set(), datetime.now(timezone.utc))
        self._repos[(repo_type, repo_id)] = repo
        self._append_commit(
            repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit", "", user.name, [".gitattributes"], []
        )
        return _ok({"url": self._url(repo), "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self, user: _User | None, payload: dict) -> tuple:
        if user is None:
            raise _HubError(401, "You must be authenticated to delete a repo", "RepoNotFound")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user.name}/{payload.get('name') or ''}"
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or not self._can_read(repo, user):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        self._writable(repo_type, repo_id, user)
        del self._repos[(repo_type, repo_id)]
        return _ok({})

    def _settings(self, user: _User | None, repo_type: str, repo_id: str, payload: dict) -> tuple:
        repo = self._writable(repo_type, repo_id, user)
        if "visibility" in payload:
            repo.private = payload["visibility"] == "private"
        if "gated" in payload:
            repo.gated = payload["gated"] or False
        return _ok({})

    def _repo_api(
        self,
        method: str,
        repo_type: str,
        repo_id: str,
        action: str,
        rest: list[str],
        query: dict[str, list[str]],
        user: _User | None,
        body: bytes,
    ) -> tuple:
        revision = unquote(rest[0]) if rest else "main"
        if method == "GET" and action in ("", "revision"):
            return self._info(repo_type, repo_id, revision, "blobs" in query, user)
        if method == "GET" and action == "tree":
            repo = self._readable(repo_type, repo_id, user)
            return self._tree(repo, revision, unquote("/".join(rest[1:])).strip("/"), query)
        if method == "POST" and action == "paths-info":
            repo = self._readable(repo_type, repo_id, user)
            form = parse_qs(body.decode())
            expand = (form.get("expand") or ["false"])[0].lower() == "true"
            commit = self._commit_at(repo, revision)
            folders = self._folders(commit.files)
            entries = []
            for path in form.get("paths", []):
                path = path.strip("/")
                if path in commit.files:
                    entries.append(self._entry(repo, commit, path, expand))
                elif path in folders:
                    entries.append(self._folder(repo, commit, path, expand))
            return _ok(entries)
        if method == "POST" and action == "preupload":
            repo = self._writable(repo_type, repo_id, user)
            if query.get("create_pr"):
                raise _HubError(400, "Pull requests are not supported by the test Hub server")
            head = repo.commits[repo.branches[self._branch(repo, revision)]]
            return self._preupload(repo, head, _json(body))
        if method == "POST" and action == "commit":
            repo = self._writable(repo_type, repo_id, user)
            if query.get("create_pr"):
                raise _HubError(400, "Pull requests are not supported by the test Hub server")
            return self._commit(repo, self._branch(repo, revision), user, body)  # type: ignore[arg-type]
        if method == "GET" and action == "commits":
            repo = self._readable(repo_type, repo_id, user)
            history = repo.history(self._commit_at(repo, revision))
            return _ok(
                [
                    {
                        "id": c.oid,
                        "title": c.message,
                        "message": c.description,
                        "authors": [{"user": c.author}],
                        "date": _iso(c.date),
                    }
                    for c in reversed(history)
                ]
            )
        if method == "PUT" and action == "settings":
            return self._settings(user, repo_type, repo_id, _json(body))
        if method == "GET" and action == "refs":
            repo = self._readable(repo_type, repo_id, user)
            names = ["main", *sorted(set(repo.branches) - {"main"})]
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": repo.branches[n]} for n in names]
            return _ok({"branches": branches, "tags": [], "converts": [], "pullRequests": []})
        if action == "branch" and rest and method in ("POST", "DELETE"):
            repo = self._writable(repo_type, repo_id, user)
            if method == "POST":
                return self._create_branch(repo, revision, _json(body))
            return self._delete_branch(repo, revision)
        if action in ("xet-write-token", "xet-read-token"):
            raise _HubError(
                501,
                "The test Hub server does not speak Xet; it takes uploads through LFS. "
                "Set HF_HUB_DISABLE_XET=1 (or huggingface_hub.constants.HF_HUB_DISABLE_XET = True) in the client.",
            )
        if method == "GET" and action == "safetensors-metadata" and repo_type == "model":
            repo = self._readable(repo_type, repo_id, user)
            if not self._can_download(repo, user):
                raise self._gated_error(user)
            return self._sharded_metadata(repo, unquote("/".join(rest)))
        raise _HubError(404, f"Route not found: {method} /api/{repo_type}s/{repo_id}/{action}")

    def _preupload(self, repo: _Repo, head: _Commit, payload: dict) -> tuple:
        files = []
        for item in payload.get("files", []):
            path, size = item.get("path"), item.get("size")
            if not isinstance(path, str) or not isinstance(size, int) or size < 0:
                raise _HubError(400, f"Each preupload file needs a 'path' and a 'size' in bytes, got {item!r}")
            existing = head.files.get(path)
            oid = None
            if existing is not None:
                # The client compares this with sha256 (lfs) or the git blob id (regular) of its
                # local file to drop unchanged files from the commit.
                oid = existing.sha256 if path in head.lfs else existing.git_oid
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if size >= self.lfs_threshold else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return _ok({"files": files, "commitOid": head.oid})

    def _create_branch(self, repo: _Repo, branch: str, payload: dict) -> tuple:
        if not _BRANCH_RE.match(branch):
            raise _HubError(400, f"Invalid branch name {branch!r}: use letters, digits, '.', '_', '-' and '/'")
        if branch in repo.branches:
            raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = payload.get("startingPoint") or "main"
        repo.branches[branch] = self._commit_at(repo, str(start)).oid
        return _ok({})

    def _delete_branch(self, repo: _Repo, branch: str) -> tuple:
        name = branch.removeprefix("refs/heads/")
        if name == "main":
            raise _HubError(403, "Cannot delete the default branch 'main'")
        if name not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {branch}: no such branch in {repo.repo_id}", "RevisionNotFound")
        del repo.branches[name]
        return _ok({})

    def _info(self, repo_type: str, repo_id: str, revision: str, blobs: bool, user: _User | None) -> tuple:
        repo = self._readable(repo_type, repo_id, user)
        commit = self._commit_at(repo, revision)
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = self._entry(repo, commit, path, expand=False)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo.owner,
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(d) for d in commit.files.values()),
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        readme = commit.files.get("README.md")
        if readme is not None:
            _, _, card = _validate_card(readme.decode("utf-8", "replace"), repo_type)
            if isinstance(card, dict):
                info["cardData"] = card
                tags = card.get("tags") or []
                info["tags"] = [tags] if isinstance(tags, str) else list(tags)
                for key in ("library_name", "pipeline_tag"):
                    if isinstance(card.get(key), str):
                        info[key] = card[key]
        if "config.json" in commit.files:
            try:
                config = json.loads(commit.files["config.json"])
                info["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
            except ValueError:
                pass
        parameters: dict[str, int] = {}
        for path, data in commit.files.items():
            if path.endswith(".safetensors"):
                for name, tensor in (_safetensors_header(data) or {}).items():
                    if name != "__metadata__" and isinstance(tensor, dict):
                        count = 1
                        for dim in tensor.get("shape", []):
                            count *= int(dim)
                        parameters[tensor["dtype"]] = parameters.get(tensor["dtype"], 0) + count
        if parameters:
            info["safetensors"] = {"parameters": parameters, "total": sum(parameters.values())}
        return _ok(info)

    def _tree(self, repo: _Repo, revision: str, path: str, query: dict[str, list[str]]) -> tuple:
        commit = self._commit_at(repo, revision)
        recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
        expand = (query.get("expand") or ["false"])[0].lower() == "true"
        folders = self._folders(commit.files)
        if path and path not in folders:
            if path in commit.files:
                return _ok([self._entry(repo, commit, path, expand)])
            raise _HubError(
                404, f"{path} does not exist on {revision}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid}
            )
        prefix = f"{path}/" if path else ""
        entries = []
        for folder in sorted(folders):
            rel = folder[len(prefix) :] if folder.startswith(prefix) else None
            if rel and (recursive or "/" not in rel):
                entries.append(self._folder(repo, commit, folder, expand))
        for file in sorted(commit.files):
            rel = file[len(prefix) :] if file.startswith(prefix) else None
            if rel and (recursive or "/" not in rel):
                entries.append(self._entry(repo, commit, file, expand))
        return _ok(entries)

    def _commit(self, repo: _Repo, branch: str, user: _User, body: bytes) -> tuple:
        try:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        except ValueError as err:
            raise _HubError(400, f"Invalid NDJSON commit payload: {err}") from err
        header = next((item.get("value") or {} for item in lines if item.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise _HubError(400, "Commit payload needs a header line with a summary")
        head = repo.commits[repo.branches[branch]]
        parent = header.get("parentCommit")
        if parent and not head.oid.startswith(parent):
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)  # built aside, swapped in only if every operation is valid
        changed: list[str] = []
        deleted: list[str] = []
        lfs_added: set[str] = set()
        for item in lines:
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                continue
            path = _check_path(value.get("path", ""), folder=key == "deletedFolder")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                try:
                    data = base64.b64decode(value.get("content", ""), validate=True)
                except ValueError as err:
                    raise _HubError(400, f"Invalid base64 content for {path}") from err
                if len(data) >= self.lfs_threshold:
                    raise _HubError(
                        400,
                        f"{path} is {len(data)} bytes: files of {self.lfs_threshold} bytes or more must be "
                        "uploaded with LFS (preupload answers 'lfs' for them), not inline in the commit",
                    )
                files[path] = data
                changed.append(path)
                lfs_added.discard(path)
            elif key == "lfsFile":
                oid, size = value.get("oid"), value.get("size")
                data = repo.lfs.get(oid) if isinstance(oid, str) else None
                if data is None:
                    raise _HubError(
                        400,
                        f"LFS object {oid} for {path} is not in {repo.repo_id}'s LFS storage: "
                        "upload it first (LFS batch + PUT, what preupload_lfs_files does)",
                    )
                if size is not None and size != len(data):
                    raise _HubError(400, f"LFS object {oid} for {path} is {len(data)} bytes, the commit says {size}")
                files[path] = data
                changed.append(path)
                lfs_added.add(path)
            elif key == "deletedFile":
                if path not in files:
                    raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
                deleted.append(path)
            elif key == "deletedFolder":
                inside = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                if not inside:
                    raise _HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in inside:
                    del files[p]
                deleted.extend(inside)
            else:
                raise _HubError(400, f"Unknown commit operation {key!r}")
        clashes = sorted(self._folders(files) & set(files))
        if clashes:
            raise _HubError(400, f"{clashes[0]!r} cannot be both a file and a folder")
        if "README.md" in changed:
            errors, _, _ = _validate_card(files["README.md"].decode("utf-8", "replace"), repo.repo_type)
            if errors:
                raise _HubError(400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))
        changed = [p for p in dict.fromkeys(changed) if p in files]
        deleted = [p for p in dict.fromkeys(deleted) if p not in files]
        commit = self._append_commit(
            repo,
            branch,
            files,
            header["summary"],
            header.get("description") or "",
            user.name,
            changed,
            deleted,
            frozenset(lfs_added),
        )
        key = (repo.repo_id, branch)
        self.stats.commits[key] = self.stats.commits.get(key, 0) + 1
        return _ok(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._url(repo)}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    # ---------------------------------------------------------------------- LFS

    def _lfs_batch(self, repo: _Repo, payload: dict) -> tuple:
        """git-lfs batch API, upload only: an action for each object this repo does not store yet."""
        if payload.get("operation") != "upload":
            raise _HubError(400, f"Only the 'upload' operation is supported, got {payload.get('operation')!r}")
        if payload.get("hash_algo", "sha256") != "sha256":
            raise _HubError(400, f"Only sha256 object ids are supported, got {payload.get('hash_algo')!r}")
        offered = payload.get("transfers") or ["basic"]
        multipart_used = False
        objects = []
        for item in payload.get("objects", []):
            oid, size = item.get("oid"), item.get("size")
            entry: dict[str, Any] = {"oid": str(oid), "size": size if isinstance(size, int) else -1}
            if not isinstance(oid, str) or not _SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                entry["error"] = {"code": 422, "message": f"Invalid object: oid {oid!r}, size {size!r}"}
                objects.append(entry)
                continue
            stored = repo.lfs.get(oid)
            if stored is not None:
                if len(stored) != size:
                    entry["error"] = {"code": 422, "message": f"Object {oid} is stored with size {len(stored)}"}
                objects.append(entry)  # no "actions": already uploaded
                continue
            multipart = size > self.lfs_part_size and "multipart" in offered
            upload_id = secrets.token_hex(12)
            upload = _LfsUpload((repo.repo_type, repo.repo_id), oid, size, self.lfs_part_size if multipart else None)
            self._uploads[upload_id] = upload
            href = f"{self.storage_endpoint}{LFS_UPLOAD_PATH}{upload_id}"
            action: dict[str, Any] = {"href": href}
            if multipart:
                multipart_used = True
                # The client PUTs part N to header[str(N)] and POSTs the ETags to href.
                action = {
                    "href": href,
                    "header": {
                        "chunk_size": str(self.lfs_part_size),
                        **{str(n): f"{href}/{n}" for n in range(1, upload.part_count + 1)},
                    },
                }
            prefix = _URL_PREFIX[repo.repo_type]
            verify = {"href": f"{self.endpoint}/{prefix}{repo.repo_id}.git/info/lfs/objects/verify"}
            entry.update(authenticated=True, actions={"upload": action, "verify": verify})
            objects.append(entry)
        body = {"transfer": "multipart" if multipart_used else "basic", "objects": objects, "hash_algo": "sha256"}
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, json.dumps(body).encode()

    def _lfs_verify(self, repo: _Repo, payload: dict) -> tuple:
        oid, size = payload.get("oid"), payload.get("size")
        stored = repo.lfs.get(oid) if isinstance(oid, str) else None
        if stored is None:
            raise _HubError(404, f"LFS object {oid} is not in {repo.repo_id}'s LFS storage")
        if size is not None and size != len(stored):
            raise _HubError(422, f"LFS object {oid} is {len(stored)} bytes, not {size}")
        return _ok({})

    def _lfs_transfer(self, method: str, parts: list[str], body: bytes) -> tuple:
        """The storage side of an upload action: basic PUT, multipart part PUT, multipart completion."""
        upload = self._uploads.get(parts[0]) if parts else None
        if upload is None:
            raise _HubError(404, "Unknown or expired LFS upload URL")
        repo = self._repos.get(upload.repo_key)
        if repo is None:
            raise _HubError(404, f"The repo of this LFS upload ({upload.repo_key[1]}) was deleted")
        if method == "PUT" and len(parts) == 1 and upload.part_size is None:
            self._store_lfs(repo, upload, body)
            return 200, {"ETag": _etag()}, b""
        if method == "PUT" and len(parts) == 2 and upload.part_size is not None and parts[1].isdigit():
            number = int(parts[1])
            if not 1 <= number <= upload.part_count:
                raise _HubError(400, f"Part {number} is out of range 1..{upload.part_count}")
            expected = min(upload.part_size, upload.size - (number - 1) * upload.part_size)
            if len(body) != expected:
                raise _HubError(400, f"Part {number} of {upload.oid} must be {expected} bytes, got {len(body)}")
            upload.parts[number] = (body, _etag())
            return 200, {"ETag": upload.parts[number][1]}, b""
        if method == "POST" and len(parts) == 1 and upload.part_size is not None:
            payload = _json(body)
            if payload.get("oid") != upload.oid:
                raise _HubError(400, f"Completion is for {payload.get('oid')!r}, this upload is {upload.oid}")
            if upload.oid in repo.lfs:  # a retried completion after a lost response
                return _ok({})
            listed = {p.get("partNumber"): p.get("etag") for p in payload.get("parts", [])}
            for number in range(1, upload.part_count + 1):
                if number not in upload.parts:
                    raise _HubError(400, f"Part {number} of {upload.oid} was never uploaded")
                if listed.get(number) != upload.parts[number][1]:
                    raise _HubError(400, f"Part {number} of {upload.oid}: ETag {listed.get(number)!r} does not match")
            self._store_lfs(repo, upload, b"".join(upload.parts[n][0] for n in range(1, upload.part_count + 1)))
            upload.parts.clear()
            return _ok({})
        raise _HubError(405, f"{method} is not allowed on this LFS upload URL")

    def _store_lfs(self, repo: _Repo, upload: _LfsUpload, data: bytes | bytearray) -> None:
        if len(data) != upload.size:
            raise _HubError(400, f"LFS object {upload.oid} must be {upload.size} bytes, got {len(data)}")
        if upload.oid in repo.lfs:  # content-addressed: the same bytes again store nothing
            return
        blob = data if isinstance(data, _Blob) else _Blob(data)  # a basic PUT's body is stored as read
        if blob.sha256 != upload.oid:
            raise _HubError(400, f"sha256 mismatch: the batch announced {upload.oid}, the body hashes to {blob.sha256}")
        repo.lfs[upload.oid] = blob
        self.stats.lfs_stored[upload.oid] = self.stats.lfs_stored.get(upload.oid, 0) + 1

    def _note_lfs_put(self, method: str, path: str, nbytes: int) -> None:
        """Count an LFS PUT and its body bytes, before any injected failure or check."""
        if method != "PUT" or not path.startswith(LFS_UPLOAD_PATH):
            return
        upload = self._uploads.get(path[len(LFS_UPLOAD_PATH) :].split("/")[0])
        self.stats.lfs_puts += 1
        if upload is not None:
            self.stats.lfs_bytes[upload.oid] = self.stats.lfs_bytes.get(upload.oid, 0) + nbytes

    def _gated_error(self, user: _User | None) -> _HubError:
        message = "Access to this model is restricted: ask for access on its page, then use a token of a granted user."
        return _HubError(401 if user is None else 403, message, "GatedRepo")

    def _resolve(
        self, method: str, repo_type: str, repo_id: str, revision: str, filename: str, headers: Any, user: _User | None
    ) -> tuple:
        repo = self._readable(repo_type, repo_id, user)
        if not self._can_download(repo, user):
            raise self._gated_error(user)
        commit = self._commit_at(repo, revision)
        data = commit.files.get(filename)
        if data is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        out = {"X-Repo-Commit": commit.oid}
        if filename not in commit.lfs:
            out["ETag"] = f'"{data.git_oid}"'
            return _serve(method, data, headers, out, filename)
        # The client reads an LFS file's sha256 and size from these, before any redirect.
        sha256 = data.sha256
        out.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))})
        if self.lfs_redirect:
            location = f"{self.storage_endpoint}{LFS_CDN_PATH}{sha256}?sig={self._cdn_signature(sha256)}"
            return 302, {**out, "Location": location}, b""
        return _serve(method, data, headers, out, filename)

    def _cdn(self, method: str, oid: str, query: dict[str, list[str]], headers: Any) -> tuple:
        """Where ``lfs_redirect`` sends LFS downloads: a signed URL, no token, Range honoured."""
        if not hmac.compare_digest((query.get("sig") or [""])[0], self._cdn_signature(oid)):
            raise _HubError(403, "Invalid or missing signature on this CDN URL")
        data = next((repo.lfs[oid] for repo in self._repos.values() if oid in repo.lfs), None)
        if data is None:
            raise _HubError(404, f"LFS object {oid} is gone")
        return _serve(method, data, headers, {"ETag": f'"{oid}"'}, "")

    def _sharded_metadata(self, repo: _Repo, filename: str) -> tuple:
        commit = repo.head
        if filename not in commit.files:
            raise _HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        index = json.loads(commit.files[filename])
        folder = filename.rsplit("/", 1)[0] + "/" if "/" in filename else ""
        headers = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            header = _safetensors_header(commit.files.get(folder + shard, b""))
            if header is None:
                raise _HubError(404, f"Shard {shard} is missing or is not a safetensors file", "EntryNotFound")
            headers[shard] = header
        return _ok({"index": index, "headers": headers})


def _etag() -> str:
    """The ETag of a stored upload body: opaque to the client, which only hands a part's back at completion.

    S3 derives it from the body (its MD5), on the storage's CPU; here an MD5 of every
    uploaded byte was the largest cost of the test server, on the uploader's machine.
    A fresh token per body checks the same thing: the completion lists what each part's PUT answered.
    """
    return f'"{secrets.token_hex(16)}"'


def _serve(method: str, data: bytes, headers: Any, out: dict[str, str], filename: str) -> tuple:
    """200 with ``data``, or 206 with the slice a ``Range: bytes=...`` header asks for (GET only)."""
    out = {
        **out,
        "Accept-Ranges": "bytes",
        "Content-Type": mimetypes.guess_type(filename)[0] or "application/octet-stream",
    }
    range_header = headers.get("range")
    if method == "GET" and range_header:
        match = _RANGE_RE.match(range_header)
        if match and (match.group(1) or match.group(2)):
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last), len(data) - 1) if last else len(data) - 1
            else:
                start, end = max(len(data) - int(last), 0), len(data) - 1
            if start >= len(data) or start > end:
                raise _HubError(
                    416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"}
                )
            out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, out, memoryview(data)[start : end + 1]
    return 200, out, data


def _check_path(path: str, *, folder: bool = False) -> str:
    parts = (path[:-1] if folder and path.endswith("/") else path).split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    if parts[0] == ".git":
        raise _HubError(400, f"Cannot write under .git/: {path!r}")
    return path


def _json(body: bytes) -> dict:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as err:
        raise _HubError(400, f"Request body is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise _HubError(400, "Request body must be a JSON object")
    return value


def _ok(payload: Any) -> tuple:
    return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(payload).encode()


class _Handler(_NetChaosHandler, BaseHTTPRequestHandler):
    hub: HubServer  # set on the subclass made by HubServer.start
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server_version = "ptq-test-hub/1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        pass

    def _read(self, nbytes: int) -> tuple[_Blob, bool]:
        """``nbytes`` of the request body, paced by the upload cap, and whether they all came (not EOF first).

        Read in place into one ``_Blob``, a pacing step at a time: an LFS upload's bytes are
        stored as read (64 KiB chunks joined, then copied into the stored blob, were three more copies).
        """
        bucket = self.hub._inbound
        body = _Blob(nbytes)
        got = 0
        with memoryview(body) as view:
            while got < nbytes:
                end = min(nbytes, got + bucket.step)
                bucket.take(end - got)
                while got < end:
                    n = self.rfile.readinto(view[got:end])
                    if not n:
                        break
                    got += n
                if got < end:
                    break
        if got < nbytes:
            del body[got:]
            return body, False
        return body, True

    def _read_body(self) -> tuple[_Blob, bool]:
        """The request body and whether it arrived whole (a client killed mid-upload sends less)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = _Blob()
            while True:
                line = self.rfile.readline()
                if not line:
                    return body, False
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body, True
                chunk, whole = self._read(size)
                body += chunk
                if not whole:
                    return body, False
                self.rfile.readline()
        return self._read(int(self.headers.get("content-length") or 0))

    def _write_body(self, payload: bytes | memoryview) -> None:
        view = memoryview(payload)
        bucket = self.hub._outbound
        if not bucket.rate:
            self.wfile.write(view)
            return
        for start in range(0, len(view), bucket.step):
            piece = view[start : start + bucket.step]
            bucket.take(len(piece))
            self.wfile.write(piece)

    def _send_stream(self, status: int, headers: dict, chunks: Any) -> None:
        """An answer of unknown length: no Content-Length, each chunk flushed, the connection closed at the end."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the follower went away (Ctrl-C detaches)
            pass

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        fault = hub._take_net_fault(method, self.path)  # network chaos (section below)
        if fault is not None and fault.kind in ("rate_limit", "slow_read"):
            self._send_early_fault(fault)
            return
        body, complete = self._read_body()
        split = urlsplit(self.path)
        if complete:
            hub._fire_hooks(method, self.path)
        with hub._lock:
            hub.stats.bytes_in += len(body)
            hub._note_lfs_put(method, split.path, len(body))
            if not complete:  # the client went away mid-request: nothing to answer, nothing to apply
                self.close_connection = True
                return
            hub.requests_log.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}))
            injected = next((f for f in hub._failures if f.matches(method, self.path)), None)
            if injected is not None:
                injected.remaining -= 1
            error = None
            if injected is None or injected.after:
                try:
                    status, headers, payload = hub._handle(
                        method, split.path, parse_qs(split.query), self.headers, body
                    )
                except _HubError as err:
                    error = err
                except Exception as err:  # a bug in this server: answer 500 and keep it for the test to see
                    hub.server_errors.append(traceback.format_exc())
                    error = _HubError(500, f"Test Hub server error: {err!r}")
            if injected is not None and error is None:
                error = _HubError(injected.status, f"Injected failure ({injected.status})")
        if error is not None:
            status, payload = error.status, json.dumps(error.body).encode()
            headers = {"Content-Type": "application/json; charset=utf-8", **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            headers.setdefault("X-Error-Message", error.message.splitlines()[0])
        if fault is not None:
            self._send_faulty(fault, status, headers, payload, head=method == "HEAD")
            return
        if not isinstance(payload, (bytes, bytearray, memoryview)):  # a stream (job logs): sent until it ends
            self._send_stream(status, headers, payload)
            return
        self._send_head(status, headers, len(payload))
        if method != "HEAD" and len(payload):
            try:
                self._write_body(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client hung up mid-download
                self.close_connection = True
                return
            with hub._lock:
                hub.stats.bytes_out += len(payload)


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground, for benchmarks that keep the server out of the measured process.

    Prints one JSON line (``endpoint``, ``storage_endpoint``, ``stats_url``) once serving, then
    serves until SIGINT/SIGTERM. Tokens are ``DEFAULT_USERS``'. Example::

        python tests/hub_server.py --seed bob/src=/data/model --download-bandwidth 100e6 --upload-bandwidth 100e6
    """
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--seed", action="append", default=[], metavar="REPO_ID=FOLDER", help="a repo holding FOLDER's files"
    )
    parser.add_argument("--lfs-threshold", type=int, default=LFS_MIN_SIZE)
    parser.add_argument("--lfs-part-size", type=int, default=LFS_PART_SIZE)
    parser.add_argument("--lfs-redirect", action="store_true")
    parser.add_argument("--upload-bandwidth", type=float, default=None, metavar="BYTES_PER_S")
    parser.add_argument("--download-bandwidth", type=float, default=None, metavar="BYTES_PER_S")
    args = parser.parse_args(argv)
    server = HubServer(
        lfs_threshold=args.lfs_threshold,
        lfs_part_size=args.lfs_part_size,
        lfs_redirect=args.lfs_redirect,
        upload_bandwidth=args.upload_bandwidth,
        download_bandwidth=args.download_bandwidth,
    )
    for seed in args.seed:
        repo_id, sep, folder = seed.partition("=")
        root = pathlib.Path(folder)
        if not sep or not root.is_dir():
            parser.error(f"--seed takes REPO_ID=FOLDER with an existing folder, got {seed!r}")
        files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        server.seed_repo(repo_id, files)  # type: ignore[arg-type]
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start(args.port)
    info = {
        "endpoint": server.endpoint,
        "storage_endpoint": server.storage_endpoint,
        "stats_url": server.endpoint + STATS_PATH,
    }
    print(json.dumps(info), flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
