"""Data-free SpinQuant rotations: R1 on the residual stream, R2 on the attention heads.

A pre-norm decoder computes the same function when the residual stream is multiplied by an
orthogonal matrix R1 everywhere it is written (embedding rows, ``o_proj`` / ``down_proj``
outputs) and by R1's transpose everywhere it is read (``q/k/v``, ``gate/up``, routers,
``lm_head``), once every RMSNorm scale is folded into the linears that follow it (an RMSNorm
without a scale commutes with an orthogonal map). R2 does the same per attention head between
``v_proj``'s outputs and ``o_proj``'s inputs. Hadamard rotations spread a few large residual
channels over all of them, so 4-bit grids waste less range on outliers
(https://arxiv.org/abs/2405.16406). Nothing is added at run time: the output loads like any
other checkpoint.

:class:`SpinQuant` speaks compressed-tensors' ``Converter`` protocol, so it is one more link of
the converter chain (``convert.py``), after any dequantizer: each tensor is rotated on its own,
the norm scales it needs are read up front (they are small), and the output is byte-identical
to llm-compressor 0.15's ``SpinQuantConverter`` with its defaults (``tests/golden/rotation.json``
proves it per tensor). The arithmetic is the peer's: scales and rotations are fused in
float64, each step rounded back to the weight's dtype, with compressed-tensors' own Hadamard
matrix scaled by ``1/sqrt(n)``: Sylvester's where every rotated width is a power of two, else
its random Hadamard (the peer's ``transform_type="random-hadamard"``, seed 0). For 16-bit weights at least 512 wide a step is computed by
``rotation_fast`` (a few small exact products instead of a dense dgemm), whose bytes are
certified to be the dgemm's, element by element; a tensor where one element is not certified
is redone by the dgemm itself.

Models with MLA (DeepSeek-V3: ``kv_lora_rank`` in the config) get R1 only, as the peer's
default: their values pass through a compressed latent, so R2 has no per-head path to rotate.
A tied embedding is untied (the rotated head is not the rotated embedding), and
:meth:`SpinQuant.update_model_config` says so in the output's ``config.json``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from .checkpoint import Checkpoint, ShardReader, TensorInfo, open_checkpoint, read_config
from .convert import ST_TO_TORCH, auto_converters
from .sources.detect import detect_source
from .sources.formats import DENSE, FP8_BLOCK
from .errors import ConverterError, InvalidOptionError
from .rotation_fast import FastRotations
from .rotation_layout import (
    OFFSET_NORM_MODELS, RotationLayout, check_projector, compiled, matches_any, norm_names_of, refuse_offset_norms,
    rotation_ignore,
)

__all__ = [
    "OFFSET_NORM_MODELS", "ROTATIONS", "RotationLayout", "SpinQuant", "TRANSFORM_TYPES", "build_spinquant",
    "rotation_chain", "rotation_ignore", "rotation_note",
]

ROTATIONS = ("R1", "R2")
TRANSFORM_TYPES = ("hadamard", "random-hadamard")

# llm-compressor's parameter names of quantized modules (compressed-tensors, GPTQ, AWQ): the
# rotation reads dense weights only, so a chain must dequantize first.
_QPARAM_NAMES = frozenset({
    "weight_scale", "weight_scale_inv", "input_scale", "weight_zero_point", "weight_global_scale",
    "input_global_scale", "weight_packed", "weight_shape", "qweight", "qzeros", "scales",
})
_PACKED_DTYPES = frozenset({torch.float8_e4m3fn, torch.float8_e5m2, torch.uint8, torch.int8, torch.int32})
_LAYER = re.compile(r"^(?P<layer>(.*\.)?layers\.\d+)\.")


def _split(name: str, tensor: torch.Tensor) -> tuple[str, str]:
    """(module, parameter); a fused 3-D expert tensor (``experts.gate_up_proj``) is its own module's weight."""
    module, _, param = name.rpartition(".")
    if param in ("weight", "bias"):
        return module, param
    return (name, "weight") if tensor.ndim == 3 else (name, param)


