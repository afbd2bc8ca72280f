"""GitHub Actions workflow commands and environment files, without a dependency.

The runner reads commands from the step's stdout (``::add-mask::``, ``::group::``,
``::error::``) and values from files it names in the environment (``GITHUB_OUTPUT``,
``GITHUB_STEP_SUMMARY``). The escaping rules are the ones of ``@actions/core``
(``toCommandValue``/``escapeData`` in ``command.ts``, ``prepareKeyValueMessage`` in
``file-command.ts``).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO


def escape_data(text: str) -> str:
    """Escape a command's message: ``%``, ``\\r`` and ``\\n`` would end or corrupt it.

    The runner turns ``%0A`` back into a newline, so a multi-line message stays one
    annotation.

    Example:
        >>> escape_data("50% done\\nnext line")
        '50%25 done%0Anext line'
    """
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def neutralize(text: str) -> str:
    """Make log lines that look like workflow commands print as text instead of running.

    Tensor names, file names and messages come from the checkpoint being quantized; a line
    such as ``::add-mask::x`` or ``::stop-commands::x`` (or the older ``##[command]`` form)
    in them must not reach the runner as a command. The runner trims a line before it looks
    for the prefix; a zero-width space inside the prefix keeps the text readable. A line ends
    at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (the runner reads stdout with .NET's
    ``ReadLine``, which splits on all three), so text after a ``\\r`` is a line of its own.

    Example:
        >>> neutralize("  ::error::x") == "  :\u200b:error::x"
        True
    """
    pieces = _LINE_BREAK.split(text)  # lines at even positions, their breaks (kept as they were) between
    for i in range(0, len(pieces), 2):
        line = pieces[i]
        body = line.lstrip()
        if body.startswith(("::", "##[")):
            indent = line[: len(line) - len(body)]
            pieces[i] = indent + body[0] + "\u200b" + body[1:]
    return "".join(pieces)


_LINE_BREAK = re.compile(r"(\r\n|\r|\n)")


class Console:
    """The step's log: workflow commands and plain lines, flushed as they are written."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._group: str | None = None

    def command(self, name: str, message: str = "") -> None:
        self._stream.write(f"::{name}::{escape_data(message)}\n")
        self._stream.flush()

    def line(self, text: str = "") -> None:
        self._stream.write(neutralize(text) + "\n")
        self._stream.flush()

    def add_mask(self, secret: str) -> None:
        """Ask the runner to print ``***`` for ``secret``; each line separately, as the runner masks per line."""
        for part in {secret, *secret.splitlines()}:
            if part.strip():
                self.command("add-mask", part)

    def error(self, message: str) -> None:
        self.end_group()
        self.command("error", message)

    def group(self, title: str) -> None:
        """Open a collapsible log group, closing the open one (groups do not nest)."""
        self.end_group()
        self.command("group", title)
        self._group = title

    def end_group(self) -> None:
        if self._group is not None:
            self.command("endgroup")
            self._group = None


def format_outputs(outputs: Mapping[str, str]) -> str:
    """``GITHUB_OUTPUT`` text: every value in the heredoc form ``name<<DELIM ... DELIM``.

    The heredoc form keeps multi-line values intact; the delimiter is random and checked
    against the value, so a value cannot end the block early and inject another output.
    """
    chunks = []
    for name, value in outputs.items():
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
        if delimiter in name or delimiter in value:  # pragma: no cover - a uuid collision
            raise ValueError(f"output {name!r} contains its delimiter")
        chunks.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(chunks)


def append_file(variable: str, text: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Append ``text`` to the file the runner named in ``variable``; False when it named none.

    Run outside a runner (no variable), nothing is written and the caller prints instead.
    """
    path = environ.get(variable)
    if not path:
        return False
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(text)
    return True
