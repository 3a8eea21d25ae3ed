"""Token attributions for audit records: which query tokens made the top results match.

Captum's LayerIntegratedGradients on the encoder's word-embedding layer attributes the cosine similarity between
the query's sentence embedding and each result's embedding to the query tokens, against a baseline of padding
tokens between ``[CLS]`` and ``[SEP]``. Attributions sum (up to the reported convergence delta) to the similarity
minus the baseline's similarity.

The encoder module comes from the retrieval side; this module works on a private CPU float32 copy, so its hooks
never touch the module that serves requests.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

import torch

_copies: dict[int, torch.nn.Module] = {}
_lock = threading.Lock()


def token_attributions(
    model: torch.nn.Module,
    tokenizer: Any,
    query: str,
    docs: Sequence[tuple[str, str]],
    *,
    n_steps: int = 32,
) -> list[dict[str, Any]]:
    """Attribute a query's similarity with each document to the query's tokens.

    Args:
        model: A sentence-transformers module (transformer, pooling, normalisation).
        tokenizer: Its Hugging Face tokenizer.
        query: The query text.
        docs: ``(id, text)`` of the results to explain.
        n_steps: Integration steps.

    Returns:
        Per document: ``id``, ``similarity``, ``tokens`` (``token``, ``attribution``; special tokens left out)
        and ``convergence_delta``.
    """
    from captum.attr import LayerIntegratedGradients

    with _lock:  # one attribution at a time: the copy's hooks are per call
        net: Any = _explainer_copy(model)
        transformer = net[0].auto_model if hasattr(net[0], "auto_model") else net[0].model
        layer = transformer.get_input_embeddings()
        enc = tokenizer(query, return_tensors="pt", truncation=True)
        ids: torch.Tensor = enc["input_ids"]
        mask: torch.Tensor = enc["attention_mask"]
        special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
        baseline = torch.where(
            torch.isin(ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])),
            ids,
            torch.full_like(ids, tokenizer.pad_token_id or 0),
        )
        with torch.no_grad():
            doc_vecs = net.encode([text for _, text in docs], convert_to_tensor=True, normalize_embeddings=True)
            doc_vecs = doc_vecs.float().cpu()

        def forward(input_ids: torch.Tensor, attention: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            features = {
                "input_ids": input_ids,
                "attention_mask": attention,
                "token_type_ids": torch.zeros_like(input_ids),
            }
            emb = torch.nn.functional.normalize(net(features)["sentence_embedding"], dim=-1)
            return (emb * target).sum(-1)

        lig = LayerIntegratedGradients(forward, layer)
        tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
        out = []
        for (doc_id, _), vec in zip(docs, doc_vecs, strict=True):
            target = vec.unsqueeze(0)
            attrs, delta = lig.attribute(
                inputs=ids,
                baselines=baseline,
                additional_forward_args=(mask, target),
                n_steps=n_steps,
                return_convergence_delta=True,
            )
            per_token = attrs.sum(dim=-1).squeeze(0).detach()
            with torch.no_grad():
                similarity = float(forward(ids, mask, target)[0])
            out.append(
                {
                    "id": doc_id,
                    "similarity": round(similarity, 6),
                    "tokens": [
                        {"token": tok, "attribution": round(float(a), 6)}
                        for tok, tid, a in zip(tokens, ids[0].tolist(), per_token, strict=True)
                        if tid not in special
                    ],
                    "convergence_delta": round(float(delta.abs().max()), 6),
                }
            )
        return out


def _explainer_copy(model: torch.nn.Module) -> torch.nn.Module:
    found = _copies.get(id(model))
    if found is None:
        found = copy.deepcopy(model).float().to("cpu").eval()
        for param in found.parameters():
            param.requires_grad_(False)
        _copies[id(model)] = found
    return found
