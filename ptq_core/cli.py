"""``ptq``: the console script.

Subcommands: ``quantize`` (``--scheme A,B``: one read, a folder per scheme),
``reindex``, ``plan`` (dry run from headers only;
``--parts K --json`` prints a GitHub Actions matrix), ``run`` (Hub to Hub,
streamed; ``--part I/K`` stages one part, ``--finalize K`` makes the commit),
``schemes`` and ``demo`` (the embedded default job).
Heavy modules (torch, compressed-tensors, huggingface_hub) are imported inside
the commands, so ``ptq --help`` answers at once.

Every command builds one ``Job`` (``job.make_job``) from its arguments. As in
every front end, ``--ignore`` adds to the loader-safe ignore list (``lm_head``,
embeddings, MoE routers) so the output loads in vLLM; ``--no-default-ignore``
drops it, and the plan always shows the final list.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from ._version import __version__
from .constants import DEFAULT_SCHEME, PTQ_DISABLE_PROGRESS, hf_token_from_env
from .cli_jobs import add_jobs_command, add_on_jobs_options, run_on_jobs, uses_jobs
from .errors import PtqError
from .redact import install_redaction

# Words for schemes.DEFAULT_IGNORE: `ptq --help` must not import compressed-tensors.
_WORKERS_HELP = ("threads, each quantizing one weight or fused group at a time; 'auto': one per usable core "
                 "(CPU affinity and cgroup quota), or per 4 GiB of free memory on each GPU")
_DEFAULT_IGNORE_HELP = "embeddings and heads, MoE routers, vision/audio towers, MTP layers, found from the model"


def _progress_bars() -> Callable[[str, int, int], None]:
    """A tqdm bar per stage, fed by the core's ``progress(stage, done, total)`` callback."""
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{stage:>9}", unit="step", disable=PTQ_DISABLE_PROGRESS, leave=True)
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return progress


def _job(args: argparse.Namespace, source: str):
    """The one request value, built from the command line (see ``job.make_job``)."""
    from .job import make_job

    return make_job(source, args.scheme, **_job_options(args))


def _jobs(args: argparse.Namespace, source: str):
    """``--scheme A,B,C``: one request per scheme over one source (see ``job.make_jobs``)."""
    from .job import make_jobs

    return make_jobs(source, args.scheme, **_job_options(args))


def _job_options(args: argparse.Namespace) -> dict:
    """``make_job``'s keyword arguments from the command line (also what ``--on-jobs`` sends to the job)."""
    from .ignore_text import parse_ignore_text

    return dict(
        ignore=parse_ignore_text("\n".join(args.ignore)),
        default_ignore=not args.no_default_ignore,
        observer=args.observer,
        revision=getattr(args, "revision", None),
        target=getattr(args, "to", None),
        private=getattr(args, "private", False),
        overwrite=getattr(args, "overwrite", False),
        device=getattr(args, "device", None),
        workers=getattr(args, "workers", 1),
        disk_budget=getattr(args, "disk_budget", None),
        part=getattr(args, "part", None),
        tp=args.tp,
        rotate=args.rotate,
    )


def _count(value: str | None, name: str) -> int:
    """A count argument (``--parts``, ``--finalize``) checked by the core's one rule."""
    from .workers import parse_count

    return parse_count(value, name=name)


