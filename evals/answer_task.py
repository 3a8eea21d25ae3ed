"""Answer evaluation: an answer backend gets questions with passages; answers, citations and abstentions are scored.

- **SQuAD**: each question gets its own paragraph (reading comprehension, as the official evaluation). A seeded
  sample of ``max_questions`` questions is used.
- **Domain packs** (``eval/qa.jsonl``): each question gets the ``passages`` pack documents and items the encoder
  ranks highest for it (what the service would retrieve); questions marked ``"answerable": false`` should be
  declined.
- **Unanswerable probes** (both): ``unanswerable`` answerable questions paired with passages from other articles
  that do not contain the answer; the right response is to abstain.

Metrics: ``em`` and ``f1`` (answerable questions; an abstention scores 0), ``false_abstention`` (answerable
questions declined), ``citation_precision`` (answered questions that cite something), ``faithfulness`` (every
answer given), ``abstention_accuracy`` (unanswerable questions declined), and latency per question.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evals.answer_metrics import citation_precision, exact_match, f1, faithfulness
from evals.answers import AnswerBackendContext, AnswerSystem, SystemAnswer
from evals.context import RunContext, summarise
from evals.datasets import (
    DatasetRecord,
    Passage,
    QAExample,
    detect_format,
    load_domain_pack,
    load_pack_qa,
    load_squad,
    pack_files,
    pack_passages,
    resolve_dataset,
    wrong_context_probes,
)
from evals.errors import SuiteError
from evals.results import MetricRecord, TaskOutput
from evals.suite import AnswerTask
from retrieval.index import VectorIndex
from retrieval.pack import DomainPack
from retrieval.settings import IndexSettings

Case = tuple[QAExample, tuple[Passage, ...]]


class AnswerEvaluator:
    """Evaluates the suite's answer backend on one dataset.

    Args:
        task_id: The task's name in the suite (``[answers.<task_id>]``).
        spec: The task's settings.
        ctx: The run.
    """

    primary_metric = "f1"
    greater_is_better = True

    def __init__(self, task_id: str, spec: AnswerTask, ctx: RunContext) -> None:
        self.task_id = task_id
        self.task = f"answers.{task_id}"
        self.spec = spec
        self.ctx = ctx
        self._split = "eval"

    def _skip(self, reason: str, datasets: list[dict[str, Any]] | None = None) -> TaskOutput:
        self.ctx.note(f"{self.task}: skipped: {reason}")
        return TaskOutput(skipped=reason, datasets=datasets or [], details={"primary_metric": self.primary_metric})

    def _squad_cases(self) -> tuple[list[Case], DatasetRecord]:
        path = resolve_dataset(self.spec.dataset, self.ctx.data_root)
        data = load_squad(path, self.spec.file)
        examples = data.examples
        if self.spec.max_questions and self.spec.max_questions < len(examples):
            picked = self.ctx.rng(self.task, "questions").choice(len(examples), self.spec.max_questions, replace=False)
            examples = [examples[i] for i in sorted(picked)]
        cases: list[Case] = [(e, (data.passages[e.context_id],)) for e in examples if e.context_id]
        probes = wrong_context_probes(
            examples, data.passages, data.passage_group, self.spec.unanswerable, self.ctx.seed
        )
        return cases + probes, DatasetRecord.of(self.spec.dataset, path, data.files)

    def _pack_examples(self) -> tuple[Path, DomainPack, list[QAExample]] | str:
        path = resolve_dataset(self.spec.dataset, self.ctx.data_root)
        qa_path = path / "eval" / "qa.jsonl"
        if not qa_path.is_file():
            return f"{qa_path} is not there yet, so there are no pack questions to ask"
        pack = load_domain_pack(path)
        return path, pack, load_pack_qa(qa_path, pack)

    def _pack_cases(self, path: Path, pack: DomainPack, examples: list[QAExample]) -> tuple[list[Case], DatasetRecord]:
        pool = pack_passages(pack)
        # Items are embedded exactly as the product search task embeds them, so the cache serves both.
        ids = [item.id for item in pack.items]
        vectors, _ = self.ctx.embed_corpus(f"{self.task} items", ids, [item.embedding_text() for item in pack.items])
        docs = [doc for doc in pack.documents if doc.id not in set(ids)]
        if docs:
            doc_vectors, _ = self.ctx.embed_corpus(
                f"{self.task} documents", [d.id for d in docs], [f"{d.title}. {d.text}" for d in docs]
            )
            ids += [d.id for d in docs]
            vectors = np.concatenate([vectors, doc_vectors])
        exact = IndexSettings(kind="flat").to_config()
        index = VectorIndex.build(vectors.shape[1], exact, np.arange(len(ids)), vectors)
        queries, _ = self.ctx.embed_texts(f"{self.task} questions", [e.question for e in examples])
        _, hits = index.search(queries, min(self.spec.passages, len(ids)))
        cases: list[Case] = [
            (e, tuple(pool[ids[int(h)]] for h in row if h >= 0)) for e, row in zip(examples, hits, strict=True)
        ]
        groups = {pid: pid for pid in pool}  # no articles in a pack: any passage but the supporting ones
        probes = wrong_context_probes(
            examples, pool, groups, self.spec.unanswerable, self.ctx.seed, contexts=self.spec.passages
        )
        files = [*pack_files(path, "items.jsonl", "documents.jsonl"), path / "eval" / "qa.jsonl"]
        return cases + probes, DatasetRecord.of(self.spec.dataset, path, files)

    def run(self) -> TaskOutput:
        """Ask every question, then score answers, citations, abstentions and latency.

        Without a registered backend the dataset is still read and checked, but nothing is embedded or asked.
        """
        ctx = self.ctx
        path = resolve_dataset(self.spec.dataset, ctx.data_root)
        fmt = self.spec.format or detect_format(path)
        if fmt not in ("squad", "pack"):
            raise SuiteError(f"{self.task}: dataset {self.spec.dataset!r} is {fmt}, not a question-answering dataset")
        backend_name = ctx.loaded.suite.system.answer.backend
        factory = ctx.answer_backends.get(backend_name)
        known = ", ".join(sorted(ctx.answer_backends)) or "none"
        no_backend = f"no answer backend is available: {backend_name!r} is not registered (registered: {known})"
        if fmt == "squad":
            cases, record = self._squad_cases()
            self._split = Path(record.files[0][0]).stem if record.files else "dev"
            if factory is None:
                reason = f"{no_backend}; {len(cases)} questions were read and checked, none asked"
                return self._skip(reason, [record.to_json()])
        else:
            loaded = self._pack_examples()
            if isinstance(loaded, str):
                return self._skip(f"{no_backend}; and {loaded}" if factory is None else loaded)
            if factory is None:
                return self._skip(f"{no_backend}; {len(loaded[2])} pack questions were read and checked, none asked")
            cases, record = self._pack_cases(*loaded)
        system: AnswerSystem = factory(
            AnswerBackendContext(dict(ctx.loaded.suite.system.answer.options), ctx.encoder, ctx.seed)
        )
        answers, latencies = self._ask(system, cases)
        return self._score(system, cases, answers, latencies, record)

    def _ask(self, system: AnswerSystem, cases: Sequence[Case]) -> tuple[list[SystemAnswer], list[float]]:
        answers: list[SystemAnswer] = []
        latencies: list[float] = []
        with self.ctx.bar(len(cases), f"{self.task} questions", "q") as bar:
            for example, passages in cases:
                started = time.perf_counter()
                answers.append(system.answer(example.question, passages))
                latencies.append((time.perf_counter() - started) * 1000.0)
                bar.update(1)
        return answers, latencies

    def _score(
        self,
        system: AnswerSystem,
        cases: Sequence[Case],
        answers: Sequence[SystemAnswer],
        latencies: Sequence[float],
        record: DatasetRecord,
    ) -> TaskOutput:
        ctx, spec = self.ctx, self.spec
        split = self._split
        common: dict[str, Any] = {"task": self.task, "dataset": spec.dataset, "split": split, "system": system.name}
        answerable = [i for i, (e, _) in enumerate(cases) if e.answerable]
        unanswerable = [i for i, (e, _) in enumerate(cases) if not e.answerable]
        answered = [i for i in range(len(cases)) if not answers[i].abstained]
        ids = [cases[i][0].id for i in range(len(cases))]

        def prediction(i: int) -> str:
            return "" if answers[i].abstained else answers[i].text

        metrics: list[MetricRecord] = []
        per_unit: dict[str, dict[str, float]] = {}

        def add(units: Sequence[int], values: dict[str, list[float]], higher: dict[str, bool], stream: str) -> None:
            if not units:
                return
            recs, unit_values = summarise(
                ctx,
                units=[ids[i] for i in units],
                values={k: np.asarray(v) for k, v in values.items()},
                higher_is_better=higher,
                stream=stream,
                timing=[k for k in values if k.startswith("latency")],
                **common,
            )
            metrics.extend(recs)
            per_unit.update(unit_values)

        golds = {i: cases[i][0].answers for i in range(len(cases))}
        add(
            answerable,
            {
                "em": [exact_match(prediction(i), golds[i]) for i in answerable],
                "f1": [f1(prediction(i), golds[i]) for i in answerable],
                "false_abstention": [float(answers[i].abstained) for i in answerable],
            },
            {"em": True, "f1": True, "false_abstention": False},
            "answerable",
        )
        cited: list[int] = []
        precision: list[float] = []
        for i in answerable:
            if answers[i].abstained:
                continue
            texts = {p.id: p.text for p in cases[i][1]}
            value = citation_precision(answers[i].cited_ids, texts, golds[i], cases[i][0].supporting_ids)
            if value is not None:
                cited.append(i)
                precision.append(value)
        add(cited, {"citation_precision": precision}, {"citation_precision": True}, "cited")

        def support(i: int) -> float:
            texts = {p.id: p.text for p in cases[i][1]}
            return faithfulness(answers[i].text, [texts[c] for c in answers[i].cited_ids if c in texts])

        add(answered, {"faithfulness": [support(i) for i in answered]}, {"faithfulness": True}, "answered")
        add(
            unanswerable,
            {"abstention_accuracy": [float(answers[i].abstained) for i in unanswerable]},
            {"abstention_accuracy": True},
            "unanswerable",
        )
        add(list(range(len(cases))), {"latency_ms": list(latencies)}, {"latency_ms": False}, "all")
        for q in (50, 95):
            metrics.append(
                MetricRecord(
                    f"latency_p{q}_ms",
                    float(np.percentile(latencies, q)) if latencies else 0.0,
                    False,
                    n=len(latencies),
                    timing=True,
                    **common,
                )
            )
        artifact = f"answers-{self.task_id}.jsonl"
        with (ctx.run_dir / artifact).open("w", encoding="utf-8") as handle:
            for i, (example, passages) in enumerate(cases):
                row = {
                    "id": example.id,
                    "question": example.question,
                    "answerable": example.answerable,
                    "gold": list(example.answers),
                    "passages": [p.id for p in passages],
                    "answer": answers[i].text,
                    "cited": list(answers[i].cited_ids),
                    "abstained": answers[i].abstained,
                    "latency_ms": round(latencies[i], 3),
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return TaskOutput(
            metrics=metrics,
            per_unit=per_unit,
            system={"answer_backend": {"name": system.name, **dict(system.describe())}},
            datasets=[record.to_json()],
            details={
                "primary_metric": self.primary_metric,
                "questions": len(cases),
                "answerable": len(answerable),
                "unanswerable_probes": len(unanswerable),
                "abstained": len(cases) - len(answered),
            },
            artifacts=[artifact],
        )
