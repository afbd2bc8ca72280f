"""YAML recipes: one or more quantization jobs in a file.

A recipe lists jobs for ``quantize_to_hub``; the GitHub Action reads it and makes one
call per job, except that jobs that differ only in scheme and target (a ``scheme`` list)
share one read of the source (``one_read.group_by_read``, ``quantize_many_to_hub``). The whole file is validated before any job runs:
an unknown key or a wrong YAML type is caught here, and every entry goes through
``make_job`` (the one validator of repo ids, schemes, observers, ignore lists and
revisions), whose error names the argument it is about (``PtqError.option``); either
way :class:`~ptq_core.errors.RecipeError` names the line and key.

Format
------
A single job is a mapping::

    model: meta-llama/Llama-3.2-1B-Instruct   # source repo id (required)
    scheme: FP8_BLOCK                          # preset name, or a list of them (required)

Several jobs go under ``jobs:``; ``defaults:`` (optional) sets keys every job
inherits unless it sets them itself::

    defaults:
      private: true
      ignore: [lm_head, "re:.*embed_tokens$", "re:.*\\.gate$"]
    jobs:
      - model: Qwen/Qwen3-30B-A3B
        scheme: [FP8_BLOCK, NVFP4A16]            # one job per scheme
        target: my-org/Qwen3-30B-A3B-{scheme}    # {scheme} -> FP8-BLOCK, NVFP4A16
      - model: meta-llama/Llama-3.2-1B-Instruct
        scheme: W4A16
        revision: main

A top-level list of job mappings is accepted too. Keys of a job:

=========== ======================= ===========================================================
key         type                    meaning
=========== ======================= ===========================================================
model       string (required)       source Hub repo id, ``namespace/name``
scheme      string or list          preset name(s), e.g. ``FP8_BLOCK``; a list expands to one
                                    job per scheme
ignore      list of strings         module names or ``re:`` regexes kept unquantized, added to
                                    the loader-safe defaults (``DEFAULT_IGNORE``)
default_ignore boolean              start from ``DEFAULT_IGNORE`` (default ``true``); ``false``
                                    keeps only ``ignore``
observer    string                  weight observer (``memoryless_mse``, ``nvfp4_expanded_mse``...);
                                    default: the scheme's min/max
target      string                  target repo id (``namespace/name``, or a bare name under your
                                    user); default ``{you}/{name}-{SCHEME}``. With a list of
                                    schemes it must contain ``{scheme}``
private     boolean                 create the target repo private (default ``false``)
revision    string                  source branch, tag or commit (default: the main branch)
rotate      boolean                 fold SpinQuant rotations (R1+R2; R1 only for MLA) into the
                                    weights before quantizing (default ``false``)
=========== ======================= ===========================================================

Only plain YAML values are read: a tag such as ``!!python/object`` is refused (it is never
constructed), and anchors/aliases, nesting and size are bounded so that a small hostile
file (a "billion laughs" alias bomb) fails at once instead of expanding.

Example:
    >>> jobs = load_recipe("model: org/Model\\nscheme: [FP8_BLOCK, NVFP4A16]\\n")
    >>> [job.scheme for job in jobs]
    ['FP8_BLOCK', 'NVFP4A16']
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .constants import parse_bool
from .errors import PtqError, RecipeError
from .job import Job, make_job
from .schemes import canonical_scheme_name, scheme_repo_suffix

__all__ = ["JOB_KEYS", "RecipeJob", "load_recipe"]

JOB_KEYS = ("model", "scheme", "ignore", "default_ignore", "observer", "target", "private", "revision", "rotate")
"""Keys a job (and ``defaults:``) may set."""

_TOP_KEYS = ("jobs", "defaults")

# make_job names the argument an error is about (PtqError.option): the recipe key it came from.
_OPTION_KEYS = {"source": "model", "scheme": "scheme", "ignore": "ignore", "observer": "observer",
                "target": "target", "revision": "revision", "rotate": "rotate"}

# A recipe lists a few jobs: these bounds are far above any real one and far below
# what makes YAML slow. Aliases cost nothing while composing, but every reader that
# walks the values (and every message that shows one) expands them.
_MAX_RECIPE_BYTES = 1_000_000
_MAX_ALIASES = 100
_MAX_DEPTH = 32
_MAX_VALUES = 10_000  # scalars and collections, with every alias expanded
_SAFE_TAGS = frozenset(tag for tag in yaml.SafeLoader.yaml_constructors if tag is not None)


@dataclass(frozen=True)
class RecipeJob:
    """One ``quantize_to_hub`` call, validated.

    Attributes:
        model: source repo id.
        scheme: one preset name (a list in the file became one job each).
        ignore: extra ignore entries (added to ``DEFAULT_IGNORE`` unless ``default_ignore`` is false).
        default_ignore: start from the loader-safe defaults.
        target: target repo id (``{scheme}`` already filled in), or ``None`` for the default name.
        private: create the target private.
        revision: source revision, or ``None`` for the main branch.
        rotate: fold SpinQuant rotations into the weights first (``make_job(rotate=)``).
        line: 1-based line of the job in the file (for messages; not part of equality).
    """

    model: str
    scheme: str
    ignore: tuple[str, ...] = ()
    default_ignore: bool = True
    observer: str | None = None
    target: str | None = None
    private: bool = False
    revision: str | None = None
    rotate: bool = False
    line: int | None = field(default=None, compare=False)

    def to_job(self, *, overwrite: bool = False, device: str | None = None, workers: int | str = 1,
               tp: int | None = None) -> Job:
        """The ``Job`` of this entry; the caller adds what a recipe does not set per job."""
        return make_job(
            self.model,
            self.scheme,
            hub_only=True,
            ignore=self.ignore,
            default_ignore=self.default_ignore,
            observer=self.observer,
            revision=self.revision,
            target=self.target,
            private=self.private,
            overwrite=overwrite,
            device=device,
            workers=workers,
            tp=tp,
            rotate=self.rotate,
        )


def load_recipe(path_or_text: str | os.PathLike[str]) -> list[RecipeJob]:
    """Read and validate a recipe; return its jobs, one per (model, scheme).

    Args:
        path_or_text: a path to a ``.yaml``/``.yml`` file (``Path`` or string), or the
            YAML text itself (any string with a newline, or one that is not a file).

    Returns:
        The jobs in file order; a job with a list of schemes becomes one job per scheme.

    Raises:
        RecipeError: the file is missing or not valid YAML; an unknown key; a missing
            ``model``/``scheme``; a value of the wrong type; an invalid repo id; an unknown
            scheme or one that needs calibration data; an invalid ``ignore`` regex; a
            fixed ``target`` shared by several schemes; two jobs with the same target.
            The message names the line and the key.

    Example:
        >>> load_recipe("model: org/M\\nscheme: W4A16\\nprivate: true\\n")[0].private
        True
    """
    text, origin = _read(path_or_text)
    loader = _BoundedLoader(text, origin)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise RecipeError(f"{origin}: not valid YAML{where}: {getattr(err, 'problem', err)}.") from err
        _check_expanded_size(root, origin)
        return _Parser(loader, origin).jobs(root)
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses unknown tags, too many aliases and deep nesting while composing."""

    def __init__(self, text: str, origin: str) -> None:
        super().__init__(text)
        self.origin = origin
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > _MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise RecipeError(
                    f"{self.origin}, line {line}: more than {_MAX_ALIASES} aliases (*name); "
                    "a recipe needs a few at most (use `defaults:` for shared keys)."
                )
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise RecipeError(f"{self.origin}, line {line}: values nested deeper than {_MAX_DEPTH} levels.")
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if node.tag not in _SAFE_TAGS:
            raise RecipeError(f"{self.origin}, line {node.start_mark.line + 1}: {_tag_problem(node.tag)}")
        return node


