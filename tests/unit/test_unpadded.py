"""Padding-free BERT execution against the padded Hugging Face model, on small random BERTs (no weights needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from retrieval.unpadded import PackedBert, pack, pool_packed, unpackable_reason

LENGTHS = [5, 1, 9, 9, 3]


def tiny_bert(**overrides: Any) -> Any:
    torch.manual_seed(0)
    values: dict[str, Any] = {
        "vocab_size": 50,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 16,
    }
    values.update(overrides)
    model: Any = BertModel(BertConfig(**values))
    return model.eval()


def token_batch(lengths: list[int], seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 50, size=n).tolist() for n in lengths]


def padded_hidden(model: Any, batch: list[list[int]]) -> list[np.ndarray]:
    """Each text's real-token rows of the model's own padded forward pass."""
    longest = max(len(ids) for ids in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for row, tokens in enumerate(batch):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    return [out[row, : len(tokens)].numpy() for row, tokens in enumerate(batch)]


def test_pack_lays_tokens_end_to_end_and_maps_them_into_the_padded_block() -> None:
    packed = pack([[7, 8, 9], [4], [5, 6]])
    assert packed.ids.tolist() == [7, 8, 9, 4, 5, 6]
    assert packed.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert packed.scatter.tolist() == [0, 1, 2, 3, 6, 7]  # row * longest (3) + position
    assert packed.starts.tolist() == [0, 3, 4]
    assert packed.mask.shape == (3, 1, 1, 3)
    keys = packed.mask[:, 0, 0, :]
    assert keys[0].tolist() == [0.0, 0.0, 0.0]
    assert keys[1, 0] == 0.0
    assert torch.isinf(keys[1, 1:]).all()
    assert keys[2, :2].tolist() == [0.0, 0.0]
    assert torch.isinf(keys[2, 2])


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_packed_forward_matches_the_padded_model(act: str) -> None:
    model = tiny_bert(hidden_act=act)
    batch = token_batch(LENGTHS)
    with torch.inference_mode():
        hidden = PackedBert(model).eval()(*pack(batch).tensors()).numpy()
    expected = np.concatenate(padded_hidden(model, batch))
    assert hidden.shape == expected.shape
    assert np.abs(hidden - expected).max() < 1e-5


def test_packed_forward_takes_each_tokens_type_for_pairs() -> None:
    model = tiny_bert()
    batch = token_batch(LENGTHS)
    types = [[int(i >= len(ids) // 2) for i in range(len(ids))] for ids in batch]  # a question half, a passage half
    longest = max(LENGTHS)
    ids, mask, type_ids = (torch.zeros(len(batch), longest, dtype=torch.long) for _ in range(3))
    for row, tokens in enumerate(batch):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        type_ids[row, : len(tokens)] = torch.tensor(types[row])
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=type_ids).last_hidden_state
        flat = torch.tensor([t for row in types for t in row])
        hidden = PackedBert(model).eval()(*pack(batch).tensors(), flat).numpy()
        untyped = PackedBert(model).eval()(*pack(batch).tensors()).numpy()
    expected = np.concatenate([out[row, : len(tokens)].numpy() for row, tokens in enumerate(batch)])
    assert np.abs(hidden - expected).max() < 1e-5
    assert np.abs(untyped - expected).max() > 1e-3  # the types matter: without them every token is type 0


def test_traced_packed_forward_handles_other_batch_shapes() -> None:
    model = tiny_bert()
    jit: Any = torch.jit  # trace() is untyped
    with torch.inference_mode():
        traced = jit.freeze(jit.trace(PackedBert(model).eval(), pack(token_batch([4, 2])).tensors()))
        for lengths in ([1], [3, 3, 3], LENGTHS, [16, 2, 7]):
            batch = token_batch(lengths, seed=len(lengths))
            hidden = traced(*pack(batch).tensors()).numpy()
            assert np.abs(hidden - np.concatenate(padded_hidden(model, batch))).max() < 1e-5


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_pooling_packed_rows_matches_pooling_each_text(mode: str) -> None:
    batch = token_batch(LENGTHS)
    packed = pack(batch)
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((sum(LENGTHS), 6)).astype(np.float32)
    rows = np.split(hidden, np.cumsum(LENGTHS)[:-1])
    pick = {"mean": lambda r: r.mean(axis=0), "cls": lambda r: r[0], "max": lambda r: r.max(axis=0)}
    expected = np.stack([pick[mode](r) for r in rows])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    pooled = pool_packed(hidden, packed, mode)
    assert pooled.dtype == np.float32
    assert np.abs(pooled - expected).max() < 1e-6


def test_models_that_cannot_be_packed_say_why() -> None:
    assert unpackable_reason(tiny_bert()) is None
    assert "relative_key" in (unpackable_reason(tiny_bert(position_embedding_type="relative_key")) or "")
    assert "activation" in (unpackable_reason(tiny_bert(hidden_act="silu")) or "")
    assert "not a BertModel" in (unpackable_reason(torch.nn.Linear(2, 2)) or "")
    with pytest.raises(ValueError, match="cannot pack"):
        PackedBert(tiny_bert(position_embedding_type="relative_key"))
