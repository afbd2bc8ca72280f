"""The Space's preview handlers: model suggestions, then the plan of the chosen model and scheme.

A preview is one ``ptq_core.plan_hub_model`` call (safetensors headers only, no weight bytes);
it pre-fills the ignore list and the target repo and enables the run button when the job fits.
``app.py`` wires these handlers to the form.
"""

from __future__ import annotations

import logging

import gradio as gr

import ptq_core
from ptq_core.errors import PtqError
from ptq_core.ignore_text import parse_ignore_text

from page_text import pick_a_model, plan_markdown, refusal
from signin import token_from

logger = logging.getLogger("ptq_space")

SEARCH_LIMIT = 10
RECENT_LIMIT = 20


def observer_choices() -> list[tuple[str, str]]:
    """``(label, value)`` for the observer dropdown: each data-free observer and what it buys."""
    from ptq_core.observers import describe_observer, list_observers

    by_effect: dict[str, str] = {}  # aliases compute the same thing: offer one name per computation
    for name in list_observers():
        by_effect.setdefault(describe_observer(name), name)
    return [(f"{name} — {effect}", name) for effect, name in by_effect.items()]


def scheme_choices() -> list[tuple[str, str]]:
    """``(label, value)`` for the scheme dropdown: the name and one line on GPUs, size, quality."""
    return [(f"{s.name} — {s.description}", s.name) for s in ptq_core.list_schemes()]


def search_models(query: str, recent: list[str] | None = None, oauth_token: gr.OAuthToken | None = None) -> list[str]:
    """Model ids matching ``query``: the Hub's search, then this browser's recent models.

    A Hub without ``/api/models?search=`` (or an unreachable one) only narrows the
    suggestions to recent models; typing a full id always works.
    """
    query = (query or "").strip()
    if len(query) < 2:
        return list(recent or [])[:SEARCH_LIMIT]
    found: list[str] = []
    try:
        from ptq_core.hubjob import search_models as hub_search

        found = hub_search(query, limit=SEARCH_LIMIT, token=token_from(oauth_token))
    except Exception as err:  # noqa: BLE001 - suggestions are a convenience: never fail the page over them
        logger.info("Model search unavailable (%s); suggesting recent models only", type(err).__name__)
    needle = query.lower()
    found += [m for m in (recent or []) if needle in m.lower()]
    return list(dict.fromkeys(found))[:SEARCH_LIMIT]


def on_model_typed(recent: list[str] | None, key_up_data: gr.KeyUpData, oauth_token: gr.OAuthToken | None):
    """Key-up in the model box: refresh its suggestions."""
    query = key_up_data.input_value or ""
    choices = search_models(query, recent, oauth_token)
    if query.strip() and query.strip() not in choices:
        choices = [query.strip(), *choices]  # keep what was typed selectable
    return gr.Dropdown(choices=choices)


def preview_model(model_id: str | None, scheme: str, recent: list[str] | None, oauth_token: gr.OAuthToken | None):
    """A model was chosen: plan it from its headers, pre-fill the ignore list and the target.

    Returns:
        (plan Markdown, ignore text, target repo, run button, recent models)
    """
    model_id = (model_id or "").strip()
    recent = list(recent or [])
    if not model_id:
        return pick_a_model(), "", "", gr.Button(interactive=False), recent
    token = token_from(oauth_token)
    try:
        planned = ptq_core.plan_hub_model(model_id, scheme, token=token, hub_only=True)
    except PtqError as err:
        # Keep the loader-safe defaults in the box: a later scheme change re-plans with them.
        defaults = "\n".join(ptq_core.DEFAULT_IGNORE)
        return refusal(model_id, scheme, err, token), defaults, "", gr.Button(interactive=False), recent
    ignore = ptq_core.suggest_ignore(planned.plan)
    recent = [model_id, *[m for m in recent if m != model_id]][:RECENT_LIMIT]
    text, ok = plan_markdown(model_id, planned)
    return text, "\n".join(ignore), _default_target(model_id, scheme, token), gr.Button(interactive=ok), recent


def preview_plan(model_id: str | None, scheme: str, ignore_text: str, oauth_token: gr.OAuthToken | None):
    """The ignore list changed: plan again with it. Returns (plan Markdown, run button)."""
    model_id = (model_id or "").strip()
    if not model_id:
        return pick_a_model(), gr.Button(interactive=False)
    token = token_from(oauth_token)
    try:
        # The box holds the whole list (pre-filled with the defaults this model has), so it replaces them.
        planned = ptq_core.plan_hub_model(
            model_id, scheme, ignore=parse_ignore_text(ignore_text), default_ignore=False, token=token, hub_only=True
        )
    except PtqError as err:
        return refusal(model_id, scheme, err, token), gr.Button(interactive=False)
    text, ok = plan_markdown(model_id, planned)
    return text, gr.Button(interactive=ok)


def change_scheme(model_id: str | None, scheme: str, ignore_text: str, target: str, oauth_token: gr.OAuthToken | None):
    """The scheme changed: plan again; rename a default-looking target. Returns (plan, target, run button)."""
    text, button = preview_plan(model_id, scheme, ignore_text, oauth_token)
    model_id = (model_id or "").strip()
    if model_id and (not (target or "").strip() or ptq_core.is_default_target(target, model_id)):
        target = _default_target(model_id, scheme, token_from(oauth_token))
    return text, target, button


def _default_target(model_id: str, scheme: str, token: str | None) -> str:
    """``{user}/{Model}-{SCHEME}`` when signed in; empty (the placeholder explains) otherwise."""
    if token is None:
        return ""
    try:
        return ptq_core.default_target_repo(model_id, scheme, token=token)
    except PtqError as err:
        logger.info("No default target for %s: %s", model_id, type(err).__name__)
        return ""
