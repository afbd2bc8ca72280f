"""Run a streamed Hub job as a Hugging Face Job on the token's own account (``--on-jobs``).

The job is the same ``quantize_to_hub`` a local ``ptq run`` makes, executed in a container
on the Hub's hardware (``hf_jobs_runtime``: the running ptq-hub source, pinned
requirements). This module launches it, follows its log (``job_events`` lines become
progress callbacks again, the ``result`` line becomes the values a local run returns:
``hf_job_results``), and turns the Jobs API's failures into typed errors.

Several schemes (``scheme="FP8_BLOCK,NVFP4A16,W4A16"``) are ONE job: it reads the source
once and writes every scheme (``quantize_many_to_hub`` in the container), and the follower
returns its ``ManyResult``, a failed scheme as its error, the others as done.

The token travels as the job's ``HF_TOKEN`` *secret*: never in the command, the
environment values or a label, which the job's page and ``inspect_job`` show.

Parts map onto jobs: ``run_on_hf_jobs(..., parts=K)`` pins the source revision, launches K
part jobs (each stages its shards on the target's staging branch), then one finalize job
that makes the one commit on ``main``. A failed or cancelled job keeps what it staged;
running the same request again resumes. Parts take one scheme: each scheme cuts its own
output shards into parts, so a part job of several schemes would read more than its share.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

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
from .hf_job_results import HfJob, HfJobResult, read_result
from .hf_jobs_runtime import UV_IMAGE, Runtime, job_command, upload_runtime
from .http_errors import short, status_of
from .hubjob import ManyResult, plan_hub_models, plan_hub_parts
from .job import Job, make_jobs
from .job_events import parse_event
from .job_plan import JobPlan
from .source import ProgressCallback

__all__ = ["HfJob", "HfJobResult", "cancel_hf_job", "follow_hf_job", "hf_job_logs", "launch_hf_job",
           "fan_out_need", "plan_flavor", "resolve_flavor", "run_on_hf_jobs", "suggest_flavor"]

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

FLAVOR_DISK_GB = {"cpu-basic": 20}
"""Ephemeral storage where the Hub documents it (``huggingface_hub.JobHardwareInfo``'s example: cpu-basic
20 GB); a flavor not listed is taken to hold what a job needs, and a job that does not fit is refused
by its own disk check (``DiskSpaceError``) before anything is written."""

DEFAULT_FLAVOR = "cpu-upgrade"
AUTO_FLAVOR = "auto"
"""The flavor name that asks for the plan's pick (``resolve_flavor``): CLI, Action and Space."""
_RESUME_HINT = "Its staged shards are kept: run the same command again and it resumes from them."


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


def suggest_flavor(peak_ram: int, disk: int = 0) -> str:
    """The smallest CPU flavor whose RAM holds a job's peak with room for Python, and whose disk holds ``disk``.

    ``peak_ram``: ``Plan.footprint.peak_ram`` (or ``fan_out_need``'s); ``disk``: the local
    disk the job cannot do without (its largest output shard; one per scheme in a fan-out).
    """
    need_gb = peak_ram / 1e9 * 1.25 + 4  # the interpreter, torch and the client take ~4 GB before any tensor
    disk_gb = disk / 1e9 / 0.9  # the job's disk budget is 90% of the free space
    return next((name for name, ram in FLAVOR_RAM_GB.items()
                 if ram >= need_gb and FLAVOR_DISK_GB.get(name, disk_gb) >= disk_gb), "cpu-xl")


def fan_out_need(plans: Sequence[JobPlan]) -> tuple[int, int]:
    """``(peak RAM, disk)`` of ONE job that reads the source once for every plan's scheme.

    One scheme: its footprint's peak RAM and its largest output shard. Several (``fanout``):
    one shared read-ahead window and worker pool, where each worker holds a joint unit's
    bytes (at most the largest unit of any scheme) while it quantizes each scheme's member
    of it, so the peak is the largest scheme's plus one largest unit per worker. Disk: each
    scheme's gate gets an equal share of the budget and admits whole shards, so the budget
    must hold the largest shard once per scheme.
    """
    footprints = [p.footprint for p in plans]
    largest_shard = max(f.largest_shard_bytes for f in footprints)
    if len(plans) == 1:
        return footprints[0].peak_ram, largest_shard
    workers = max(p.budgets.workers for p in plans)
    ram = max(f.peak_ram for f in footprints) + workers * max(f.largest_unit_bytes for f in footprints)
    return ram, len(plans) * largest_shard


def plan_flavor(source: str, scheme: object = None, *, token: str | None = None, **options: Any) -> str:
    """The flavor the plan says fits this job (one scheme or several from one read): headers only, no weight read."""
    return _fitting_flavor(make_jobs(source, scheme, hub_only=True, **options), token)


def _fitting_flavor(jobs: Sequence[Job], token: str | None) -> str:
    """``suggest_flavor`` of the plans of ``jobs`` (one read for all of them): headers only."""
    return suggest_flavor(*fan_out_need(plan_hub_models(jobs, token=token, hub_only=True)))


