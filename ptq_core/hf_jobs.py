"""Run a streamed Hub job as a Hugging Face Job on the token's own account (``--on-jobs``).

The job is the same ``quantize_to_hub`` a local ``ptq run`` makes, executed in a container
on the Hub's hardware (``hf_jobs_runtime``: the running ptq-hub source, pinned
requirements). This module launches it, follows its log (``job_events`` lines become
progress callbacks again, the ``result`` line becomes an ``HfJobResult`` that prints what
a local run prints), and turns the Jobs API's failures into typed errors.

The token travels as the job's ``HF_TOKEN`` *secret*: never in the command, the
environment values or a label, which the job's page and ``inspect_job`` show.

Parts map onto jobs: ``run_on_hf_jobs(..., parts=K)`` pins the source revision, launches K
part jobs (each stages its shards on the target's staging branch), then one finalize job
that makes the one commit on ``main``. A failed or cancelled job keeps what it staged;
running the same request again resumes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from . import constants
from ._http import HubHttp, resolve_token
from .errors import (
    HfJobsError,
    InvalidOptionError,
    JobFailedError,
    JobsCreditsError,
    JobsPermissionError,
    JobTimedOutError,
    PtqError,
    UnknownFlavorError,
)
from .hf_jobs_runtime import UV_IMAGE, job_command, upload_runtime
from .http_errors import short, status_of
from .hubjob import plan_hub_model, plan_hub_parts
from .job import make_job
from .job_events import parse_event
from .source import ProgressCallback

logger = logging.getLogger(__name__)

FLAVORS: dict[str, str] = {
    "cpu-basic": "2 vCPU, 16 GB RAM: small models (up to ~3B)",
    "cpu-upgrade": "8 vCPU, 32 GB RAM: most models; the default",
    "cpu-xl": "16 vCPU, 124 GB RAM: the largest experts and fused groups",
    "a10g-small": "4 vCPU, 15 GB RAM, A10G 24 GB: GPU quantization of small models",
    "a100-large": "12 vCPU, 142 GB RAM, A100 80 GB: GPU quantization of large models",
}
"""The short list the front ends offer (flavor -> what it fits); any flavor the Jobs API knows is accepted."""

FLAVOR_RAM_GB = {"cpu-basic": 16, "cpu-upgrade": 32, "cpu-xl": 124}
"""RAM of the CPU flavors, for ``suggest_flavor`` (a streamed job needs RAM, not a GPU)."""

DEFAULT_FLAVOR = "cpu-upgrade"
AUTO_FLAVOR = "auto"
"""The flavor name that asks for the plan's pick (``resolve_flavor``): CLI, Action and Space."""
_RESUME_HINT = "Its staged shards are kept: run the same command again and it resumes from them."


@dataclass(frozen=True)
class HfJob:
    """A launched Hugging Face Job: its id, namespace and page."""

    id: str
    namespace: str
    url: str
    flavor: str
    label: str


@dataclass(frozen=True)
class HfJobResult:
    """What a finished job reported in its ``result`` line (see ``hf_job_entry.result_fields``)."""

    job: HfJob
    repo_id: str
    repo_url: str
    commit_sha: str
    scheme: str
    size_before: int
    size_after: int
    ratio: float
    markdown: str

    def to_markdown(self) -> str:
        """Exactly what ``HubResult.to_markdown`` printed in the job: a local run's table."""
        return self.markdown


def check_flavor(flavor: str) -> str:
    """``flavor`` if the Jobs API runs it (``huggingface_hub.JobHardware``).

    Raises:
        UnknownFlavorError: any other name, with the short list.
    """
    from huggingface_hub import JobHardware

    known = {hw.value for hw in JobHardware}
    if not isinstance(flavor, str) or flavor.strip() not in known:
        raise UnknownFlavorError(
            f"{flavor!r} is not a Hugging Face Jobs flavor. Pick one of {', '.join(FLAVORS)} "
            f"(all: {', '.join(sorted(known))}).")
    return flavor.strip()


def suggest_flavor(peak_ram: int) -> str:
    """The smallest CPU flavor whose RAM holds a job's peak (``Plan.footprint.peak_ram``) with room for Python."""
    need_gb = peak_ram / 1e9 * 1.25 + 4  # the interpreter, torch and the client take ~4 GB before any tensor
    return next((name for name, ram in FLAVOR_RAM_GB.items() if ram >= need_gb), "cpu-xl")


