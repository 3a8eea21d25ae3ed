"""Offline evaluation: dataset adapters, metrics, suites, runner, reports, run comparison and regression gates.

Modules: ``datasets`` (BEIR, SQuAD, MovieLens, domain packs; never downloads), ``ir_metrics``, ``rec_metrics``,
``answer_metrics`` and ``stats`` (bootstrap intervals), ``suite`` (TOML suites and ``--set`` overrides), the task
evaluators ``retrieval_task``, ``recommend_task`` and ``answer_task`` (each with ``primary_metric`` and
``greater_is_better``), ``recommenders`` (baselines and Candor's embedding recommender), ``answers`` (the interface
answer backends implement and their registry), ``cache`` (corpus embeddings), ``runner``, ``results``, ``report``,
``compare``, ``gates`` and ``pack_judgments`` (rule-derived search judgments for a pack); bias audits in ``bias``
(per-group quality with Fairlearn, the run, the summary), ``exposure`` (provider exposure, Gini, popularity bias),
``bias_probes`` with ``counterfactual`` (demographic-term swaps) and ``bbq`` (answer bias), and ``bias_report``.
"""