def _tag_problem(tag: str) -> str:
    if tag == "tag:yaml.org,2002:merge":
        return "YAML merge keys (`<<:`) are not supported; put shared keys under `defaults:`."
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    return (f"the tag {_describe(shown)} is not allowed; a recipe holds plain YAML values only "
            "(strings, numbers, booleans, lists, mappings). Remove the tag.")


def _check_expanded_size(root: yaml.Node | None, origin: str) -> None:
    """Refuse a node graph that refers to itself or expands to more than ``_MAX_VALUES`` values.

    Aliases share nodes, so sizes are computed once per node, bottom-up: the check is
    linear in the file while the expansion it measures may be exponential.
    """
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack[-1]
        if id(node) in sizes:  # a shared node, pushed by two parents
            stack.pop()
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            stack.pop()
            continue
        children = [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) \
            else node.value
        if id(node) not in open_nodes:
            open_nodes.add(id(node))
            for child in children:
                if id(child) in open_nodes:
                    raise RecipeError(f"{origin}, line {child.start_mark.line + 1}: a value refers to itself "
                                      "through an alias (*name).")
                if id(child) not in sizes:
                    stack.append(child)
            continue
        stack.pop()
        open_nodes.discard(id(node))
        size = 1 + sum(sizes[id(child)] for child in children)
        if size > _MAX_VALUES:
            raise RecipeError(
                f"{origin}, line {node.start_mark.line + 1}: this value expands to more than {_MAX_VALUES} values "
                "through aliases (*name); a recipe needs a few dozen."
            )
        sizes[id(node)] = size