def plan_flavor(source: str, scheme: str | None = None, *, token: str | None = None, **options: Any) -> str:
    """The flavor the plan says fits this job: ``suggest_flavor`` of its peak RAM (headers only, no weight read)."""
    plan = plan_hub_model(make_job(source, scheme, hub_only=True, **options), token=token)
    return suggest_flavor(plan.footprint.peak_ram if plan.footprint else 0)


def resolve_flavor(flavor: str | None, source: str, scheme: str | None = None, *, token: str | None = None,
                   **options: Any) -> str:
    """``flavor`` checked; ``None`` or ``"auto"`` (every front end's word for it): the one ``plan_flavor`` picks.

    Raises:
        UnknownFlavorError: a name the Jobs API does not run.
    """
    if flavor is None or (isinstance(flavor, str) and flavor.strip().lower() == AUTO_FLAVOR):
        return plan_flavor(source, scheme, token=token, **options)
    return check_flavor(flavor)


def _jobs_error(http: HubHttp, namespace: str, flavor: str) -> Callable[[Exception], PtqError | None]:
    """Map a refused ``run_job`` to the error that says what to do."""

    def translate(err: Exception) -> PtqError | None:
        status, reason = status_of(err), short(err)
        if status in (401, 403):
            return JobsPermissionError(
                f"This token may not run Hugging Face Jobs in '{namespace}' (HTTP {status}: {reason}). Use a token "
                f"with the 'jobs' permission (fine-grained 'Start and manage Jobs', or a write token) from "
                f"{http.endpoint}/settings/tokens; in the Space, sign in again and grant the jobs scope.")
        if status == 402:
            return JobsCreditsError(
                f"'{namespace}' has no credit left for Hugging Face Jobs (HTTP 402: {reason}). Add credits at "
                f"{http.endpoint}/settings/billing, or run without --on-jobs on your own machine.")
        if status == 400 and "flavor" in reason.lower():
            return UnknownFlavorError(f"The Jobs API refused flavor {flavor!r} ({reason}). Pick one of {', '.join(FLAVORS)}.")
        return None

    return translate


def _http(token: str | None) -> HubHttp:
    return HubHttp(resolve_token(token, required=True))


def _namespace(http: HubHttp, namespace: str | None) -> str:
    if namespace:
        return namespace
    return http.call("read the token's user", lambda: http.api.whoami(), role="target", repo_id="whoami")["name"]


def launch_hf_job(
    source: str,
    scheme: str | None = None,
    *,
    flavor: str = DEFAULT_FLAVOR,
    token: str | None = None,
    timeout: str | int | None = None,
    finalize: int | None = None,
    **options: Any,
) -> HfJob:
    """Launch ``quantize_to_hub(make_job(source, scheme, **options))`` (or its finalize step) as a Job.

    Args:
        source, scheme, options: ``make_job``'s arguments (JSON values only: they travel in the command).
        flavor: the hardware (``FLAVORS``; any ``huggingface_hub.JobHardware`` value).
        token: the caller's token (else ``HF_TOKEN`` / the login); it becomes the job's secret.
        timeout: the job's limit (``300``, ``"90m"``, ``"6h"``); the Hub's default when ``None``.
        finalize: ``K``: the job runs ``finalize_hub_job(job, parts=K)`` instead.

    Returns:
        The launched job (its page: ``.url``).

    Raises:
        UnknownFlavorError, InvalidOptionError (and every ``make_job`` error): before anything is sent.
        JobsPermissionError / JobsCreditsError: the Jobs API refused the launch.
        TokenError, HubNetworkError...: as any Hub call.
    """
    flavor = check_flavor(flavor)
    job = make_job(source, scheme, hub_only=True, **options)  # every local check first
    try:
        spec = json.dumps({"source": source, "scheme": scheme, "options": options, "finalize": finalize})
    except TypeError as err:
        raise InvalidOptionError(f"A job on Hugging Face Jobs takes plain option values (text, numbers, lists): {err}.") from err
    http = _http(token)
    namespace = _namespace(http, None)
    runtime = upload_runtime(http, namespace)
    # Unbuffered: the log is the job's only channel back. The endpoint: the Hub the caller uses.
    env = {"PYTHONUNBUFFERED": "1", "PTQ_DISABLE_PROGRESS": "1", "HF_ENDPOINT": constants.HF_ENDPOINT}
    label = job.label + (f" (finalize {finalize} parts)" if finalize else f" (part {job.part[0]}/{job.part[1]})" if job.part else "")
    info = http.call(
        "launch a Hugging Face Job",
        lambda: http.api.run_job(image=UV_IMAGE, command=job_command(runtime, spec), env=env,
                                 secrets={"HF_TOKEN": http.token}, flavor=flavor, timeout=timeout,
                                 namespace=namespace, labels={"ptq-hub": "run"}),
        role="target", repo_id=namespace, translate=_jobs_error(http, namespace, flavor), retry=False,
    )
    launched = HfJob(info.id, namespace, info.url, flavor, label)
    logger.info("Launched %s as Hugging Face Job %s (%s)", label, info.id, info.url)
    return launched


