"""Padding-free ("packed") execution of BERT-family encoders.

In a padded batch every text is stretched to the longest one, and the linear layers (query/key/value, attention
output, feed-forward), which do almost all the work for short texts, spend as much on a padding slot as on a
real token. Here the batch's tokens are concatenated into one ``(tokens, hidden)`` matrix for those layers; only
attention, which mixes tokens within a text, sees a padded ``(batch, longest)`` view, built by one scatter and
read back by one gather per layer. The arithmetic per token is the padded model's, so outputs match it to float
rounding (the encoder checks that on probe batches before using this path).

Only Hugging Face ``BertModel`` bodies with absolute positions are packed (all-MiniLM-L6-v2 is one);
:func:`unpackable_reason` says why another body is not, and the encoder then keeps the padded path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.nn import functional

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": functional.gelu,
    "gelu_new": lambda x: functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: functional.gelu(x, approximate="tanh"),
    "relu": functional.relu,
}


def unpackable_reason(body: torch.nn.Module) -> str | None:
    """Why ``body`` cannot run packed, or ``None`` when it can.

    Args:
        body: The transformer inside the sentence-transformers model (its ``auto_model``).
    """
    config: Any = getattr(body, "config", None)
    if type(body).__name__ != "BertModel" or config is None or getattr(config, "model_type", "") != "bert":
        return f"{type(body).__name__} is not a BertModel"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position embeddings are {config.position_embedding_type!r}, not absolute"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder or cross-attention configuration"
    if not isinstance(config.hidden_act, str) or config.hidden_act not in _ACTIVATIONS:
        return f"activation {config.hidden_act!r} is not supported"
    if config.hidden_size % config.num_attention_heads:
        return "hidden size is not a multiple of the head count"
    return None


class _Layer(torch.nn.Module):
    """One encoder layer's weights, with query, key and value fused into one matrix (one GEMM instead of 3)."""

    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    up_w: torch.Tensor
    up_b: torch.Tensor
    down_w: torch.Tensor
    down_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor

    def __init__(self, layer: Any) -> None:
        super().__init__()
        attention = layer.attention.self
        weights = {
            "qkv_w": torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]),
            "qkv_b": torch.cat([attention.query.bias, attention.key.bias, attention.value.bias]),
            "out_w": layer.attention.output.dense.weight,
            "out_b": layer.attention.output.dense.bias,
            "ln1_w": layer.attention.output.LayerNorm.weight,
            "ln1_b": layer.attention.output.LayerNorm.bias,
            "up_w": layer.intermediate.dense.weight,
            "up_b": layer.intermediate.dense.bias,
            "down_w": layer.output.dense.weight,
            "down_b": layer.output.dense.bias,
            "ln2_w": layer.output.LayerNorm.weight,
            "ln2_b": layer.output.LayerNorm.bias,
        }
        for name, tensor in weights.items():
            self.register_buffer(name, tensor.detach())


