"""The one HF <-> Megatron-mcore tensor mapping, used in both directions.

Every Megatron tensor on a TP rank is described as a concatenation (along dim 0) of
*pieces*, each piece being a slice of one HF tensor along dim 0 or 1. Splitting reads the
pieces and concatenates them; merging copies each piece back to its slice of the HF tensor.
Describing the layout once, as data, is what keeps the two directions from disagreeing.

Layout facts (MindSpeed-LLM 2.0.0 / Megatron core_r0.8.0, local transformer implementation):
- linear_qkv: per query group g, that group's query heads, then its key head, then its value
  head; TP ranks take whole groups in order. The bias follows the same order.
- linear_fc1 on rank r: gate_proj's r-th row chunk followed by up_proj's r-th row chunk.
- embedding, output_layer, linear_qkv, linear_fc1 split along dim 0; linear_proj and
  linear_fc2 along dim 1; layer norms are copied to every rank.
- vocabulary rows are padded up to a multiple of TP by repeating the last row.
- pipeline stages number their layers from 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch

from q7x2_runtime.convert.layout import Parallel
from q7x2_runtime.model_dims import ModelDims

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class Piece:
    """A slice [start, stop) along `dim` of the HF tensor `hf_name`, repeated `repeat` times along dim 0."""

    hf_name: str
    dim: int
    start: int
    stop: int
    repeat: int = 1
    padding: bool = False  # vocabulary padding: written, but dropped again when merging

    def rows(self, hf_shape: tuple[int, ...]) -> int:
        """How many dim-0 rows this piece contributes to the Megatron tensor."""
        return (self.stop - self.start) * self.repeat if self.dim == 0 else hf_shape[0]


@dataclass(frozen=True)
class McoreTensor:
    name: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]
    # False for tensors that duplicate another one: norms on TP ranks > 0, and the output
    # layer of a tied-embedding model (a copy of the embedding Megatron keeps on the last stage).
    authoritative: bool = True


def padded_vocab_size(dims: ModelDims, tp: int, divisible_by: int = 1) -> int:
    """Megatron's _vocab_size_with_padding with --make-vocab-size-divisible-by `divisible_by`."""
    multiple = divisible_by * tp
    return -(-dims.vocab_size // multiple) * multiple


def hf_layer_names(layer: int, dims: ModelDims) -> list[str]:
    p = f"model.layers.{layer}."
    names = [p + "input_layernorm.weight"]
    for proj in ("q_proj", "k_proj", "v_proj"):
        names.append(p + f"self_attn.{proj}.weight")
        if dims.qkv_bias:
            names.append(p + f"self_attn.{proj}.bias")
    names += [
        p + "self_attn.o_proj.weight",
        p + "post_attention_layernorm.weight",
        p + "mlp.gate_proj.weight",
        p + "mlp.up_proj.weight",
        p + "mlp.down_proj.weight",
    ]
    return names


def hf_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """Every tensor a Qwen2 HF checkpoint holds, in the order we write them, with its shape."""
    h, f, d = dims.hidden_size, dims.ffn_hidden_size, dims.head_dim
    q, kv = dims.num_attention_heads * d, dims.num_query_groups * d
    per_layer = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (h, q),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    out: dict[str, tuple[int, ...]] = {EMBED: (dims.vocab_size, h)}
    for layer in range(dims.num_layers):
        for name in hf_layer_names(layer, dims):
            out[name] = per_layer[name.split(".", 3)[3]]
    out[FINAL_NORM] = (h,)
    if dims.untie_embeddings:
        out[LM_HEAD] = (dims.vocab_size, h)
    return out


def _shape(pieces: Iterable[Piece], shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    pieces = list(pieces)
    first = pieces[0]
    hf = shapes[first.hf_name]
    rows = sum(p.rows(shapes[p.hf_name]) for p in pieces)
    if first.dim == 1:
        return (hf[0], first.stop - first.start)
    return (rows, *hf[1:])


def _vocab_pieces(hf_name: str, dims: ModelDims, tp: int, rank: int) -> tuple[Piece, ...]:
    padded = padded_vocab_size(dims, tp)
    per_rank = padded // tp
    start, stop = rank * per_rank, (rank + 1) * per_rank
    pieces = []
    real_stop = min(stop, dims.vocab_size)
    if start < real_stop:
        pieces.append(Piece(hf_name, 0, start, real_stop))
    pad = stop - max(start, dims.vocab_size)
    if pad > 0:
        pieces.append(Piece(hf_name, 0, dims.vocab_size - 1, dims.vocab_size, repeat=pad, padding=True))
    return tuple(pieces)


def _chunk(total: int, tp: int, rank: int) -> tuple[int, int]:
    size = total // tp
    return rank * size, (rank + 1) * size


def rank_tensors(dims: ModelDims, par: Parallel, tp_rank: int, pp_rank: int) -> list[McoreTensor]:
    """The model state dict of one (tp, pp) rank, in write order, as pieces of HF tensors."""
    tp = par.tp
    shapes = hf_shapes(dims)
    d = dims.head_dim
    heads_per_group = dims.num_attention_heads // dims.num_query_groups
    groups_per_rank = dims.num_query_groups // tp
    copy_ok = tp_rank == 0
    out: list[McoreTensor] = []

    def add(name: str, pieces: tuple[Piece, ...], authoritative: bool = True) -> None:
        out.append(McoreTensor(name, _shape(pieces, shapes), pieces, authoritative))

    def copied(name: str, hf_name: str) -> None:
        add(name, (Piece(hf_name, 0, 0, shapes[hf_name][0]),), authoritative=copy_ok)

    if par.is_first(pp_rank):
        add("embedding.word_embeddings.weight", _vocab_pieces(EMBED, dims, tp, tp_rank))
    for local, layer in enumerate(par.stage_layers(pp_rank)):
        hp, mp = f"model.layers.{layer}.", f"decoder.layers.{local}."
        copied(mp + "input_layernorm.weight", hp + "input_layernorm.weight")
        kinds = ("weight", "bias") if dims.qkv_bias else ("weight",)
        for kind in kinds:
            pieces = []
            for g in range(tp_rank * groups_per_rank, (tp_rank + 1) * groups_per_rank):
                q0 = g * heads_per_group * d
                pieces.append(Piece(hp + f"self_attn.q_proj.{kind}", 0, q0, q0 + heads_per_group * d))
                pieces.append(Piece(hp + f"self_attn.k_proj.{kind}", 0, g * d, (g + 1) * d))
                pieces.append(Piece(hp + f"self_attn.v_proj.{kind}", 0, g * d, (g + 1) * d))
            add(mp + f"self_attention.linear_qkv.{kind}", tuple(pieces))
        c0, c1 = _chunk(dims.num_attention_heads * d, tp, tp_rank)
        add(mp + "self_attention.linear_proj.weight", (Piece(hp + "self_attn.o_proj.weight", 1, c0, c1),))
        copied(mp + "pre_mlp_layernorm.weight", hp + "post_attention_layernorm.weight")
        f0, f1 = _chunk(dims.ffn_hidden_size, tp, tp_rank)
        add(
            mp + "mlp.linear_fc1.weight",
            (Piece(hp + "mlp.gate_proj.weight", 0, f0, f1), Piece(hp + "mlp.up_proj.weight", 0, f0, f1)),
        )
        add(mp + "mlp.linear_fc2.weight", (Piece(hp + "mlp.down_proj.weight", 1, f0, f1),))
    if par.is_last(pp_rank):
        copied("decoder.final_layernorm.weight", FINAL_NORM)
        if dims.untie_embeddings:
            add("output_layer.weight", _vocab_pieces(LM_HEAD, dims, tp, tp_rank))
        elif par.pp > 1:
            # Tied embeddings: with PP > 1 Megatron still gives the last stage its own copy of
            # the embedding as output_layer.weight (kept in sync by an all-reduce), and loads it
            # from the checkpoint, so it must hold the embedding's values. With PP = 1 there is
            # no such parameter.
            add("output_layer.weight", _vocab_pieces(EMBED, dims, tp, tp_rank), authoritative=False)
    return out


class PieceReader(Protocol):
    def read(self, piece: Piece) -> torch.Tensor:
        """The HF tensor's slice named by the piece (not yet repeated), any dtype."""

    def release(self) -> None:
        """The tensors read so far are no longer needed by the reader's caller."""


def assemble_parts(spec: McoreTensor, source: PieceReader, dtype: torch.dtype) -> list[torch.Tensor]:
    """One Megatron tensor as contiguous parts whose bytes, concatenated, are the tensor's.

    Row slices of HF tensors are already contiguous, so most parts are views of what the
    source read and cost no copy; only column slices, padding and dtype changes are copied.
    """
    parts = []
    for piece in spec.pieces:
        t = source.read(piece)
        if piece.repeat > 1:
            t = t.expand(piece.repeat, *t.shape[1:])
        parts.append(t.to(dtype).contiguous())
    return parts


def assemble(spec: McoreTensor, source: PieceReader, dtype: torch.dtype) -> torch.Tensor:
    """Build one Megatron tensor from its pieces, contiguous and in `dtype`."""
    parts = assemble_parts(spec, source, dtype)
    if len(parts) == 1:
        return parts[0].view(spec.shape)
    return torch.cat(parts, dim=0).view(spec.shape)


def split_back(spec: McoreTensor, tensor: torch.Tensor) -> list[tuple[Piece, torch.Tensor]]:
    """The inverse of assemble_parts: each non-padding piece with its rows of the Megatron tensor."""
    if tuple(tensor.shape) != spec.shape:
        raise ValueError(f"{spec.name}: checkpoint shape {tuple(tensor.shape)}, model expects {spec.shape}")
    out = []
    row = 0
    for piece in spec.pieces:
        n = tensor.shape[0] if piece.dim == 1 else (piece.stop - piece.start) * piece.repeat
        if not piece.padding:
            out.append((piece, tensor[row : row + n]))
        row += n
    return out


def join_pieces(shape: tuple[int, ...], found: list[tuple[Piece, torch.Tensor]], dtype: torch.dtype) -> list[torch.Tensor]:
    """One HF tensor from its pieces, as contiguous parts to write one after another.

    When the pieces are row ranges that tile the tensor in order (everything split along
    dim 0), the parts are the pieces themselves and nothing is copied; otherwise the pieces
    are copied into one new tensor.
    """
    rows = sorted(found, key=lambda pt: pt[0].start)
    tiled = all(p.dim == 0 and p.repeat == 1 for p, _ in rows) and rows[0][0].start == 0 and rows[-1][0].stop == shape[0]
    tiled = tiled and all(a[0].stop == b[0].start for a, b in zip(rows, rows[1:]))
    if tiled and all(t.dtype == dtype and t.is_contiguous() for _, t in rows):
        return [t for _, t in rows]
    out = torch.empty(shape, dtype=dtype)
    covered = 0
    for piece, t in found:
        out.narrow(piece.dim, piece.start, piece.stop - piece.start).copy_(t)
        covered += t.numel()
    if covered != torch.Size(shape).numel():
        raise ValueError(f"{found[0][0].hf_name}: checkpoint pieces cover {covered} of {torch.Size(shape).numel()} values")
    return [out]


@dataclass(frozen=True)
class MergeUnit:
    """A group of HF tensors rebuilt together (the embedding, one layer, or the final norm and
    head), with the Megatron tensors that hold their parts. Merging unit by unit keeps only
    one layer's tensors in memory."""

    hf_names: tuple[str, ...]
    sources: tuple[tuple[int, int, McoreTensor], ...]  # (tp_rank, pp_rank, spec)


def merge_units(dims: ModelDims, par: Parallel) -> list[MergeUnit]:
    """The merge plan in HF write order; pipeline stages are visited in order."""
    shapes = hf_shapes(dims)

    def unit_of(hf_name: str) -> str:
        if hf_name.startswith("model.layers."):
            return "layer." + hf_name.split(".")[2]
        return "embed" if hf_name == EMBED else "final"

    sources: dict[str, list[tuple[int, int, McoreTensor]]] = {}
    for pp_rank in range(par.pp):
        for tp_rank in range(par.tp):
            for spec in rank_tensors(dims, par, tp_rank, pp_rank):
                if spec.authoritative:
                    sources.setdefault(unit_of(spec.pieces[0].hf_name), []).append((tp_rank, pp_rank, spec))
    names: dict[str, list[str]] = {}
    for name in shapes:
        names.setdefault(unit_of(name), []).append(name)
    return [MergeUnit(tuple(names[u]), tuple(sources[u])) for u in names]