def _describe(value: object) -> str:
    """A value for a message, never expanded: short scalars quoted, collections by size."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value)} characters)"
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value)
        return text if len(text) <= 40 else f"a {len(text)}-digit number"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key(s)"
    return f"a {type(value).__name__}"


# --- parsing -----------------------------------------------------------------
def _read(path_or_text: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, origin name for messages)."""
    if isinstance(path_or_text, os.PathLike):
        path = Path(path_or_text)
    elif isinstance(path_or_text, str):
        if len(path_or_text) > _MAX_RECIPE_BYTES:
            raise RecipeError(f"The recipe is {len(path_or_text)} characters; a recipe is at most {_MAX_RECIPE_BYTES}.")
        if "\n" in path_or_text:
            return path_or_text, "recipe"
        path = Path(path_or_text)
        if not path.is_file() and path.suffix.lower() not in (".yaml", ".yml"):
            return path_or_text, "recipe"
    else:
        raise RecipeError(f"load_recipe takes a path or YAML text, not {type(path_or_text).__name__}.")
    try:
        size = path.stat().st_size
        if size > _MAX_RECIPE_BYTES:
            raise RecipeError(f"Recipe file {str(path)!r} is {size} bytes; a recipe is at most {_MAX_RECIPE_BYTES}.")
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError as err:
        raise RecipeError(f"Recipe file {str(path)!r} does not exist.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"Recipe file {str(path)!r} cannot be read: {err}.") from err


class _Parser:
    def __init__(self, loader: yaml.SafeLoader, origin: str) -> None:
        self.loader = loader
        self.origin = origin

    # errors ------------------------------------------------------------------
    def fail(self, node: yaml.Node | None, message: str) -> RecipeError:
        where = f"{self.origin}, line {node.start_mark.line + 1}" if node is not None else self.origin
        return RecipeError(f"{where}: {message}")

    # structure ---------------------------------------------------------------
    def jobs(self, root: yaml.Node | None) -> list[RecipeJob]:
        if root is None:
            raise RecipeError(f"{self.origin}: the recipe is empty; give at least `model:` and `scheme:`.")
        defaults: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        if isinstance(root, yaml.SequenceNode):
            job_nodes = list(root.value)
        elif isinstance(root, yaml.MappingNode):
            top = self.mapping(root)
            if any(key in top for key in _TOP_KEYS):
                extra = [k for k in top if k not in _TOP_KEYS]
                if extra:
                    key_node = top[extra[0]][0]
                    raise self.fail(
                        key_node,
                        f"key {_describe(extra[0])} next to `jobs:`; put job keys inside a job or under `defaults:`.",
                    )
                if "defaults" in top:
                    defaults_node = top["defaults"][1]
                    if not isinstance(defaults_node, yaml.MappingNode):
                        raise self.fail(defaults_node, "`defaults` must be a mapping of job keys.")
                    defaults = self.mapping(defaults_node, allowed=JOB_KEYS)
                if "jobs" not in top:
                    raise self.fail(root, "`defaults:` given but no `jobs:` list.")
                jobs_node = top["jobs"][1]
                if not isinstance(jobs_node, yaml.SequenceNode):
                    raise self.fail(jobs_node, "`jobs` must be a list of job mappings (`- model: ...`).")
                job_nodes = list(jobs_node.value)
            else:
                job_nodes = [root]
        else:
            raise self.fail(root, "a recipe is a job mapping (`model:`, `scheme:`) or has a `jobs:` list.")
        if not job_nodes:
            raise self.fail(root, "the recipe lists no jobs.")

        jobs: list[RecipeJob] = []
        targets: dict[str, int] = {}
        for node in job_nodes:
            for job in self.job(node, defaults):
                if job.target is not None:
                    previous = targets.get(job.target)
                    if previous is not None:
                        raise self.fail(
                            node,
                            f"target {_describe(job.target)} is also the target of the job at line {previous}; "
                            "give each job its own target.",
                        )
                    targets[job.target] = job.line or 0
                jobs.append(job)
        return jobs

    def mapping(
        self, node: yaml.MappingNode, *, allowed: tuple[str, ...] | None = None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise self.fail(key_node, f"keys must be strings, got {_describe(key)}.")
            if key in out:
                raise self.fail(key_node, f"key {_describe(key)} is given twice.")
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise self.fail(key_node, f"unknown key {_describe(key)}.{hint} Allowed keys: {', '.join(allowed)}.")
            out[key] = (key_node, value_node)
        return out

    def job(self, node: yaml.Node, defaults: Mapping[str, tuple[yaml.Node, yaml.Node]]) -> list[RecipeJob]:
        """The entry's jobs, one per scheme, each checked by ``make_job``; its errors point at their key's line."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, "each job must be a mapping with `model:` and `scheme:`.")
        fields = {**defaults, **self.mapping(node, allowed=JOB_KEYS)}
        for required in ("model", "scheme"):
            if required not in fields:
                raise self.fail(node, f"the job has no `{required}:`.")
        scheme_node = fields["scheme"][1]
        schemes = list(scheme_node.value) if isinstance(scheme_node, yaml.SequenceNode) else [scheme_node]
        if not schemes:
            raise self.fail(scheme_node, "`scheme` is an empty list; give at least one preset name.")
        template = self.string(fields["target"], "target") if "target" in fields else None
        if template is not None and len(schemes) > 1 and "{scheme}" not in template:
            raise self.fail(
                fields["target"][1],
                f"target {_describe(template)} would be shared by {len(schemes)} schemes; "
                "put `{scheme}` in it (e.g. my-org/Model-{scheme}) or split the job.",
            )
        options = self.options(fields)
        jobs: list[RecipeJob] = []
        for item in schemes:
            job = self.checked(fields, item, options, template)
            if any(job.scheme == seen.scheme for seen in jobs):
                raise self.fail(item, f"scheme {_describe(job.scheme)} is listed twice.")
            jobs.append(replace(job, line=node.start_mark.line + 1))
        return jobs

    def options(self, fields: Mapping[str, tuple[yaml.Node, yaml.Node]]) -> dict[str, Any]:
        """``make_job`` keyword arguments from the entry's YAML values.

        Only the YAML shape is checked here (a list of strings, a string...), so that a message
        describes a huge or aliased value instead of printing it; ``make_job`` checks the rest.
        """
        ignore = self.value(fields["ignore"]) if "ignore" in fields else ()
        ignore = () if ignore is None else [ignore] if isinstance(ignore, str) else ignore
        if not isinstance(ignore, (list, tuple)) or not all(isinstance(entry, str) for entry in ignore):
            raise self.fail(fields["ignore"][1],
                            f"`ignore` must be a list of module names or 're:' regexes, got {_describe(ignore)}.")
        revision = self.value(fields["revision"]) if "revision" in fields else None
        if isinstance(revision, int) and not isinstance(revision, bool):  # an all-digit commit or tag parses as a YAML int
            revision = str(fields["revision"][1].value)
        if revision is not None and not isinstance(revision, str):
            raise self.fail(fields["revision"][1], f"`revision` must be a branch, tag or commit, got {_describe(revision)}.")
        return {
            "ignore": ignore,
            "default_ignore": self.boolean(fields["default_ignore"], "default_ignore") if "default_ignore" in fields else True,
            "observer": self.string(fields["observer"], "observer") if "observer" in fields else None,
            "private": self.boolean(fields["private"], "private") if "private" in fields else False,
            "revision": revision,
            "rotate": self.boolean(fields["rotate"], "rotate") if "rotate" in fields else False,
        }

    def checked(self, fields: Mapping[str, tuple[yaml.Node, yaml.Node]], item: yaml.Node, options: dict[str, Any],
                template: str | None) -> RecipeJob:
        """One (model, scheme) entry through ``make_job``; an error is reported at the key it is about."""
        scheme = self.loader.construct_object(item, deep=True)
        target = None
        try:
            if template is not None:
                target = template.replace("{scheme}", scheme_repo_suffix(canonical_scheme_name(scheme)))
            job = make_job(self.string(fields["model"], "model"), scheme, target=target, hub_only=True, **options)
        except PtqError as err:
            key = _OPTION_KEYS.get(err.option or "", "scheme")
            where = item if key == "scheme" or key not in fields else fields[key][1]
            raise self.fail(where, f"`{key}`: {err}") from err
        return RecipeJob(
            model=job.source, scheme=job.scheme_name, ignore=tuple(options["ignore"]),
            default_ignore=options["default_ignore"], observer=None if options["observer"] is None else job.observer,
            target=job.target, private=job.private, revision=job.revision, rotate=job.rotate,
        )

    # values ------------------------------------------------------------------
    def value(self, pair: tuple[yaml.Node, yaml.Node]) -> Any:
        return self.loader.construct_object(pair[1], deep=True)

    def string(self, pair: tuple[yaml.Node, yaml.Node], key: str) -> str | None:
        value = self.value(pair)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(pair[1], f"`{key}` must be a non-empty string, got {_describe(value)}.")
        return value.strip()

    def boolean(self, pair: tuple[yaml.Node, yaml.Node], key: str) -> bool:
        value = self.value(pair)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and len(value) <= 80:
            try:
                return parse_bool(value, name=key)
            except ValueError as err:
                raise self.fail(pair[1], str(err)) from err
        raise self.fail(pair[1], f"`{key}` must be true or false, got {_describe(value)}.")