def _is_auto(flavor: str | None) -> bool:
    return flavor is None or (isinstance(flavor, str) and flavor.strip().lower() == AUTO_FLAVOR)


def resolve_flavor(flavor: str | None, source: str, scheme: object = None, *, token: str | None = None,
                   **options: Any) -> str:
    """``flavor`` checked; ``None`` or ``"auto"`` (every front end's word for it): the one ``plan_flavor`` picks.

    Raises:
        UnknownFlavorError: a name the Jobs API does not run.
    """
    if _is_auto(flavor):
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


def _one_scheme_for_parts(schemes: int) -> str:
    return (f"{schemes} schemes run as ONE job that reads the source once for all of them; --parts, --part and "
            "--finalize take one scheme: each scheme cuts its own output shards into parts, so a part job of "
            "several schemes would read more than its share of the source. Drop --parts to run every scheme in one "
            "job, or give one --scheme to split it into parts.")


def _request(source: str, scheme: object, options: dict[str, Any], finalize: int | None,
             collection: str | None) -> tuple[tuple[Job, ...], str, str]:
    """The request's jobs (every local check, before anything is sent), the job's spec (JSON) and its label.

    Raises:
        InvalidOptionError (and every ``make_jobs`` error): a bad option, or options that are not plain values.
    """
    jobs = make_jobs(source, scheme, hub_only=True, **options)
    if len(jobs) > 1 and (finalize or jobs[0].part):
        raise InvalidOptionError(_one_scheme_for_parts(len(jobs)))
    try:
        spec = json.dumps({"source": source, "scheme": scheme, "options": options, "finalize": finalize,
                           "collection": collection})
    except TypeError as err:
        raise InvalidOptionError(f"A job on Hugging Face Jobs takes plain option values (text, numbers, lists): {err}.") from err
    if len(jobs) > 1:
        return jobs, spec, f"{jobs[0].source} -> {', '.join(j.scheme_name for j in jobs)}"
    job = jobs[0]
    suffix = f" (finalize {finalize} parts)" if finalize else f" (part {job.part[0]}/{job.part[1]})" if job.part else ""
    return jobs, spec, job.label + suffix


@dataclass(frozen=True)
class _Launcher:
    """What every job of one request shares: one client, one ``whoami``, one runtime check, one set of pins.

    ``run_on_hf_jobs(parts=K)`` launches K+1 jobs through one launcher.
    """

    http: HubHttp
    namespace: str
    runtime: Runtime

    @classmethod
    def open(cls, token: str | None) -> _Launcher:
        http = _http(token)
        namespace = _namespace(http, None)
        return cls(http, namespace, upload_runtime(http, namespace))

    def launch(self, spec: str, label: str, flavor: str, timeout: str | int | None) -> HfJob:
        # Unbuffered: the log is the job's only channel back. The endpoint: the Hub the caller uses.
        env = {"PYTHONUNBUFFERED": "1", "PTQ_DISABLE_PROGRESS": "1", "HF_ENDPOINT": constants.HF_ENDPOINT}
        http, namespace = self.http, self.namespace
        info = http.call(
            "launch a Hugging Face Job",
            lambda: http.api.run_job(image=UV_IMAGE, command=job_command(self.runtime, spec), env=env,
                                     secrets={"HF_TOKEN": http.token}, flavor=flavor, timeout=timeout,
                                     namespace=namespace, labels={"ptq-hub": "run"}),
            role="target", repo_id=namespace, translate=_jobs_error(http, namespace, flavor), retry=False,
        )
        logger.info("Launched %s as Hugging Face Job %s (%s)", label, info.id, info.url)
        return HfJob(info.id, namespace, info.url, flavor, label)


