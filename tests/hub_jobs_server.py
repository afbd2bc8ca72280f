"""The Hugging Face Jobs API of the test Hub (``tests/hub_server.py`` mounts it at ``/api/jobs``).

Routes, as ``huggingface_hub`` 2.x calls them: ``POST /api/jobs/{ns}`` (``run_job``),
``GET /api/jobs/{ns}/{id}`` (``inspect_job``, ``wait_for_job``), ``GET .../logs``
(``fetch_job_logs``: server-sent events, streamed while the job runs, replayed from the
start on every request as the Hub does), ``POST .../cancel`` (``cancel_job``). Stages are
the Hub's: ``SCHEDULING``, ``RUNNING``, ``COMPLETED``, ``ERROR``, ``CANCELED``.

A job really runs: its command is a local subprocess (its own process group) with the
job's environment and secrets, a fresh ``HOME``, and ``extra_env`` (the test's settings:
no Xet, which this Hub does not speak). The one image it knows is uv's
(``UV_IMAGE``): a ``uv`` on the job's ``PATH`` checks that every ``--with NAME==VERSION`` pin
is the version installed here (the image's Python is this interpreter) and runs the rest
of the command with it. Any other image ends the job in ERROR.

Refusals, Hub style: no token 401; a read-only token, a user in ``no_permission`` (a token
without the jobs scope), or a namespace the user is not in, 403; a namespace in ``no_credit`` 402; a flavor ``huggingface_hub.JobHardware`` does not
list 400; ``timeoutSeconds`` elapsed: the job is killed, ERROR with a "timeout" message.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")

_UV_SHIM = '''#!{python}
"""uv in the test image: check the pins against this interpreter, then run the command with it."""
import os, sys
from importlib import metadata
args = sys.argv[1:]
if not args or args[0] != "run":
    sys.exit("test image uv: only `uv run` is available")
args, pins = args[1:], []
while args and args[0].startswith("-"):
    flag = args.pop(0)
    if flag == "--with":
        pins.append(args.pop(0))
    elif flag == "--python":
        args.pop(0)
    elif flag != "--no-project":
        sys.exit(f"test image uv: unknown option {{flag}}")
for pin in pins:
    name, _, version = pin.partition("==")
    installed = metadata.version(name).split("+")[0]
    if installed != version:
        sys.exit(f"test image uv: {{pin}} cannot be installed here ({{name}} {{installed}} is)")
if not args or args[0] != "python":
    sys.exit("test image uv: the command must be `python ...`")
os.execv(sys.executable, [sys.executable, *args[1:]])
'''


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    """One job: its spec, its stage, its log (``(time, line)``), its process."""

    id: str
    namespace: str
    spec: dict[str, Any]
    created: float
    stage: str = "SCHEDULING"
    message: str | None = None
    started: float | None = None
    finished: float | None = None
    log: list[tuple[float, str]] = field(default_factory=list)
    process: subprocess.Popen | None = None
    stop_reason: str | None = None  # "canceled" or "timeout", set before the process is killed

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "id": self.id,
            "createdAt": _iso(self.created),
            "startedAt": _iso(self.started) if self.started else None,
            "finishedAt": _iso(self.finished) if self.finished else None,
            "dockerImage": spec.get("dockerImage"),
            "spaceId": spec.get("spaceId"),
            "command": spec.get("command"),
            "arguments": spec.get("arguments", []),
            "environment": spec.get("environment", {}),
            "secrets": sorted(spec.get("secrets", {})),  # names only: the Hub never returns a secret's value
            "flavor": spec.get("flavor"),
            "labels": spec.get("labels"),
            "status": {"stage": self.stage, "message": self.message},
            "owner": {"id": self.namespace, "name": self.namespace, "type": "user"},
        }


class JobsApi:
    """The Jobs routes and their running jobs; ``HubServer.jobs`` is one."""

    def __init__(self, error: type[Exception]) -> None:
        self._error = error  # hub_server._HubError: (status, message)
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._image_dir = Path(tempfile.mkdtemp(prefix="ptq-test-image-"))
        shim = self._image_dir / "bin" / "uv"
        shim.parent.mkdir()
        shim.write_text(_UV_SHIM.format(python=sys.executable))
        shim.chmod(0o755)
        self.extra_env: dict[str, str] = {"HF_HUB_DISABLE_XET": "1"}
        self.no_credit: set[str] = set()
        self.no_permission: set[str] = set()  # users whose token lacks the jobs scope (fine-grained)
        self.launched: list[Job] = []  # every job created, in order (tests read their specs)

    # ------------------------------------------------------------------ helpers
    def reset(self) -> None:
        """Kill every running job and forget them all."""
        self.stop()
        with self._cond:
            self._jobs.clear()
            self.launched.clear()
            self.no_credit.clear()
            self.no_permission.clear()
            self.extra_env = {"HF_HUB_DISABLE_XET": "1"}

    def stop(self) -> None:
        """Kill every running job (the server is going away)."""
        with self._cond:
            running = [job for job in self._jobs.values() if job.stage not in TERMINAL]
        for job in running:
            self._kill(job, "canceled")

    def wait_for_log(self, job_id: str, text: str, timeout: float = 120.0) -> None:
        """Block until a line containing ``text`` is in the job's log (tests: act at a known point)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for _, line in self._jobs[job_id].log):
                left = deadline - time.monotonic()
                if left <= 0 or self._jobs[job_id].stage in TERMINAL:
                    raise TimeoutError(f"job {job_id} never logged {text!r} (stage {self._jobs[job_id].stage})")
                self._cond.wait(min(left, 0.5))

    # ------------------------------------------------------------------- routes
    def handle(self, method: str, parts: list[str], user: Any, body: bytes, known_flavors: set[str]) -> tuple:
        """Route ``/api/jobs/{parts...}``; returns (status, headers, payload bytes or an iterator of bytes)."""
        if user is None:
            raise self._error(401, "Invalid credentials in Authorization header")
        if not parts or not user.owns(parts[0]):
            raise self._error(403, f"You don't have the rights to run or see jobs in '{parts[0] if parts else ''}'")
        namespace = parts[0]
        if len(parts) == 1 and method == "POST":
            return self._create(namespace, user, json.loads(body or b"{}"), known_flavors)
        job = self._jobs.get(parts[1]) if len(parts) > 1 else None
        if job is None or job.namespace != namespace:
            raise self._error(404, "Job not found")
        if len(parts) == 2 and method == "GET":
            return _json(job.to_json())
        if parts[2:] == ["logs"] and method == "GET":
            return 200, {"Content-Type": "text/event-stream"}, self._stream_log(job)
        if parts[2:] == ["cancel"] and method == "POST":
            self._kill(job, "canceled")
            return _json({})
        raise self._error(404, f"Route not found: {method} /api/jobs/{'/'.join(parts)}")

    def _create(self, namespace: str, user: Any, spec: dict, known_flavors: set[str]) -> tuple:
        if not user.can_write or user.name in self.no_permission:
            raise self._error(403, "This token does not have the permission to start jobs (jobs scope)")
        if namespace in self.no_credit:
            raise self._error(402, "Payment Required: insufficient pre-paid credits to run jobs")
        if spec.get("flavor") not in known_flavors:
            raise self._error(400, f"Invalid flavor: {spec.get('flavor')!r}")
        if not isinstance(spec.get("command"), list) or not spec["command"]:
            raise self._error(400, "A job needs a command")
        job = Job(secrets.token_hex(12), namespace, spec, time.time())
        with self._cond:
            self._jobs[job.id] = job
            self.launched.append(job)
        threading.Thread(target=self._run, args=(job,), name=f"job-{job.id}", daemon=True).start()
        return _json(job.to_json())

    # ------------------------------------------------------------------ running
    def _run(self, job: Job) -> None:
        spec = job.spec
        if spec.get("dockerImage") != UV_IMAGE:
            self._finish(job, "ERROR", f"Image {spec.get('dockerImage') or spec.get('spaceId')!r} is not available here")
            return
        home = Path(tempfile.mkdtemp(prefix=f"ptq-job-home-{job.id}-"))
        env = {"PATH": f"{self._image_dir / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(home),
               "HF_HOME": str(home / ".cache" / "huggingface"), "PTQ_HUB_CACHE": str(home / ".cache" / "ptq-hub"),
               **self.extra_env, **spec.get("environment", {}), **spec.get("secrets", {})}
        with self._cond:
            if job.stop_reason is not None:  # canceled while scheduling
                return
            job.process = subprocess.Popen(
                [*spec["command"], *spec.get("arguments", [])], env=env, cwd=home, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
            job.stage, job.started = "RUNNING", time.time()
            job.log.append((job.started, f"===== Job started at {_iso(job.started)} ====="))
            self._cond.notify_all()
        timeout = spec.get("timeoutSeconds")
        timer = threading.Timer(float(timeout), self._kill, (job, "timeout")) if timeout else None
        if timer is not None:
            timer.start()
        for line in job.process.stdout:
            with self._cond:
                job.log.append((time.time(), line.rstrip("\n")))
                self._cond.notify_all()
        code = job.process.wait()
        if timer is not None:
            timer.cancel()
        if job.stop_reason == "timeout":
            self._finish(job, "ERROR", f"Job timeout: stopped after {timeout} seconds")
        elif job.stop_reason == "canceled":
            self._finish(job, "CANCELED", None)
        else:
            self._finish(job, "COMPLETED" if code == 0 else "ERROR", None if code == 0 else f"Job failed with exit code: {code}")

    def _finish(self, job: Job, stage: str, message: str | None) -> None:
        with self._cond:
            job.stage, job.message, job.finished = stage, message, time.time()
            self._cond.notify_all()

    def _kill(self, job: Job, reason: str) -> None:
        with self._cond:
            if job.stage in TERMINAL:
                return
            job.stop_reason = reason
            process = job.process
        if process is None:
            self._finish(job, "CANCELED" if reason == "canceled" else "ERROR", None)
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _stream_log(self, job: Job) -> Iterator[bytes]:
        """Every log event from the first, then new ones as they come, until the job has ended."""
        sent = 0
        while True:
            with self._cond:
                while sent == len(job.log) and job.stage not in TERMINAL:
                    self._cond.wait(1.0)
                batch, done = job.log[sent:], job.stage in TERMINAL
            for moment, line in batch:
                yield b"data: " + json.dumps({"timestamp": _iso(moment), "data": line}).encode() + b"\n\n"
            sent += len(batch)
            if done and sent == len(job.log):
                return


def _json(payload: Any) -> tuple:
    return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(payload).encode()
