"""Integrated gradients in the explanations' own process give the attributions computed in the serving process."""

from __future__ import annotations

import os

import pytest

from app import explaining
from app.bounded_work import BoundedWork
from governance.explain import token_attributions
from retrieval.encoder import Encoder

DOCS = [("towel-1", "Cotton bath towel, soft and absorbent"), ("mug-1", "Stoneware coffee mug, 350 ml")]


def _pid_and_loaded() -> tuple[int, list[str]]:
    return os.getpid(), list(explaining._loaded)


async def test_attributions_in_a_process_match_the_serving_process_and_load_the_model_once(encoder: Encoder) -> None:
    model, tokenizer = encoder.torch_parts()
    here = token_attributions(model, tokenizer, "soft cotton towel", DOCS, n_steps=8)
    info = encoder.info
    queue = BoundedWork("explanations", workers=1, max_pending=2, processes=1)
    try:
        there = await queue.in_process(
            explaining.attribute_with_encoder, info.path, info.name, info.version, 1, "soft cotton towel", DOCS, 8
        )
        pid, loaded = await queue.in_process(_pid_and_loaded)
        again = await queue.in_process(
            explaining.attribute_with_encoder, info.path, info.name, info.version, 1, "stoneware mug", DOCS, 8
        )
    finally:
        queue.close()
    assert pid != os.getpid()
    assert loaded == [info.version]  # the copy stays loaded for the next record
    assert explaining._loaded == {}  # nothing was loaded in this process
    assert [r["id"] for r in there] == [r["id"] for r in here]
    for mine, theirs in zip(here, there, strict=True):
        assert [t["token"] for t in theirs["tokens"]] == [t["token"] for t in mine["tokens"]]
        for a, b in zip(mine["tokens"], theirs["tokens"], strict=True):
            assert b["attribution"] == pytest.approx(a["attribution"], abs=1e-4)
        assert theirs["similarity"] == pytest.approx(mine["similarity"], abs=1e-5)
    assert [t["token"] for t in again[0]["tokens"]] != [t["token"] for t in there[0]["tokens"]]
