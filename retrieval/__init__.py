"""The ML core of Candor; nothing here knows about HTTP, and nothing imports another Candor package.

- items: :mod:`~retrieval.pack` (domain packs), :mod:`~retrieval.catalog`, :mod:`~retrieval.index` (FAISS),
  :mod:`~retrieval.item_store` (catalog, index and snapshots together);
- models: :mod:`~retrieval.encoder` (with :mod:`~retrieval.unpadded`, the padding-free BERT pass) and
  :mod:`~retrieval.batcher` (dynamic micro-batching);
- ranking: :mod:`~retrieval.ranking` (search, more like this, history) over :mod:`~retrieval.recommend`
  (scores, diversity, explanations);
- answers: :mod:`~retrieval.knowledge` and :mod:`~retrieval.passages` (what an answer may cite) and the
  :mod:`retrieval.answers` subpackage (answer service, local and remote generators, grounding checks);
- :mod:`~retrieval.engine`: the facade the service drives; :mod:`~retrieval.settings`: every knob's schema and
  default.
"""
