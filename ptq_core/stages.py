"""The stages a job reports through its progress callback, named once for every front end.

The core calls ``progress(stage, done, total)`` with these names; ``Stage`` is a ``str``
enum, so a stage compares equal to its plain text (``Stage.DOWNLOAD == "download"``) and
a callback written against the strings keeps working. The Action folds stages into log
groups and the Space into one bar; both key their tables by ``Stage`` instead of copying
the names.

Order of first events: ``quantize_job`` reports download, validate, quantize, write; a
streamed Hub job reports download (bytes), validate, quantize (units), write (output
shards), upload (bytes), stage (shards on the staging branch), card, commit. Download,
quantize and upload run at once in a streamed job, so their events interleave.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Stage"]


class Stage(str, Enum):
    """One stage of a job, as its progress events name it."""

    DOWNLOAD = "download"
    VALIDATE = "validate"
    QUANTIZE = "quantize"
    WRITE = "write"
    UPLOAD = "upload"
    STAGE = "stage"
    CARD = "card"
    COMMIT = "commit"

    def __str__(self) -> str:  # f"{stage}" is the plain name, as the callback's strings were
        return self.value

    @property
    def counts_bytes(self) -> bool:
        """True where ``done``/``total`` are bytes (download, upload); the others count units, shards or files."""
        return self in (Stage.DOWNLOAD, Stage.UPLOAD)

    @property
    def label(self) -> str:
        """What the job is doing in this stage, for a progress line or bar."""
        return _LABELS[self]

    @classmethod
    def parse(cls, name: str) -> Stage | None:
        """The stage called ``name``, or ``None`` for a name this version does not know."""
        try:
            return cls(name)
        except ValueError:
            return None


_LABELS: dict[Stage, str] = {
    Stage.DOWNLOAD: "Downloading",
    Stage.VALIDATE: "Reading the headers",
    Stage.QUANTIZE: "Quantizing",
    Stage.WRITE: "Writing shards",
    Stage.UPLOAD: "Uploading",
    Stage.STAGE: "Staging shards",
    Stage.CARD: "Writing the model card",
    Stage.COMMIT: "Committing",
}