class PackedBert(torch.nn.Module):
    """A ``BertModel`` forward pass over packed tokens; shares the model's weights (the fused QKV is a copy).

    ``forward(ids, positions, scatter, mask[, types])`` takes the inputs :func:`pack` builds and returns the last
    hidden state of every real token, ``(tokens, hidden)``, texts one after another. Without ``types`` every
    token has token type 0 (one sentence per text, as the encoder reads); with them (a pair model such as the span
    reader: question 0, passage 1), each token's type, packed like ``ids``.
    """

    word: torch.Tensor
    position: torch.Tensor
    token_type: torch.Tensor
    token_types: torch.Tensor
    ln_w: torch.Tensor
    ln_b: torch.Tensor

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        reason = unpackable_reason(body)
        if reason is not None:
            raise ValueError(f"cannot pack this model: {reason}")
        model: Any = body
        config = model.config
        embeddings = model.embeddings
        self.heads = int(config.num_attention_heads)
        self.eps = float(config.layer_norm_eps)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.register_buffer("word", embeddings.word_embeddings.weight.detach())
        self.register_buffer("position", embeddings.position_embeddings.weight.detach())
        # The encoder sends token type 0 for every token, so its embedding is one constant row; pairs index the table.
        self.register_buffer("token_type", embeddings.token_type_embeddings.weight[0].detach())
        self.register_buffer("token_types", embeddings.token_type_embeddings.weight.detach())
        self.register_buffer("ln_w", embeddings.LayerNorm.weight.detach())
        self.register_buffer("ln_b", embeddings.LayerNorm.bias.detach())
        self.layers = torch.nn.ModuleList(_Layer(layer) for layer in model.encoder.layer)

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        scatter: torch.Tensor,
        mask: torch.Tensor,
        types: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states of the packed tokens (see the class docstring)."""
        batch, longest = mask.shape[0], mask.shape[3]
        width = self.word.shape[1]
        head_dim = width // self.heads
        token_type = self.token_type if types is None else self.token_types[types]
        hidden = self.word[ids] + self.position[positions] + token_type
        hidden = functional.layer_norm(hidden, (width,), self.ln_w, self.ln_b, self.eps)
        for module in self.layers:
            layer = cast(_Layer, module)
            qkv = functional.linear(hidden, layer.qkv_w, layer.qkv_b)
            # Padded view for attention only: token rows scattered into a zeroed (batch * longest) block.
            padded = qkv.new_zeros(batch * longest, 3 * width).index_copy_(0, scatter, qkv)
            q, k, v = padded.view(batch, longest, 3, self.heads, head_dim).transpose(1, 3).unbind(2)
            context = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            context = context.transpose(1, 2).reshape(batch * longest, width).index_select(0, scatter)
            attended = functional.linear(context, layer.out_w, layer.out_b) + hidden
            hidden = functional.layer_norm(attended, (width,), layer.ln1_w, layer.ln1_b, self.eps)
            inner = self.act(functional.linear(hidden, layer.up_w, layer.up_b))
            out = functional.linear(inner, layer.down_w, layer.down_b) + hidden
            hidden = functional.layer_norm(out, (width,), layer.ln2_w, layer.ln2_b, self.eps)
        return hidden


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """Inputs of :class:`PackedBert` for one batch, and where each text's rows start in its output."""

    ids: torch.Tensor
    positions: torch.Tensor
    scatter: torch.Tensor
    mask: torch.Tensor
    lengths: np.ndarray
    starts: np.ndarray

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The forward pass's arguments, in order."""
        return self.ids, self.positions, self.scatter, self.mask


def pack(batch: Sequence[Sequence[int]]) -> PackedBatch:
    """Pack token id lists (each non-empty) for :class:`PackedBert`.

    Built in numpy: a torch call per text would drop and retake the GIL for each (see the encoder's notes).
    """
    lengths = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
    total, longest = int(lengths.sum()), int(lengths.max())
    starts = np.zeros(len(batch), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    positions = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    scatter = np.repeat(np.arange(len(batch), dtype=np.int64) * longest, lengths) + positions
    ids = np.fromiter((t for ids in batch for t in ids), dtype=np.int64, count=total)
    keep = np.arange(longest)[None, :] < lengths[:, None]
    mask = np.where(keep, 0.0, -np.inf).astype(np.float32)[:, None, None, :]
    return PackedBatch(
        ids=torch.from_numpy(ids),
        positions=torch.from_numpy(positions),
        scatter=torch.from_numpy(scatter),
        mask=torch.from_numpy(mask),
        lengths=lengths,
        starts=starts,
    )


def pool_packed(hidden: np.ndarray, batch: PackedBatch, mode: str) -> np.ndarray:
    """Pool packed token rows into one unit vector per text.

    Args:
        hidden: ``(tokens, hidden)`` output of :class:`PackedBert`.
        batch: The packed batch it came from.
        mode: ``mean``, ``cls`` or ``max``, as in sentence-transformers' Pooling.
    """
    if mode == "cls":
        pooled = hidden[batch.starts]
    elif mode == "max":
        pooled = np.maximum.reduceat(hidden, batch.starts, axis=0)
    elif mode == "mean":
        pooled = np.add.reduceat(hidden, batch.starts, axis=0) / batch.lengths[:, None].astype(np.float32)
    else:
        raise ValueError(f"unknown pooling mode {mode!r}")
    return unit_rows(pooled)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as float32."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = (vectors / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
    return unit