def _job_ref(job: HfJob | str, http: HubHttp, namespace: str | None) -> HfJob:
    """A job from a handle, an id, or ``namespace/id``."""
    if isinstance(job, HfJob):
        return job
    ns, _, job_id = job.rpartition("/")
    ns = _namespace(http, ns or namespace)
    return HfJob(job_id, ns, f"{http.endpoint}/jobs/{ns}/{job_id}", "", job_id)


def _inspect(http: HubHttp, job: HfJob) -> Any:
    """The job's ``JobInfo``; a job that is not there (or not this token's to see) is named as such."""

    def missing(err: Exception) -> PtqError | None:
        if status_of(err) in (401, 403, 404):
            return HfJobsError(f"There is no Hugging Face Job {job.id} in '{job.namespace}' that this token can see "
                               f"(HTTP {status_of(err)}). Check the id (--on-jobs printed it) and the token's account.")
        return None

    return http.call("inspect the job", lambda: http.api.inspect_job(job_id=job.id, namespace=job.namespace),
                     role="target", repo_id=job.namespace, translate=missing)


def _events(http: HubHttp, job: HfJob, *, follow: bool) -> Iterator[str]:
    _inspect(http, job)  # a clear error for a wrong id before the log stream is opened
    yield from http.api.fetch_job_logs(job_id=job.id, namespace=job.namespace, follow=follow)