def hadamard(size: int, dtype: torch.dtype = torch.float64, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """compressed-tensors' Hadamard matrix over ``sqrt(size)``: orthogonal (R @ R.T = I).

    Without ``generator`` Sylvester's (power-of-two sizes); with it compressed-tensors' random
    Hadamard (sizes of 2^k times a Hadamard order it knows, e.g. 3584 = 28 x 128, with random
    signs drawn from ``generator``), which is what makes most real widths rotatable.
    """
    from compressed_tensors.transform.utils.hadamard import deterministic_hadamard_matrix, random_hadamard_matrix

    if generator is None:
        matrix = deterministic_hadamard_matrix(size, dtype)
    else:
        try:
            matrix = random_hadamard_matrix(size, dtype, gen=generator)
        except ValueError as err:
            raise ConverterError(f"No Hadamard matrix of size {size} is known (compressed-tensors: {err}); this "
                                 "width cannot be rotated. Run without rotate.") from None
    return matrix / torch.tensor(size, dtype=dtype).sqrt()


def _power_of_two(size: int) -> bool:
    return size > 0 and not size & (size - 1)


def _cols(tensor: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """``tensor @ blockdiag(rotation)`` over the last dimension."""
    return (tensor.unflatten(-1, (-1, rotation.shape[0])) @ rotation).flatten(-2)


def _rows(tensor: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """``blockdiag(rotation).T @ tensor`` over the second-to-last dimension."""
    return (rotation.T @ tensor.unflatten(-2, (-1, rotation.shape[0]))).flatten(-3, -2)


class SpinQuant:
    """The R1 / R2 rotations as a compressed-tensors ``Converter`` (``process`` per tensor).

    Build it with :meth:`from_pretrained` (a local folder) or :func:`build_spinquant` (any reader):
    both read ``config.json`` and the norm scales.

    Args:
        hidden_size: the residual stream's width.
        head_dim: one attention head's width (rotated with R2).
        norms: module name -> RMSNorm scale, for every norm folded into a linear.
        rotations: ``("R1", "R2")``, ``("R1",)`` or ``("R2",)``.
        tied: the source ties ``lm_head`` to the embedding; the output is untied.
        emit_lm_head: write ``lm_head.weight`` from the embedding (a tied source stores none).
        heads: (attention heads, key/value heads), to check R2's shapes; ``None``: unchecked.
        ignore: regexes of tensor names left as they are (towers outside the text stream).
        layout: where the rotations go.
        precision: the dtype scales and rotations are fused in (the peer's float64).
        transform_type: ``"hadamard"`` (Sylvester: power-of-two widths) or ``"random-hadamard"``
            (random signs, widths of 2^k times a known Hadamard order), as the peer's.
        transform_block_size: R1's block: a block-diagonal rotation when smaller than the stream
            (``None``: the whole stream), as the peer's.
        seed: the random Hadamard's seed; R1 is drawn first, then R2, from one generator (the
            peer's order, so the same seed gives the peer's bytes).
    """

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        norms: Mapping[str, torch.Tensor],
        *,
        rotations: Iterable[str] = ROTATIONS,
        tied: bool = False,
        emit_lm_head: bool = False,
        heads: tuple[int | None, int | None] = (None, None),
        ignore: Iterable[str] = (),
        layout: RotationLayout | None = None,
        precision: torch.dtype = torch.float64,
        transform_type: str = "hadamard",
        transform_block_size: int | None = None,
        seed: int = 0,
    ):
        self.rotations = tuple(r.upper() for r in rotations)
        self.label = f"SpinQuant {'+'.join(self.rotations)}"
        if not self.rotations or not set(self.rotations) <= set(ROTATIONS):
            raise InvalidOptionError(f"rotations must be R1 and/or R2, got {list(rotations)}.")
        if transform_type not in TRANSFORM_TYPES:
            raise InvalidOptionError(f"transform_type must be one of {list(TRANSFORM_TYPES)}, got {transform_type!r}.")
        block = transform_block_size or hidden_size
        if block <= 0 or hidden_size % block:
            raise InvalidOptionError(f"transform_block_size {block} must divide hidden_size {hidden_size}.")
        if transform_type == "hadamard":
            for what, size in (("R1 block (hidden_size)", block), ("head_dim", head_dim if "R2" in self.rotations else 1)):
                if not _power_of_two(size):
                    raise ConverterError(f"A Sylvester Hadamard rotation needs a power-of-two {what}; this model's is "
                                         f"{size}. Use transform_type='random-hadamard', or run without rotate.")
        self.hidden_size, self.head_dim, self.transform_type = hidden_size, head_dim, transform_type
        self.norms = dict(norms)
        self.tied, self.emit_lm_head, self.precision = tied, emit_lm_head, precision
        generator = torch.Generator().manual_seed(seed) if transform_type == "random-hadamard" else None
        # R1 is drawn even for R2 alone when random (the peer's generator order); Sylvester's is not needed then
        r1 = hadamard(block, precision, generator=generator) if generator is not None or "R1" in self.rotations else None
        self.r1 = r1 if "R1" in self.rotations else None
        self.r2 = hadamard(head_dim, precision, generator=generator) if "R2" in self.rotations else None
        self._r2_rows = None if heads[1] is None else heads[1] * head_dim  # v_proj's outputs
        self._r2_cols = None if heads[0] is None else heads[0] * head_dim  # o_proj's inputs
        self.layout = layout = layout or RotationLayout()
        self._ignore = compiled(ignore)
        self._embedding, self._lm_head = re.compile(layout.embedding), re.compile(layout.lm_head)
        self._reads_attn, self._reads_mlp = compiled(layout.attn_in), compiled(layout.mlp_in)
        self._writes = compiled(layout.attn_out + layout.mlp_out)
        self._v, self._o = re.compile(layout.attn_v), re.compile(layout.attn_o)
        self._residual = compiled(layout.residual)
        self._projector = compiled(layout.projector_out)
        self.fast = FastRotations()  # the dgemm's bytes without the dgemm, where certified

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, **options: Any) -> SpinQuant:
        """The rotation of a local checkpoint folder (``build_spinquant``'s ``options``), for ``converter=``."""
        checkpoint = open_checkpoint(model_dir)
        read = _tensor_reader(checkpoint, lambda infos: ShardReader(checkpoint))
        return build_spinquant(read_config(model_dir) or {}, checkpoint.tensors, read, **options)

    # ------------------------------------------------------------------ the Converter protocol
    def process(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor rotated where the layout places it; untouched ones are returned as they came."""
        out: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            module, param = _split(name, tensor)
            if param in ("weight", "bias") and matches_any(self._projector, module):
                out[name] = self._projected(module, param, tensor)
                continue
            if matches_any(self._ignore, name):
                out[name] = tensor
                continue
            if param in _QPARAM_NAMES or (param == "weight" and tensor.dtype in _PACKED_DTYPES):
                raise ConverterError(f"{name} is quantized ({tensor.dtype}); the rotation needs dense weights, so "
                                     "dequantize first (a dequantizer earlier in the chain).")
            if param == "weight" and self._embedding.search(module):
                out[name] = self._fused(tensor, cols=self.r1)
                if self.emit_lm_head:
                    out["lm_head.weight"] = self._head("lm_head", tensor)
            elif param == "weight" and self._lm_head.search(module):
                out[name] = self._head(module, tensor)
            elif param in ("weight", "bias"):
                out[name] = self._layer(name, module, param, tensor)
            else:
                out[name] = self._other(name, module, tensor)
        return out

    def validate(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.process(tensors)

    def get_dependencies(self, weight_name: str) -> set[str]:
        """None: the norm scales were read when the converter was built."""
        return set()

    def update_config(self, config: Any) -> Any:
        """The weights stay dense: the quantization config passes through."""
        return config

    def update_model_config(self, model_config: dict) -> dict:
        """A tied source's output unties ``lm_head`` (its rotated weights differ from the embedding's)."""
        if self.tied:
            model_config["tie_word_embeddings"] = False
            if isinstance(model_config.get("text_config"), dict):
                model_config["text_config"]["tie_word_embeddings"] = False
        return model_config

    # ------------------------------------------------------------------ the roles
    def _layer(self, name: str, module: str, param: str, tensor: torch.Tensor) -> torch.Tensor:
        if module in self.norms:
            if param == "bias":
                raise ConverterError(f"{module} has a bias; SpinQuant folds only scale-only norms (RMSNorm).")
            return torch.ones_like(tensor)  # its scale now lives in the next linears
        reads_attn, reads_mlp = matches_any(self._reads_attn, module), matches_any(self._reads_mlp, module)
        writes = matches_any(self._writes, module)
        is_v = self.r2 is not None and self._v.search(module) is not None
        is_o = self.r2 is not None and self._o.search(module) is not None
        if param == "bias":
            if writes and self.r1 is not None:
                return self._fused(tensor, cols=self.r1)
            if is_v:
                return self._fused(tensor, cols=self.r2)
            if not (reads_attn or reads_mlp):
                self._refuse_unmapped(name, tensor)
            return tensor
        if reads_attn or reads_mlp:
            self._check_hidden(module, tensor, -1)
            norm = self._norm_of(module, self.layout.attn_norm if reads_attn else self.layout.mlp_norm)
            tensor = self._fused(self._scaled(tensor, norm), cols=self.r1)
            if is_v:
                self._check_heads(name, tensor, -2, self._r2_rows)
                tensor = self._fused(tensor, rows=self.r2)
            return tensor
        if writes:
            if is_o:
                self._check_heads(name, tensor, -1, self._r2_cols)
                tensor = self._fused(tensor, cols=self.r2)
            if self.r1 is not None:
                self._check_hidden(module, tensor, -2)
                tensor = self._fused(tensor, rows=self.r1)
            return tensor
        return self._other(name, module, tensor)

    def _other(self, name: str, module: str, tensor: torch.Tensor) -> torch.Tensor:
        """A bare parameter: an mHC mixer (one R1 block per stream), or one the stream must not touch."""
        if matches_any(self._residual, name) or matches_any(self._residual, module):
            if self.r1 is None:
                return tensor
            last = tensor.shape[-1] if tensor.ndim else 0
            if last == 0 or last % self.hidden_size:
                raise ConverterError(f"{name} is a residual mixer but its last dimension {last} is not a multiple "
                                     f"of hidden_size={self.hidden_size}.")
            return self._fused(tensor, cols=self.r1)
        self._refuse_unmapped(name, tensor)
        return tensor

    def _projected(self, module: str, param: str, tensor: torch.Tensor) -> torch.Tensor:
        """A projector's output joins the residual stream: rotated as an embedding row is."""
        if param == "bias":
            return self._fused(tensor, cols=self.r1)
        if self.r1 is not None:
            self._check_hidden(module, tensor, -2)
        return self._fused(tensor, rows=self.r1)

    def _head(self, module: str, tensor: torch.Tensor) -> torch.Tensor:
        self._check_hidden(module, tensor, -1)
        finals = [n for n in self.norms if not _LAYER.match(n) and n.rpartition(".")[2] == self.layout.final_norm]
        if len(finals) != 1:
            raise ConverterError(f"{module} reads the final norm, but {len(finals)} were found ({finals}).")
        return self._fused(self._scaled(tensor, self.norms[finals[0]]), cols=self.r1)

    # ------------------------------------------------------------------ the arithmetic (the peer's steps)
    def _scaled(self, tensor: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """The norm's scale folded into the reader's input columns, in ``precision``, rounded back."""
        scale = norm.to(device=tensor.device, dtype=self.precision)
        return (tensor.to(self.precision) * scale).to(tensor.dtype)

    def _fused(self, tensor: torch.Tensor, *, cols: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """One rotation of the last (``cols``) or second-to-last (``rows``) dimension, rounded back:
        ``rotation_fast``'s certified bytes of the peer's dgemm, or the dgemm itself."""
        rotation, step = (cols, _cols) if rows is None else (rows, _rows)
        if rotation is None:
            return tensor
        if self.precision == torch.float64:
            done = self.fast.rotate(tensor, rotation, rows=rows is not None)
            if done is not None:
                return done
        return step(tensor.to(self.precision), rotation.to(device=tensor.device)).to(tensor.dtype)

    def _norm_of(self, module: str, norm: str) -> torch.Tensor:
        layer = _LAYER.match(module)
        name = f"{layer.group('layer')}.{norm}" if layer else None
        if name not in self.norms:
            raise ConverterError(f"{module} reads the residual stream, but its norm {name} is not in the checkpoint.")
        return self.norms[name]

    def _check_hidden(self, module: str, tensor: torch.Tensor, dim: int) -> None:
        if tensor.ndim < 2 or tensor.shape[dim] != self.hidden_size:
            raise ConverterError(f"{module} {tuple(tensor.shape)}: dimension {dim} should be "
                                 f"hidden_size={self.hidden_size} to be rotated.")

    def _check_heads(self, name: str, tensor: torch.Tensor, dim: int, expected: int | None) -> None:
        size = tensor.shape[dim]
        if (expected is not None and size != expected) or size % self.head_dim:
            raise ConverterError(f"R2 cannot rotate {name}: dimension {dim} is {size}, not heads x "
                                 f"head_dim={self.head_dim}{f' = {expected}' if expected else ''}; an MLA-like "
                                 "attention has no per-head value path: rotate with R1 only.")

    def _refuse_unmapped(self, name: str, tensor: torch.Tensor) -> None:
        if any(size > 0 and size % self.hidden_size == 0 for size in tensor.shape):
            raise ConverterError(
                f"{name} {tuple(tensor.shape)} has a dimension that is a multiple of hidden_size={self.hidden_size} "
                "but no place in the rotation layout: rotating the residual stream without it would change the "
                "model's outputs. Ignore it (a tower outside the text stream) or run without rotate."
            )


def rotation_note(converters: Sequence[Any]) -> str | None:
    """What a card says of a chain's rotation (ours, or the peer's ``SpinQuantConverter``); ``None``: none."""
    for converter in converters:
        rotations = getattr(converter, "rotations", None)
        if rotations and "SpinQuant" in type(converter).__name__:
            kind = "random Hadamard" if getattr(converter, "transform_type", None) == "random-hadamard" else "Hadamard"
            return (f"SpinQuant {'+'.join(rotations)} ({kind} rotations, norm scales folded into the linears) "
                    "fused into the weights before quantizing: the same function, fewer outliers")
    return None


def build_spinquant(
    config: Mapping[str, Any],
    names: Iterable[str],
    read: Callable[[list[str]], Mapping[str, torch.Tensor]],
    *,
    rotations: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    layout: RotationLayout | None = None,
    transform_type: str | None = None,
    transform_block_size: int | None = None,
    seed: int = 0,
) -> SpinQuant:
    """The rotation for one checkpoint, as the peer's ``SpinQuantConverter.from_pretrained`` builds it.

    Args:
        config: the source's ``config.json`` (a multimodal one's ``text_config`` is read).
        names: every tensor name of the checkpoint (headers or index).
        read: name list -> tensors: reads the norm scales (a few KB per layer).
        rotations: ``None``: R1+R2, or R1 only for an MLA model (``kv_lora_rank``).
        ignore: tensor-name regexes left as they are; ``None``: the model's towers (``rotation_ignore``).
        layout: where the rotations go.
        transform_type: ``None``: Sylvester ``"hadamard"`` (the peer's default, its bytes) where
            every rotated width is a power of two, else ``"random-hadamard"`` (the peer's bytes with
            that option and ``seed``), so a 3584- or 5120-wide model rotates instead of failing.
        transform_block_size, seed: as :class:`SpinQuant`.

    Raises:
        ConverterError: no norm to fold, a (1 + w) norm (Gemma, Qwen3-Next, ...), or a width that is
            not a power of two.
    """
    names = list(names)
    layout = layout or RotationLayout()
    text = config.get("text_config", config)
    if not isinstance(text, Mapping) or not isinstance(text.get("hidden_size"), int):
        raise ConverterError("config.json names no hidden_size; SpinQuant rotates the residual stream it sizes.")
    refuse_offset_norms(config)
    hidden = text["hidden_size"]
    heads = text.get("num_attention_heads")
    head_dim = text.get("head_dim") or (hidden // heads if heads else 0)
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    if ignore is None:
        ignore = rotation_ignore(config, names)
        check_projector(ignore, names, layout)
    skipped = compiled(ignore)
    kept = [n for n in names if not matches_any(skipped, n)]
    norm_names = norm_names_of(kept, layout)
    if not norm_names:
        raise ConverterError("No RMSNorm scales (input_layernorm / post_attention_layernorm / norm) to fold: "
                             "SpinQuant needs a pre-norm decoder.")
    head = re.compile(layout.lm_head)
    has_head = any(head.search(n[: -len(".weight")]) for n in kept if n.endswith(".weight"))
    if rotations is None:
        rotations = ("R1",) if "kv_lora_rank" in text else ROTATIONS
    if transform_type is None:
        rotations = tuple(r.upper() for r in rotations)
        widths = [transform_block_size or hidden] + ([head_dim] if "R2" in rotations else [])
        transform_type = "hadamard" if all(map(_power_of_two, widths)) else "random-hadamard"
    norms = {n[: -len(".weight")]: t for n, t in read(norm_names).items()}
    return SpinQuant(
        hidden, head_dim, norms, rotations=rotations, tied=tied, emit_lm_head=tied and not has_head,
        heads=(heads, text.get("num_key_value_heads")), ignore=ignore, layout=layout, transform_type=transform_type,
        transform_block_size=transform_block_size, seed=seed,
    )


def _dequantizers(checkpoint: Checkpoint, config: Mapping[str, Any]) -> tuple[Any, ...]:
    """compressed-tensors' converters that make a quantized source dense, for the rotation to read.

    FP8 blocks get ``FP8BlockDequantizer`` (bf16, the source's block size, its modules): the
    rotation must see the dense weights, so the fused decode of a plain FP8-block job cannot be used.
    """
    source = detect_source(config, checkpoint.tensors)
    if source.format.name == DENSE:
        return ()
    if source.format.name == FP8_BLOCK:
        from compressed_tensors.entrypoints.convert.converters import FP8BlockDequantizer

        modules = sorted({d.module for d in source.dequantize})
        return (FP8BlockDequantizer(targets=modules, weight_block_size=source.format.block),)
    return auto_converters(source, config)


def rotation_chain(
    checkpoint: Checkpoint,
    config: Mapping[str, Any] | None,
    converters: Sequence[Any],
    open_reader: Callable[[list[TensorInfo]], AbstractContextManager],
) -> tuple[Any, ...]:
    """The converter chain of a rotated job: the caller's chain (or the source's dequantizers), then SpinQuant.

    Args:
        checkpoint: the source's headers.
        config: its ``config.json``.
        converters: the caller's chain; empty: the dequantizers the source's format needs.
        open_reader: tensor infos -> a reader (``read_into``) for them, as a context manager:
            the norm scales are read through it, before planning (a Hub job reads them by Range).

    Raises:
        ConverterError: the model cannot be rotated (no norms, widths that are not powers of two).
    """
    config = config or {}
    chain = tuple(converters) or _dequantizers(checkpoint, config)
    return (*chain, build_spinquant(config, checkpoint.tensors, _tensor_reader(checkpoint, open_reader)))


def _tensor_reader(
    checkpoint: Checkpoint, open_reader: Callable[[list[TensorInfo]], AbstractContextManager]
) -> Callable[[list[str]], dict[str, torch.Tensor]]:
    """names -> tensors, read through one reader opened for just them (the norm scales)."""
    def read(names: list[str]) -> dict[str, torch.Tensor]:
        infos = [checkpoint.tensors[n] for n in names]
        found = {}
        with open_reader(infos) as reader:
            for info in infos:
                raw = torch.empty(info.nbytes, dtype=torch.uint8)
                reader.read_into(info, raw)
                found[info.name] = raw.view(ST_TO_TORCH[info.dtype]).reshape(info.shape)
        return found
    return read
