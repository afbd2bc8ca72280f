"""ptq-hub Space: sign in, pick a model and a scheme, get a quantized repo.

Handlers come first: plain functions that ``tests/test_space.py`` calls directly.
The ``gr.Blocks`` layout below them only wires components to handlers. A job is
exactly one ``ptq_core.quantize_to_hub`` call; a preview is one
``ptq_core.plan_hub_model`` call (safetensors headers only, no weight bytes).
Beside this file: the preview handlers (``preview.py``), the Markdown the page shows
(``page_text.py``), the sign-in token (``signin.py``) and the Jobs panel (``jobs_panel.py``).

Local run (against huggingface.co or any Hub-compatible server)::

    HF_TOKEN=hf_... [HF_ENDPOINT=http://127.0.0.1:8000] python space/app.py

Outside a Space, Gradio mocks "Sign in with Hugging Face": at start-up it asks
``whoami`` at ``HF_ENDPOINT`` with ``HF_TOKEN`` and, once the button is clicked,
hands handlers a placeholder token; this app swaps the placeholder for
``HF_TOKEN`` or the cached login (see ``signin.token_from``), so every Hub call uses a
real token.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import os
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import ptq_core
except ImportError:  # `python space/app.py` in a checkout; on the Space, ptq_core/ sits next to app.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import ptq_core

from ptq_core import constants

sys.path.insert(0, str(Path(__file__).resolve().parent))  # jobs_panel.py sits next to app.py (tests load app by path)
from jobs_panel import add_jobs_panel, form_request  # noqa: E402


# --- the Space's own settings, read once (the core's are in ptq_core.constants) ---
def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


QUEUE_MAX_SIZE: int = _env_int("PTQ_SPACE_QUEUE_SIZE", 8)
"""Jobs allowed to wait behind the running one; the next visitor is told the queue is full."""

GPU_SECONDS: int = _env_int("PTQ_SPACE_GPU_SECONDS", 900)
"""ZeroGPU time budget of one job (``spaces.GPU(duration=...)``)."""

ON_ZERO_GPU: bool = constants.parse_bool(os.environ.get("SPACES_ZERO_GPU"), name="SPACES_ZERO_GPU")
"""Set by Hugging Face on ZeroGPU hardware."""

spaces = None
if ON_ZERO_GPU:  # pragma: no cover - only on Hugging Face ZeroGPU hardware
    try:
        import spaces  # before torch is imported: ZeroGPU patches CUDA initialisation
    except ImportError:
        spaces = None

import gradio as gr
from gradio.utils import get_space

from ptq_core.constants import DEFAULT_SCHEME
from ptq_core.errors import PtqError
from ptq_core.redact import install_redaction, redact
from ptq_core.sizes import format_bytes
from ptq_core.stages import Stage

# Next to app.py, like jobs_panel.py; imported after gradio (ZeroGPU: `spaces` comes first).
from page_text import card_markdown, error_title, pick_a_model, result_markdown  # noqa: E402
from preview import (  # noqa: E402
    change_scheme, observer_choices, on_model_typed, preview_model, preview_plan, scheme_choices, search_models,
)
from signin import local_token, token_from  # noqa: E402

# Every handler is reachable as ``app.<name>`` (tests load app.py by path), wired here or not (search_models).
__all__ = [
    "build_demo", "change_scheme", "clear_result", "main", "observer_choices", "on_model_typed", "preview_model",
    "preview_plan", "run_job", "scheme_choices", "search_models", "show_failure", "token_from",
]

logger = logging.getLogger("ptq_space")

NOT_SIGNED_IN = (
    "Sign in with Hugging Face first (button at the top). The quantized repo is created in your "
    "account with your own token; nothing was run."
)

_BAR: dict[Stage, tuple[float, float]] = {
    # stage: (start fraction, end fraction) of the page's one bar. A streamed job downloads,
    # quantizes and uploads at once; the bar shows the furthest point, which the uploads set last.
    Stage.VALIDATE: (0.00, 0.05),
    Stage.DOWNLOAD: (0.05, 0.85),
    Stage.QUANTIZE: (0.05, 0.85),
    Stage.WRITE: (0.05, 0.85),
    Stage.UPLOAD: (0.05, 0.92),
    Stage.STAGE: (0.92, 0.94),
    Stage.CARD: (0.94, 0.96),
    Stage.COMMIT: (0.96, 1.00),
}


# =============================================================================
# Handlers
# =============================================================================
def run_job(
    model_id: str | None,
    scheme: str,
    ignore_text: str,
    target: str | None,
    private: bool,
    overwrite: bool,
    oauth_token: gr.OAuthToken | None,
    progress=gr.Progress(),  # noqa: B008 - Gradio's idiom: the default marks the progress argument
    observer: str | None = None,
    rotate: bool = False,
    also: list[str] | None = None,
):
    """Quantize ``model_id`` and push it: one ``quantize_to_hub`` (with ``also``: many) call in a per-job folder.

    ``observer``, ``rotate`` and ``also`` are the last inputs: Gradio inserts the sign-in and progress
    arguments at their positions, so an input declared after them still lines up. ``also``: more
    schemes from the same read (``quantize_many_to_hub``), one repo each under its default name
    in the target's namespace (``jobs_panel.form_request``).

    Returns:
        (result Markdown with the link, the new repo's model card, the card accordion)

    Raises:
        gr.Error: not signed in, no model, or the core's ``PtqError`` message
            (never a stack trace, never the token).
    """
    token = token_from(oauth_token)
    if token is None:
        raise gr.Error(NOT_SIGNED_IN, title="Not signed in", print_exception=False)
    model_id = (model_id or "").strip()
    if not model_id:
        raise gr.Error("Pick a model first: type a Hub id such as org/Model.", print_exception=False)
    schemes, options = form_request(model_id, scheme, also, ignore_text, target, private, overwrite, observer, rotate)
    try:
        # hub_only: the typed text must be a Hub repo id; a path is refused before any file is touched.
        jobs = ptq_core.make_jobs(model_id, schemes, hub_only=True, **options)
    except PtqError as err:
        raise gr.Error(redact(str(err), token), title=error_title(err), duration=None, print_exception=False) from None
    request = jobs[0]
    job = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"ptq-space-{job}-", dir=_jobs_root()))
    logger.info(
        "job %s: %s -> %s as %s (private=%s, overwrite=%s)",
        job,
        request.source,
        request.target or "default",
        ",".join(j.scheme_name for j in jobs),
        request.private,
        request.overwrite,
    )
    try:
        result = _quantize(jobs if len(jobs) > 1 else request, token=token, work_dir=work_dir, progress=progress)
    except PtqError as err:
        message = redact(str(err), token)
        logger.warning("job %s failed: %s: %s", job, type(err).__name__, message)
        raise gr.Error(message, title=error_title(err), duration=None, print_exception=False) from None
    except Exception as err:  # noqa: BLE001 - a bug, not a refusal: say so without a trace or the token
        logger.error("job %s crashed: %s: %s", job, type(err).__name__, redact(str(err), token))
        raise gr.Error(
            f"Unexpected {type(err).__name__} while quantizing {model_id}; nothing was pushed. "
            "Please retry, and report it if it happens again.",
            title="Job failed",
            duration=None,
            print_exception=False,
        ) from None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results = list(result.results.values()) if len(jobs) > 1 else [result]
    for one in results:
        logger.info("job %s: pushed %s at %s", job, one.repo_id, one.commit_sha[:10])
    if len(jobs) > 1 and not result.ok:
        pushed = ", ".join(r.repo_id for r in results) or "none"
        failed = "; ".join(f"{name}: {redact(str(err), token)}" for name, err in result.errors.items())
        raise gr.Error(f"Pushed: {pushed}. Failed: {failed}", title="Some schemes failed", duration=None,
                       print_exception=False)
    sections = [result_markdown(r, card_below=r is results[0]) for r in results]  # the card shown: the first's
    return ("\n\n".join(sections), card_markdown(results[0].card),
            gr.Accordion(visible=True, open=False))


def clear_result():
    """A new job starts: drop the previous job's link and card."""
    return "*Working… the link to the new repo appears here.*", gr.Accordion(visible=False)


def show_failure():
    """After a failed job: a lasting note next to the error pop-up."""
    return "**The job did not finish.** The reason is in the red message; temporary files were removed."


# --- handler helpers ---------------------------------------------------------
def _quantize(job: Any, *, progress: Any, **kwargs: Any):
    """The one core call, with progress forwarded to the page: a job, or several schemes from one read."""
    if isinstance(job, tuple):
        return ptq_core.quantize_many_to_hub(job, progress=_progress_reporter(progress), **kwargs)
    return ptq_core.quantize_to_hub(job, progress=_progress_reporter(progress), **kwargs)


if spaces is not None:  # pragma: no cover - ZeroGPU: a GPU is attached for the duration of each job
    _quantize = spaces.GPU(duration=GPU_SECONDS)(_quantize)
elif ON_ZERO_GPU:  # pragma: no cover
    logger.warning("SPACES_ZERO_GPU is set but the `spaces` package is missing; jobs run on CPU")


def _progress_reporter(progress: Any) -> Callable[[str, int, int], None]:
    """``progress(stage, done, total)`` for the core, drawn as one bar on the page.

    ``gr.Progress`` finds its job through context variables, which the core's worker
    threads (parallel downloads, shard workers) do not inherit; each update therefore
    runs in a copy of the handler's context, one at a time.
    """
    context = contextvars.copy_context()
    lock = threading.Lock()
    shown = [0.0]  # a streamed job's stages overlap: the bar shows the furthest point reached

    def report(stage: str, done: int, total: int) -> None:
        known = Stage.parse(stage)
        start, end = _BAR[known] if known is not None else (0.0, 1.0)
        label = known.label if known is not None else str(stage).capitalize()
        part = min(max(done / total, 0.0), 1.0) if total else 1.0
        if known is not None and known.counts_bytes:
            desc = f"{label} {format_bytes(done)} / {format_bytes(total)}"
        elif known is Stage.QUANTIZE:
            desc = f"{label} tensor {done}/{total}"
        else:
            desc = label
        with lock:
            shown[0] = max(shown[0], start + (end - start) * part)
            context.run(progress, shown[0], desc=desc)

    return report


def _jobs_root() -> Path:
    root = Path(constants.PTQ_HUB_CACHE) / "space-jobs"
    root.mkdir(parents=True, exist_ok=True)
    return root


# =============================================================================
# Layout: components and wiring only
# =============================================================================
INTRO = """\
# ptq-hub: quantize a Hub model, data-free
Pick a model and a scheme: the plan below is read from the safetensors headers only.
One click streams the model (never the whole of it on disk), quantizes it into the
[compressed-tensors](https://github.com/neuralmagic/compressed-tensors) format (loads in vLLM and
transformers), writes a model card and pushes a **new repo in your account**. No calibration data.
Sources quantized already (FP8 blocks, compressed-tensors, ModelOpt NVFP4, AWQ) are dequantized in
memory first; the plan says so.
"""

CSS = """
#plan table, #result table { font-size: 0.9em; }
"""


def _options_form() -> tuple[Any, ...]:
    """The "Options" accordion, built inside the caller's ``gr.Blocks``.

    Returns:
        (ignore, target, observer, also, rotate, private, overwrite) components
    """
    with gr.Accordion("Options", open=True):
        ignore = gr.Textbox(
            label="Keep unquantized (ignore list)",
            info="One module name or `re:<regex>` per line. Pre-filled with the loader-safe "
            "defaults found in this model (lm_head, embeddings, MoE routers).",
            lines=3,
            elem_id="ignore",
        )
        target = gr.Textbox(
            label="Target repo",
            placeholder="your-name/Model-FP8-BLOCK (sign in to pre-fill)",
            elem_id="target",
        )
        observer = gr.Dropdown(
            label="Weight observer",
            info="How the scales are chosen: min/max is instant; an MSE search lowers the error, takes longer.",
            choices=observer_choices(),
            value="memoryless_minmax",
            elem_id="observer",
        )
        also = gr.Dropdown(
            label="Also quantize into (the same download)",
            info="More schemes from one read of the model: one repo each, named {model}-{SCHEME} in the "
                 "target's namespace (a target name of your own takes one scheme).",
            choices=scheme_choices(),
            value=[],
            multiselect=True,
            elem_id="also-schemes",
        )
        rotate = gr.Checkbox(
            label="Rotate the weights first (SpinQuant R1+R2)",
            info="Hadamard rotations fused into the weights: the same model with fewer outliers, "
                 "usually better at 4 bits (W4A16, NVFP4A16, MXFP4A16).",
            value=False,
            elem_id="rotate",
        )
        with gr.Row():
            private = gr.Checkbox(label="Private repo", value=False, elem_id="private")
            overwrite = gr.Checkbox(
                label="Overwrite the target repo if it already exists",
                info="Off: an existing repo with files is refused.",
                value=False,
                elem_id="overwrite",
            )
    return ignore, target, observer, also, rotate, private, overwrite


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="ptq-hub: quantize a Hub model") as demo:
        gr.Markdown(INTRO)
        gr.LoginButton()
        recent = gr.BrowserState([], storage_key="ptq-hub-recent-models")
        with gr.Row():
            model_id = gr.Dropdown(
                label="Model on the Hub",
                info="Type to search, then press Enter or pick a suggestion.",
                choices=[],
                value=None,
                allow_custom_value=True,
                filterable=True,
                scale=2,
                elem_id="model-id",
            )
            scheme = gr.Dropdown(
                label="Scheme",
                info="Which GPUs run it, how much smaller, how close to the original.",
                choices=scheme_choices(),
                value=DEFAULT_SCHEME,
                scale=3,
                elem_id="scheme",
            )
        plan_md = gr.Markdown(pick_a_model(), elem_id="plan")
        ignore, target, observer, also, rotate, private, overwrite = _options_form()
        run = gr.Button("Quantize and push", variant="primary", interactive=False, elem_id="run")
        result_md = gr.Markdown("*The link to the new repo appears here.*", min_height=90, elem_id="result")
        with gr.Accordion("Model card of the new repo", open=False, visible=False) as card_box:
            card_md = gr.Markdown(elem_id="card")

        previews = {"concurrency_limit": 4, "concurrency_id": "preview"}
        model_id.key_up(
            on_model_typed,
            [recent],
            model_id,
            trigger_mode="always_last",
            show_progress="hidden",
            api_visibility="private",
            **previews,
        )
        model_id.change(
            preview_model,
            [model_id, scheme, recent],
            [plan_md, ignore, target, run, recent],
            api_name="preview",
            **previews,
        )
        scheme.change(
            change_scheme,
            [model_id, scheme, ignore, target],
            [plan_md, target, run],
            api_name="change_scheme",
            **previews,
        )
        ignore.blur(preview_plan, [model_id, scheme, ignore], [plan_md, run], api_name="replan", **previews)
        ignore.submit(preview_plan, [model_id, scheme, ignore], [plan_md, run], api_visibility="private", **previews)
        job = run.click(clear_result, None, [result_md, card_box], queue=False, api_visibility="private").then(
            run_job,
            [model_id, scheme, ignore, target, private, overwrite, observer, rotate, also],
            [result_md, card_md, card_box],
            concurrency_limit=1,
            concurrency_id="quantize",
            show_progress="full",
            api_name="quantize",
        )
        job.failure(show_failure, None, result_md, queue=False, api_visibility="private")
        form = {"model_id": model_id, "scheme": scheme, "also": also, "ignore": ignore, "target": target,
                "private": private, "overwrite": overwrite, "observer": observer, "rotate": rotate}
        add_jobs_panel(demo, form, token_from)
    # One job at a time (a Space has one disk and one GPU); a bounded line behind it.
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_MAX_SIZE)
    return demo


def __getattr__(name: str) -> Any:
    # `demo` is built on first use, not at import: building a Blocks with a LoginButton
    # outside a Space already asks whoami for the local sign-in mock (gradio 6), and the
    # handlers must stay importable without a token (tests, tooling).
    if name == "demo":
        globals()["demo"] = value = build_demo()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the ptq-hub Space locally.")
    parser.add_argument("--host", default=None, help="default: GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: GRADIO_SERVER_PORT or 7860")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction()  # users' tokens (OAuth) must not reach the Space's logs in any form
    if get_space() is None and local_token() is None:
        # Gradio's local sign-in mock asks whoami with this token at start-up and fails without it.
        parser.exit(2, "Set HF_TOKEN (or run `hf auth login`) to run the Space locally: sign-in is mocked with it.\n")
    build_demo().launch(server_name=args.host, server_port=args.port, ssr_mode=False, css=CSS)


if __name__ == "__main__":
    main()
