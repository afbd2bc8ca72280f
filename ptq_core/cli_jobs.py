"""``ptq run ... --on-jobs [FLAVOR]`` and ``ptq jobs status|logs|cancel ID``: the console side of ``hf_jobs``.

Kept out of ``cli.py`` so that the Jobs options are one block there. Like ``cli``, it imports
the heavy core lazily, so ``ptq --help`` stays instant. The job's URL and notes go to stderr:
stdout carries exactly what a local ``ptq run`` prints (the result table).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .errors import InvalidOptionError

Progress = Callable[[str, int, int], None]


def add_on_jobs_options(p: argparse.ArgumentParser) -> None:
    """``ptq run``'s options for running on Hugging Face Jobs."""
    g = p.add_argument_group("Hugging Face Jobs (run on the token's own account and credits)")
    g.add_argument("--on-jobs", nargs="?", const="", metavar="FLAVOR",
                   help="run as a Hugging Face Job (several schemes: one job, one read of the source); FLAVOR "
                        "e.g. cpu-basic, cpu-upgrade, cpu-xl (default, or 'auto': the one the plan says fits)")
    g.add_argument("--parts", type=int, metavar="K",
                   help="with --on-jobs and one scheme: K part jobs at once, then a finalize job (one commit on main)")
    g.add_argument("--jobs-timeout", metavar="DURATION", help="with --on-jobs: the job's time limit, e.g. 90m or 6h")
    g.add_argument("--cancel", action="store_true",
                   help="with --on-jobs: Ctrl-C cancels the job(s) (default: Ctrl-C detaches, the job goes on)")


def add_jobs_command(sub: Any, progress: Callable[[], Progress]) -> None:
    """``ptq jobs status|logs|cancel ID``; ``progress()`` makes the bars ``status`` shows."""
    p = sub.add_parser("jobs", help="reattach to a Hugging Face Job launched with --on-jobs")
    verbs = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    for verb, text in (("status", "its stage; follows it with progress bars until it ends, then its result"),
                       ("logs", "its log as the container printed it"),
                       ("cancel", "stop it (what it staged stays: a rerun resumes)")):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("job_id", metavar="ID", help="the job id ([NAMESPACE/]ID), as --on-jobs printed it")
        if verb == "logs":
            v.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    p.set_defaults(func=lambda args: cmd_jobs(args, progress()))


def uses_jobs(args: argparse.Namespace) -> bool:
    """Whether ``ptq run`` was given any Jobs option (then ``run_on_jobs`` takes the command)."""
    return args.on_jobs is not None or bool(args.parts or args.jobs_timeout or args.cancel)


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_result(result: Any) -> int:
    """Print a job's result as a local ``ptq run`` prints it; the exit status (1: a scheme failed, as locally)."""
    from .hubjob import ManyResult

    print(result.to_markdown())
    if isinstance(result, ManyResult):
        return 0 if result.ok else 1
    if result.collection:  # one scheme: the line a local run adds
        print(f"Collection: {result.collection}")
    return 0


def run_on_jobs(args: argparse.Namespace, source: str, scheme: str, options: dict[str, Any], progress: Progress) -> int:
    """``ptq run --on-jobs``: launch, follow, print the result as a local run does; Ctrl-C detaches or cancels.

    Several schemes (``--scheme A,B,C``) are one job that reads the source once; ``--collection``
    is honoured inside the job, with the job's token (yours).
    """
    from .hf_jobs import cancel_hf_job, run_on_hf_jobs

    if args.on_jobs is None:
        raise InvalidOptionError("--parts, --jobs-timeout and --cancel go with --on-jobs. To split a run over your "
                                 "own machines: ptq plan --parts K, then ptq run --part I/K and --finalize K.")
    launched = []

    def on_launch(job) -> None:
        launched.append(job)
        _note(job.launched_line())

    try:
        result = run_on_hf_jobs(source, scheme, parts=args.parts, finalize=args.finalize, flavor=args.on_jobs or None,
                                timeout=args.jobs_timeout, collection=getattr(args, "collection", None),
                                progress=progress, on_launch=on_launch, **options)
    except KeyboardInterrupt:
        if args.cancel:
            for job in launched:
                cancel_hf_job(job)
            _note(f"Cancelled {', '.join(j.id for j in launched) or 'nothing'}; staged shards stay: rerun to resume.")
        else:
            ids = " ".join(j.id for j in launched)
            _note(f"Detached; the job(s) go on: ptq jobs status ID, ptq jobs logs ID, ptq jobs cancel ID ({ids}).")
        return 130
    return _print_result(result)


def cmd_jobs(args: argparse.Namespace, progress: Progress) -> int:
    """``ptq jobs ACTION ID``."""
    from .hf_jobs import cancel_hf_job, follow_hf_job, hf_job_logs

    if args.jobs_command == "logs":
        for line in hf_job_logs(args.job_id, follow=args.follow):
            print(line, flush=True)
        return 0
    if args.jobs_command == "cancel":
        job = cancel_hf_job(args.job_id)
        _note(f"Cancelled {job.id} ({job.url}); what it staged stays: rerun the same command to resume.")
        return 0

    def on_status(job, stage: str, message: str) -> None:
        _note(f"Hugging Face Job {job.id}: {stage}{f' ({message})' if message else ''}, {job.url}")

    try:
        result = follow_hf_job(args.job_id, progress=progress, on_status=on_status)
    except KeyboardInterrupt:
        _note("Detached; the job goes on.")
        return 130
    return _print_result(result)