def follow_hf_job(
    job: HfJob | str,
    *,
    progress: ProgressCallback | None = None,
    on_log: Callable[[str], None] | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> HfJobResult:
    """Follow a job's log until it ends: progress events to ``progress``, other lines to ``on_log``.

    Returns:
        The job's result, printed by ``to_markdown()`` as a local run prints it.

    Raises:
        JobTimedOutError: the job ran past its timeout.
        JobFailedError: it ended in ERROR (with the job's own error message), CANCELED or DELETED.
    """
    http = _http(token)
    job = _job_ref(job, http, namespace)
    result: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    for line in _events(http, job, follow=True):
        event = parse_event(line)
        if event is None:
            if on_log is not None:
                on_log(line)
        elif event["event"] == "progress" and progress is not None:
            progress(str(event["stage"]), int(event["done"]), int(event["total"]))
        elif event["event"] == "result":
            result = event
        elif event["event"] == "error":
            failure = event
    # The log can end a moment before the stage turns terminal.
    info = http.call("wait for the job's end", lambda: http.api.wait_for_job(
        job.id, namespace=job.namespace, poll_interval=0.5, timeout=60), role="target", repo_id=job.namespace)
    return _outcome(job, info, result, failure)


def _outcome(job: HfJob, info: Any, result: dict[str, Any] | None, failure: dict[str, Any] | None) -> HfJobResult:
    stage, message = str(info.status.stage), info.status.message or ""
    if stage == "COMPLETED" and result is not None:
        fields = {k: result[k] for k in ("repo_id", "repo_url", "commit_sha", "scheme", "size_before", "size_after",
                                         "ratio", "markdown")}
        return HfJobResult(job=job, **fields)
    where = f"Hugging Face Job {job.id} ({job.label}, {job.url})"
    if "timeout" in message.lower() or "timed out" in message.lower():
        raise JobTimedOutError(f"{where} ran past its timeout and was stopped ({message}). {_RESUME_HINT} "
                               "Give it more time (--jobs-timeout) or a bigger flavor.")
    if failure is not None:
        raise JobFailedError(f"{where} failed: {failure['type']}: {failure['message']}")
    if stage == "COMPLETED":
        raise JobFailedError(f"{where} ended without a result line; read its log: ptq jobs logs {job.id}")
    raise JobFailedError(f"{where} ended {stage}{f' ({message})' if message else ''}. {_RESUME_HINT} "
                         f"Its log: ptq jobs logs {job.id}")


def hf_job_stage(job: HfJob | str, *, token: str | None = None, namespace: str | None = None) -> tuple[HfJob, str, str]:
    """``(job, stage, message)`` of a job now (``SCHEDULING``, ``RUNNING``, ``COMPLETED``, ``ERROR``...)."""
    http = _http(token)
    job = _job_ref(job, http, namespace)
    info = _inspect(http, job)
    return job, str(info.status.stage), info.status.message or ""


def hf_job_logs(job: HfJob | str, *, follow: bool = False, token: str | None = None,
                namespace: str | None = None) -> Iterator[str]:
    """The job's log lines as the container printed them (``follow``: until it ends)."""
    http = _http(token)
    yield from _events(http, _job_ref(job, http, namespace), follow=follow)


def cancel_hf_job(job: HfJob | str, *, token: str | None = None, namespace: str | None = None) -> HfJob:
    """Cancel a job; what it staged stays on the target's staging branch (a rerun resumes)."""
    http = _http(token)
    job = _job_ref(job, http, namespace)
    _inspect(http, job)
    http.call("cancel the job", lambda: http.api.cancel_job(job_id=job.id, namespace=job.namespace),
              role="target", repo_id=job.namespace)
    return job


def run_on_hf_jobs(
    source: str,
    scheme: str | None = None,
    *,
    parts: int | None = None,
    finalize: int | None = None,
    flavor: str | None = None,
    token: str | None = None,
    timeout: str | int | None = None,
    progress: ProgressCallback | None = None,
    on_launch: Callable[[HfJob], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    **options: Any,
) -> HfJobResult:
    """Launch the job (or ``parts`` part jobs, then a finalize job) and follow it to its result.

    Every job is handed to ``on_launch`` as soon as it exists (print its URL; cancel it on
    Ctrl-C). Part jobs run at once on the Hub; they are followed one after the other.
    ``flavor=None`` or ``"auto"`` takes the one the plan says fits (``resolve_flavor``). ``finalize=K`` runs only
    the finalize step of a K-part job (its parts staged before, by jobs or by other machines).

    Raises:
        InvalidOptionError: ``parts`` together with ``finalize`` or a ``part``.
        the errors of ``launch_hf_job`` and ``follow_hf_job``; ``plan_hub_parts``' for ``parts``.
    """
    if parts and (finalize or options.get("part")):
        raise InvalidOptionError("--parts K launches every part and the finalize job itself; drop --part / --finalize.")
    common = {"flavor": resolve_flavor(flavor, source, scheme, token=token, **options), "token": token,
              "timeout": timeout}
    if not parts:
        launched = launch_hf_job(source, scheme, **common, finalize=finalize, **options)
        if on_launch is not None:
            on_launch(launched)
        return follow_hf_job(launched, progress=progress, on_log=on_log, token=token)
    split = plan_hub_parts(make_job(source, scheme, hub_only=True, **options), parts, token=token)
    pinned = {**options, "revision": split.revision}
    part_jobs = []
    for index in range(1, len(split.parts) + 1):
        part_jobs.append(launch_hf_job(source, scheme, **common, **pinned, part=f"{index}/{len(split.parts)}"))
        if on_launch is not None:
            on_launch(part_jobs[-1])
    for part_job in part_jobs:
        follow_hf_job(part_job, progress=progress, on_log=on_log, token=token)
    final = launch_hf_job(source, scheme, **common, **pinned, finalize=len(split.parts))
    if on_launch is not None:
        on_launch(final)
    return follow_hf_job(final, progress=progress, on_log=on_log, token=token)
