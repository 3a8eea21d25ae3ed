"""The ML core of Candor: domain packs, encoder, dynamic batching, FAISS index and recommenders.

Nothing in this package knows about HTTP; the service in ``app`` drives it.
"""