def launch_hf_job(
    source: str,
    scheme: object = None,
    *,
    flavor: str = DEFAULT_FLAVOR,
    token: str | None = None,
    timeout: str | int | None = None,
    finalize: int | None = None,
    collection: str | None = None,
    **options: Any,
) -> HfJob:
    """Launch ``quantize_to_hub(make_job(source, scheme, **options))`` (or its finalize step) as a Job.

    Args:
        source, scheme, options: ``make_jobs``' arguments (JSON values only: they travel in the command).
            Several schemes (``"FP8_BLOCK,W4A16"`` or a list): one job, one read, every scheme.
        flavor: the hardware (``FLAVORS``; any ``huggingface_hub.JobHardware`` value).
        token: the caller's token (else ``HF_TOKEN`` / the login); it becomes the job's secret.
        timeout: the job's limit (``300``, ``"90m"``, ``"6h"``); the Hub's default when ``None``.
        finalize: ``K``: the job runs ``finalize_hub_job(job, parts=K)`` instead.
        collection: a collection title: the job adds its finished repo(s) to it (created when missing).

    Returns:
        The launched job (its page: ``.url``).

    Raises:
        UnknownFlavorError, InvalidOptionError (and every ``make_job`` error): before anything is sent.
        JobsPermissionError / JobsCreditsError: the Jobs API refused the launch.
        TokenError, HubNetworkError...: as any Hub call.
    """
    flavor = check_flavor(flavor)
    _, spec, label = _request(source, scheme, options, finalize, collection)
    return _Launcher.open(token).launch(spec, label, flavor, timeout)


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
    on_status: Callable[[HfJob, str, str], None] | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> HfJobResult | ManyResult:
    """Follow a job's log until it ends: progress events to ``progress``, other lines to ``on_log``.

    ``on_status(job, stage, message)``: the job's stage when following starts (``ptq jobs
    status`` prints it), from the one inspection that also checks the id.

    Returns:
        The job's result as a local run returns it (``to_markdown()`` prints what it prints):
        an :class:`HfJobResult`, or for several schemes a ``ManyResult`` (a failed scheme is in
        its ``errors``, the others in its ``results``).

    Raises:
        JobTimedOutError: the job ran past its timeout.
        JobFailedError: it ended in ERROR (with the job's own error message), CANCELED or DELETED.
    """
    http = _http(token)
    job = _job_ref(job, http, namespace)
    info = _inspect(http, job)  # a clear error for a wrong id before the log stream is opened
    if on_status is not None:
        on_status(job, str(info.status.stage), info.status.message or "")
    result: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    for line in http.api.fetch_job_logs(job_id=job.id, namespace=job.namespace, follow=True):
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


def _outcome(job: HfJob, info: Any, result: dict[str, Any] | None,
             failure: dict[str, Any] | None) -> HfJobResult | ManyResult:
    stage, message = str(info.status.stage), info.status.message or ""
    # A several-scheme job with a failed scheme ends in ERROR after its result line: the others are done.
    if result is not None and (stage == "COMPLETED" or (stage == "ERROR" and result.get("errors"))):
        return read_result(result, job)
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
    scheme: object = None,
    *,
    parts: int | None = None,
    finalize: int | None = None,
    flavor: str | None = None,
    token: str | None = None,
    timeout: str | int | None = None,
    collection: str | None = None,
    progress: ProgressCallback | None = None,
    on_launch: Callable[[HfJob], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    **options: Any,
) -> HfJobResult | ManyResult:
    """Launch the job (or ``parts`` part jobs, then a finalize job) and follow it to its result.

    Every job is handed to ``on_launch`` as soon as it exists (print its URL; cancel it on
    Ctrl-C). Part jobs run at once on the Hub; they are followed one after the other.
    ``flavor=None`` or ``"auto"`` takes the one the plan says fits (``plan_flavor``'s pick; with
    ``parts``, sized by the parts' own plan). ``finalize=K`` runs only
    the finalize step of a K-part job (its parts staged before, by jobs or by other machines).
    Several schemes: one job, one read of the source, every scheme; a ``ManyResult`` comes back.
    ``collection``: the job adds the finished repo(s) to it (the finalize job, with ``parts``).

    Raises:
        InvalidOptionError: ``parts`` together with ``finalize`` or a ``part``; several schemes with
            ``parts``, ``part`` or ``finalize`` (before anything is sent).
        the errors of ``launch_hf_job`` and ``follow_hf_job``; ``plan_hub_parts``' for ``parts``.
    """
    if parts and (finalize or options.get("part")):
        raise InvalidOptionError("--parts K launches every part and the finalize job itself; drop --part / --finalize.")
    jobs, spec, label = _request(source, scheme, options, finalize, None if parts else collection)
    if len(jobs) > 1 and parts:
        raise InvalidOptionError(_one_scheme_for_parts(len(jobs)))
    flavor = None if _is_auto(flavor) else check_flavor(flavor)  # a bad name: refused before any request
    split = plan_hub_parts(jobs[0], parts, token=token) if parts else None
    if flavor is None and split is not None and split.footprint is not None:  # the parts' one plan sizes it too
        flavor = suggest_flavor(split.footprint.peak_ram, split.footprint.largest_shard_bytes)
    elif flavor is None:
        flavor = _fitting_flavor(jobs, token)
    launcher = _Launcher.open(token)

    def start(job_spec: str, job_label: str) -> HfJob:
        launched = launcher.launch(job_spec, job_label, flavor, timeout)
        if on_launch is not None:
            on_launch(launched)
        return launched

    def follow(launched: HfJob) -> HfJobResult | ManyResult:
        return follow_hf_job(launched, progress=progress, on_log=on_log, token=token)

    if split is None:
        return follow(start(spec, label))
    pinned = {**options, "revision": split.revision}
    count = len(split.parts)
    part_jobs = [start(*_request(source, scheme, {**pinned, "part": f"{i}/{count}"}, None, None)[1:])
                 for i in range(1, count + 1)]
    for part_job in part_jobs:
        follow(part_job)
    return follow(start(*_request(source, scheme, pinned, count, collection)[1:]))