def _read_only(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Mark a read-only one-shot command (``plan``), which the console script runs lean (``main``)."""
    _READ_ONLY.add(command)
    return command


_READ_ONLY: set[Callable[[argparse.Namespace], int]] = set()


def _cmd_quantize(args: argparse.Namespace) -> int:
    """One scheme: OUTPUT is the quantized folder. Several: OUTPUT is their parent (``pipeline_many``)."""
    from .pipeline import quantize_job
    from .sizes import format_bytes

    jobs = _jobs(args, args.source)
    if len(jobs) == 1:
        results = {jobs[0].scheme_name: quantize_job(jobs[0], args.output, progress=_progress_bars())}
        errors = {}
    else:
        from .pipeline_many import quantize_jobs

        many = quantize_jobs(jobs, args.output, progress=_progress_bars())
        results, errors = many.results, many.errors
    for result in results.values():
        print(result.plan.to_markdown())
        print(f"Wrote {result.save_directory}: {format_bytes(result.size_before)} -> "
              f"{format_bytes(result.size_after)} ({result.ratio:.2f}x smaller) in {result.seconds:.1f} s")
    for scheme, err in errors.items():
        print(f"error: {scheme}: {err}", file=sys.stderr)
    return 1 if errors else 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    from .reindex import reindex_fused_weights

    result = reindex_fused_weights(args.source, args.output, num_workers=args.num_workers,
                                   overwrite=args.overwrite, progress=_progress_bars())
    print(f"Reindexed {result.fused_sets} fused sets into {result.save_directory}; moved {len(result.moved)} tensors.")
    return 0


@_read_only
def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    jobs = _jobs(args, args.source)
    if len(jobs) > 1:
        from .hubjob import plan_hub_models, plans_to_markdown

        if args.parts is not None:
            from .errors import InvalidOptionError

            raise InvalidOptionError("--parts plans one scheme; give one --scheme to see its parts.")
        plans = plan_hub_models(jobs)
        print(json.dumps({p.job.scheme_name: p.summary() for p in plans}) if args.json else plans_to_markdown(plans))
        return 0
    (job,) = jobs
    if args.parts is not None:
        from .hubjob import plan_hub_parts

        parts = plan_hub_parts(job, _count(args.parts, "parts"))
        print(json.dumps(parts.matrix()) if args.json else parts.plan.to_markdown() + "\n" + parts.to_markdown())
        return 0
    from .hubjob import plan_hub_model

    plan = plan_hub_model(job)
    print(json.dumps(plan.summary()) if args.json else plan.to_markdown())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .hubjob import finalize_hub_job, quantize_many_to_hub, quantize_to_hub

    jobs = _jobs(args, args.source)
    if uses_jobs(args):  # one job for every scheme; --collection honoured in the job
        return run_on_jobs(args, args.source, args.scheme, _job_options(args), _progress_bars())
    if args.finalize is not None:
        results = [finalize_hub_job(job, parts=_count(args.finalize, "finalize"), progress=_progress_bars())
                   for job in jobs]
    elif len(jobs) > 1:
        many = quantize_many_to_hub(jobs, progress=_progress_bars(), collection=args.collection)
        print(many.to_markdown())
        return 0 if many.ok else 1
    else:
        results = [quantize_to_hub(jobs[0], progress=_progress_bars())]
    for result in results:
        print(result.to_markdown())
    if args.collection and args.part is None:
        from .hub_collections import add_to_collection

        print(f"Collection: {add_to_collection(args.collection, [r.repo_id for r in results])}")
    return 0


def _cmd_schemes(args: argparse.Namespace) -> int:
    from .schemes import list_schemes

    print("| scheme | format | what it is for |\n|---|---|---|")
    for info in list_schemes():
        print(f"| {info.name} | {info.format} | {info.description} |")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import write_demo_checkpoint
    from .pipeline import quantize_job
    from .sizes import format_bytes

    root = Path(args.workdir or tempfile.mkdtemp(prefix="ptq-demo-"))
    source = write_demo_checkpoint(root / "tiny-llama")
    args.overwrite = True  # the demo folder is ours: rerunning it replaces the last result
    job = _job(args, str(source))
    output = root / f"tiny-llama-{job.repo_suffix}"
    print(f"Demo checkpoint (seeded, Llama-shaped): {source}\n")
    result = quantize_job(job, output, progress=_progress_bars())
    print(result.plan.to_markdown())
    print("| file | size |\n|---|---:|")
    for path in sorted(output.iterdir()):
        print(f"| {path.name} | {format_bytes(path.stat().st_size)} |")
    print(f"\nQuantized {len(result.plan.quantized)} tensors: {format_bytes(result.size_before)} -> "
          f"{format_bytes(result.size_after)} ({result.ratio:.2f}x smaller) in {result.seconds:.2f} s -> {output}")
    return 0


def _add_common(p: argparse.ArgumentParser, *, scheme_default: str | None = None, several: str = "") -> None:
    """The request's options; ``several``: what several comma-separated schemes make, if the command takes them."""
    p.add_argument("--scheme", "-s", default=scheme_default, required=scheme_default is None,
                   help="preset name, e.g. FP8_BLOCK, NVFP4A16, MXFP4A16, W4A16 (see `ptq schemes`)"
                        + (f"; several, comma-separated (FP8_BLOCK,NVFP4A16,W4A16): one read of the source, "
                           f"{several}" if several else ""))
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="module name or 're:<regex>' to keep unquantized; repeatable or comma-separated (a comma "
                        "inside a regex's (), [] or {} belongs to it); "
                        f"added to the defaults ({_DEFAULT_IGNORE_HELP})")
    p.add_argument("--no-default-ignore", action="store_true", help="start from an empty ignore list")
    p.add_argument("--observer", metavar="NAME",
                   help="weight observer: memoryless_minmax (default), memoryless_mse, nvfp4_expanded_mse, ... "
                        "(data-free observers of llm-compressor; MSE searches lower the error, slower)")
    p.add_argument("--tp", metavar="N",
                   help="refuse the plan unless vLLM can shard the output at tensor parallel size N")
    p.add_argument("--rotate", action="store_true",
                   help="fold SpinQuant Hadamard rotations (R1+R2; R1 only for MLA) into the weights first: "
                        "the same model, fewer outliers, usually better 4-bit quality")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", "-j", default="1", metavar="N|auto", help=_WORKERS_HELP)
    p.add_argument("--device", help="cpu, cuda, cuda:N, or a comma-separated list (default: GPU if present)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of the source")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptq", description="Data-free quantization of Hugging Face checkpoints into compressed-tensors.")
    parser.add_argument("--version", action="version", version=f"ptq-hub {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v for INFO logs, -vv for DEBUG")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("quantize", help="quantize a local folder or Hub repo into a local folder (one per scheme)")
    p.add_argument("source", help="checkpoint folder or Hub repo id")
    p.add_argument("output", help="output folder; with several schemes, their parent: OUTPUT/{Model}-{SCHEME} each")
    _add_common(p, several="one folder per scheme, OUTPUT/{Model}-{SCHEME}")
    _add_run_options(p)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("reindex", help="move each fused group (q/k/v, gate/up, ...) into one shard")
    p.add_argument("source")
    p.add_argument("output")
    p.add_argument("--num-workers", "--num_workers", default="1")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_reindex)

    p = sub.add_parser("plan", help="dry run from safetensors headers: what gets quantized, sizes, peak disk/RAM")
    p.add_argument("source", help="checkpoint folder or Hub repo id")
    _add_common(p, several="one plan per scheme")
    p.add_argument("--revision")
    p.add_argument("--disk-budget", metavar="SIZE", help="local disk a streamed run may fill, e.g. 20GB")
    p.add_argument("--parts", metavar="K",
                   help="split the job into K parts of whole output shards, balanced by bytes")
    p.add_argument("--json", action="store_true",
                   help="print JSON: the plan summary, or with --parts a GitHub Actions matrix")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("run", help="Hub repo -> quantized Hub repo with a model card, streamed (needs HF_TOKEN)")
    p.add_argument("source", help="source Hub repo id")
    p.add_argument("--to", help="target NAMESPACE/NAME (default: {user}/{name}-{SCHEME}); NAMESPACE/ puts "
                                "every scheme under NAMESPACE with its default name")
    p.add_argument("--private", action="store_true", help="create the target repo private")
    p.add_argument("--collection", metavar="TITLE",
                   help="add the target repo(s) to your Hub collection with this title (created when missing)")
    _add_common(p, several="one repo per scheme")
    _add_run_options(p)
    p.add_argument("--disk-budget", metavar="SIZE",
                   help="local disk the run may fill with output shards awaiting upload, e.g. 20GB "
                        "(default: 90%% of the free space minus a margin)")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--part", metavar="I/K",
                      help="stage only part I of K on the target's staging branch (see `ptq plan --parts K`)")
    step.add_argument("--finalize", metavar="K",
                      help="check that all K parts are staged and consistent, then make the one commit")
    add_on_jobs_options(p)
    p.set_defaults(func=_cmd_run)
    add_jobs_command(sub, _progress_bars)

    p = sub.add_parser("schemes", help="list the data-free presets")
    p.set_defaults(func=_cmd_schemes)

    p = sub.add_parser("demo", help="quantize an embedded tiny Llama-shaped checkpoint (no Hub needed)")
    _add_common(p, scheme_default=DEFAULT_SCHEME)
    p.add_argument("--workers", "-j", default="2", metavar="N|auto", help=_WORKERS_HELP)
    p.add_argument("--workdir", help="where to write the demo (default: a new temp folder)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, *, exit_read_only: bool = False) -> int:
    """Run one command; its exit status.

    ``exit_read_only`` (the console script; never in a caller's process): a read-only command
    (``plan``) runs without the cyclic collector, whose passes would only rescan its records
    (~10^6 for a DeepSeek-sized plan, all alive until it exits) and torch's modules, a fifth of
    its time; memory is still freed by reference counting. It then ends the process itself,
    output flushed, without the interpreter's teardown (~0.6 s of freeing what the OS frees).
    """
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else (logging.INFO if args.verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # -vv turns on third-party debug logs, which can print request headers: clean every record.
    install_redaction(hf_token_from_env)
    lean = exit_read_only and args.func in _READ_ONLY
    if lean:
        gc.disable()
    try:
        code = args.func(args)
    except PtqError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    if lean:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def console_main() -> None:
    """The ``ptq`` console script."""
    sys.exit(main(exit_read_only=True))


def reindex_main(argv: Sequence[str] | None = None) -> int:
    """``ptq-reindex-fused-weights SRC DST [--num_workers N]`` (llm-compressor's script name)."""
    return main(["reindex", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    console_main()
