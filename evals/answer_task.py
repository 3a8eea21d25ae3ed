"""Answer evaluation: questions posed in the gold and the open setting, with unanswerable probes.

Answers, citations, abstentions and who produced each answer are scored.

- **Questions**: SQuAD (a seeded sample of ``max_questions``; each names its own paragraph) or a domain pack's
  ``eval/qa.jsonl`` (questions marked ``"answerable": false`` should be declined; answerable ones may name
  ``supporting_ids``).
- **Settings** (:mod:`evals.answer_cases`): ``open`` gives each question the ``passages`` passages the encoder
  ranks highest among all of the dataset's passages (the service's situation, the headline; a pack is read as the
  service reads it when the run has the service's ``[knowledge]`` settings, ``RunOptions.pack_retrieval``);
  ``gold`` gives it the passages that hold its answer (reading comprehension, as SQuAD's official evaluation, so
  its citation precision is 1 by construction and not a finding).
- **Unanswerable probes**: ``unanswerable`` answerable questions, each made into one probe per kind (``nearest``,
  ``removed``, ``random``); the right response is to abstain.

Metrics, per setting: ``em`` and ``f1`` (answerable questions; an abstention scores 0), ``false_abstention``,
``citation_precision`` (answered questions that cite something), ``faithfulness`` (every answer given),
``abstention_recall`` (unanswerable questions declined; also per probe kind, ``group = probe:<kind>``, and
``probe:dataset`` for the questions a pack marks unanswerable),
``abstention_precision`` (declined questions that were unanswerable), ``share`` of answerable questions by who
answered (``group = outcome:own|fallback|abstained``) with ``em`` and ``f1`` of each, and latency per question.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from evals.answer_cases import Case, CaseBuilder, PackRetrieval
from evals.answer_metrics import citation_precision, exact_match, f1, faithfulness, holds_answer
from evals.answers import (
    OUTCOMES,
    AnswerBackendContext,
    AnswerSystem,
    ConcurrentAnswerSystem,
    SystemAnswer,
    answer_outcome,
)
from evals.context import RunContext, summarise
from evals.datasets import (
    DatasetRecord,
    detect_format,
    load_domain_pack,
    pack_files,
    resolve_dataset,
)
from evals.errors import SuiteError
from evals.qa_data import Passage, QAExample, load_pack_qa, load_squad, pack_passages
from evals.results import MetricRecord, TaskOutput
from evals.suite import AnswerTask
from retrieval.chunking import chunk_text
from retrieval.pack import DomainPack
from retrieval.passages import chunk_token_count, item_passage_text
from retrieval.reader_training import article_fold


@dataclass
class _Source:
    """Questions, the passages they are asked over (in embedding order) and what was read."""

    examples: list[QAExample]
    passages: list[Passage]
    groups: dict[str, str]
    record: DatasetRecord
    split: str
    # Passage id to the text the encoder embeds (pack items as product search embeds them, so the cache serves both).
    embed_text: dict[str, str] = field(default_factory=dict)
    # The passages' ids in blocks embedded (and cached) together, in pool order: (label, ids).
    blocks: list[tuple[str, list[str]]] = field(default_factory=list)
    # A pack's questions are read as the service reads the pack (see _served).
    pack: DomainPack | None = None
    # As served: ids of the documents (places are kept for them), and the whole passages the pool holds chunks of.
    documents: frozenset[str] = frozenset()
    whole: dict[str, Passage] | None = None
    min_documents: int = 0


def _served(source: _Source, pack: DomainPack, retrieval: PackRetrieval, count: Callable[[str], int]) -> _Source:
    """A pack's pool as the service reads it: documents in chunks, items cut to what is read (or left out)."""
    items = pack.items if retrieval.answer_items else ()
    rows = [Passage(item.id, item_passage_text(item, retrieval.item_passage_chars), item.title) for item in items]
    texts = {item.id: item.embedding_text() for item in items}  # what the service's item index holds
    chunking = retrieval.chunking
    chunks: list[str] = []
    documents = [d for d in pack.documents if d.id not in texts]
    for doc in documents:
        for n, piece in enumerate(chunk_text(doc.text, count, chunking.chunk_tokens, chunking.overlap_tokens)):
            rows.append(Passage(doc.id, piece, doc.title))
            chunks.append(f"{doc.id}#{n}")
            texts[chunks[-1]] = f"{doc.title}. {piece}"  # as the knowledge base embeds a chunk
    whole = {p.id: p for p in source.passages} | {p.id: p for p in rows[: len(items)]}
    blocks = [("items", [item.id for item in items]), ("document chunks", chunks)]
    return replace(
        source,
        passages=rows,
        embed_text=texts,
        blocks=blocks,
        documents=frozenset(d.id for d in documents),
        whole=whole,
        min_documents=retrieval.min_documents,
    )


def _share(count: int, total: int) -> str:
    return f"{100.0 * count / total:.0f}%" if total else "0%"


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

    def _skip(self, reason: str, datasets: list[dict[str, Any]] | None = None) -> TaskOutput:
        self.ctx.note(f"{self.task}: skipped: {reason}")
        return TaskOutput(skipped=reason, datasets=datasets or [], details={"primary_metric": self.primary_metric})

    def _in_fold(self, group: str) -> bool:
        return self.spec.articles == "all" or article_fold(group, salt=self.spec.split_salt) == self.spec.articles

    def _squad(self, path: Path) -> _Source:
        data = load_squad(path, self.spec.file)
        examples = [e for e in data.examples if self._in_fold(data.passage_group.get(e.context_id or "", ""))]
        if self.spec.max_questions and self.spec.max_questions < len(examples):
            picked = self.ctx.rng(self.task, "questions").choice(len(examples), self.spec.max_questions, replace=False)
            examples = [examples[i] for i in sorted(picked)]
        passages = list(data.passages.values())
        texts = {p.id: f"{p.title.replace('_', ' ')}. {p.text}" for p in passages}
        record = DatasetRecord.of(self.spec.dataset, path, data.files)
        split = data.files[0].stem if data.files else "dev"
        blocks = [("passages", [p.id for p in passages])]
        return _Source(examples, passages, dict(data.passage_group), record, split, texts, blocks)

    def _pack(self, path: Path) -> _Source | str:
        qa_path = path / "eval" / "qa.jsonl"
        if not qa_path.is_file():
            return f"{qa_path} is not there yet, so there are no pack questions to ask"
        pack = load_domain_pack(path)
        examples = [e for e in load_pack_qa(qa_path, pack) if self._in_fold(next(iter(e.supporting_ids), e.id))]
        pool = pack_passages(pack)
        # Items are embedded exactly as the product search task embeds them, so the cache serves both.
        texts = {item.id: item.embedding_text() for item in pack.items}
        docs = [d for d in pack.documents if d.id not in texts]
        texts.update({d.id: f"{d.title}. {d.text}" for d in docs})
        blocks = [("items", [item.id for item in pack.items]), ("documents", [d.id for d in docs])]
        passages = [pool[pid] for _, ids in blocks for pid in ids]
        files = [*pack_files(path, "items.jsonl", "documents.jsonl"), qa_path]
        record = DatasetRecord.of(self.spec.dataset, path, files)
        return _Source(examples, passages, {}, record, "eval", texts, blocks, pack)

    def run(self) -> TaskOutput:
        """Pose every question in each setting, then score answers, citations, abstentions, attribution, latency.

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
        loaded = self._squad(path) if fmt == "squad" else self._pack(path)
        if isinstance(loaded, str):
            return self._skip(f"{no_backend}; and {loaded}" if factory is None else loaded)
        if factory is None:
            reason = f"{no_backend}; {len(loaded.examples)} questions were read and checked, none asked"
            return self._skip(reason, [loaded.record.to_json()])
        builder = self._builder(loaded)
        cases, details = self._cases(loaded, builder)
        served = ctx.pack_retrieval if loaded.pack is not None else None
        # What the open setting read: the pack as the service reads it, or whole passages by the encoder's rank.
        details["open_retrieval"] = {"as_served": asdict(served)} if served is not None else "whole passages"
        system: AnswerSystem = factory(
            AnswerBackendContext(dict(ctx.loaded.suite.system.answer.options), ctx.encoder, ctx.seed)
        )
        answers: dict[str, tuple[list[SystemAnswer], list[float]]] = {}
        for setting, posed in cases.items():
            answers[setting] = self._ask(system, posed, setting)
        return self._score(system, loaded, cases, answers, details)

    def _builder(self, source: _Source) -> CaseBuilder:
        if source.pack is not None and self.ctx.pack_retrieval is not None:
            count = chunk_token_count(self.ctx.encoder())
            source = _served(source, source.pack, self.ctx.pack_retrieval, count)
        parts = [
            self.ctx.embed_corpus(f"{self.task} {label}", ids, [source.embed_text[i] for i in ids])[0]
            for label, ids in source.blocks
            if ids
        ]
        vectors = np.concatenate(parts).astype(np.float32, copy=False)
        questions, _ = self.ctx.embed_texts(f"{self.task} questions", [e.question for e in source.examples])
        by_question = {e.id: questions[i] for i, e in enumerate(source.examples)}
        return CaseBuilder(
            source.passages,
            source.groups,
            vectors,
            by_question,
            self.spec.passages,
            documents=source.documents,
            min_documents=source.min_documents,
            whole=source.whole,
        )

    def _cases(self, source: _Source, builder: CaseBuilder) -> tuple[dict[str, list[Case]], dict[str, Any]]:
        spec = self.spec
        answerable = [e for e in source.examples if e.answerable]
        drawn = self.ctx.rng(self.task, "probes").choice(
            len(answerable), min(spec.unanswerable, len(answerable)), replace=False
        )
        probe_sources = [answerable[i] for i in sorted(drawn)]
        cases: dict[str, list[Case]] = {}
        details: dict[str, Any] = {"settings": {}}
        for setting in spec.settings:
            posed: list[Case] = []
            no_gold = 0
            for example in source.examples:
                if setting == "gold" and example.answerable:
                    gold = builder.gold(example)
                    if not gold:
                        no_gold += 1  # the dataset names no passage: the question has no gold setting
                        continue
                    posed.append(Case(example, gold))
                else:
                    posed.append(Case(example, builder.retrieved(example)))
            probes, missing = builder.probes(probe_sources, spec.probes, setting, self.ctx.seed)
            cases[setting] = posed + probes
            details["settings"][setting] = {
                "questions": len(posed),
                "answerable": sum(c.example.answerable for c in posed),
                "without_gold_passage": no_gold,
                "probes": dict(Counter(c.kind for c in probes)),
                "probes_not_built": {k: v for k, v in missing.items() if v},
            }
        return cases, details

    def _ask(self, system: AnswerSystem, cases: Sequence[Case], setting: str) -> tuple[list[SystemAnswer], list[float]]:
        answers: list[SystemAnswer] = []
        latencies: list[float] = []
        together = self.spec.concurrency if isinstance(system, ConcurrentAnswerSystem) else 1
        with self.ctx.bar(len(cases), f"{self.task} questions ({setting})", "q") as bar:
            for at in range(0, len(cases), together):
                chunk = cases[at : at + together]
                if isinstance(system, ConcurrentAnswerSystem) and together > 1:
                    answered = system.answer_many([(c.example.question, c.passages) for c in chunk])
                else:
                    started = time.perf_counter()
                    one = system.answer(chunk[0].example.question, chunk[0].passages)
                    answered = [(one, (time.perf_counter() - started) * 1000.0)]
                answers.extend(a for a, _ in answered)
                latencies.extend(ms for _, ms in answered)
                bar.update(len(chunk))
        return answers, latencies

    def _score(
        self,
        system: AnswerSystem,
        source: _Source,
        cases: dict[str, list[Case]],
        answers: dict[str, tuple[list[SystemAnswer], list[float]]],
        details: dict[str, Any],
    ) -> TaskOutput:
        out = TaskOutput(
            system={"answer_backend": {"name": system.name, **dict(system.describe())}},
            datasets=[source.record.to_json()],
            details={
                "primary_metric": self.primary_metric,
                "headline_setting": self.spec.settings[0],
                "split": source.split,
                "sample": len(source.examples),
                **details,
                "attribution": [],
            },
        )
        for setting, posed in cases.items():
            given, latencies = answers[setting]
            self._score_setting(out, system.name, source.split, setting, posed, given, latencies)
        self._write_answers(out, cases, answers)
        return out

    def _score_setting(
        self,
        out: TaskOutput,
        system: str,
        split: str,
        setting: str,
        cases: Sequence[Case],
        answers: Sequence[SystemAnswer],
        latencies: Sequence[float],
    ) -> None:
        ctx = self.ctx
        common: dict[str, Any] = {
            "task": self.task,
            "dataset": self.spec.dataset,
            "split": split,
            "system": system,
            "setting": setting,
        }
        ids = [c.example.id for c in cases]
        answerable = [i for i, c in enumerate(cases) if c.example.answerable]
        unanswerable = [i for i, c in enumerate(cases) if not c.example.answerable]
        answered = [i for i, a in enumerate(answers) if not a.abstained]
        abstained = [i for i, a in enumerate(answers) if a.abstained]
        outcome = [answer_outcome(system, a) for a in answers]

        def add(
            units: Sequence[int], values: dict[str, list[float]], higher: dict[str, bool], stream: str, **extra: Any
        ) -> None:
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
                **extra,
            )
            out.metrics.extend(recs)
            out.per_unit.update(unit_values)

        def prediction(i: int) -> str:
            return "" if answers[i].abstained else answers[i].text

        def quality(units: Sequence[int]) -> dict[str, list[float]]:
            golds = [cases[i].example.answers for i in units]
            return {
                "em": [exact_match(prediction(i), g) for i, g in zip(units, golds, strict=True)],
                "f1": [f1(prediction(i), g) for i, g in zip(units, golds, strict=True)],
                "holds_answer": [holds_answer(prediction(i), g) for i, g in zip(units, golds, strict=True)],
            }

        add(
            answerable,
            {**quality(answerable), "false_abstention": [float(answers[i].abstained) for i in answerable]},
            {"em": True, "f1": True, "holds_answer": True, "false_abstention": False},
            "answerable",
        )
        cited: list[int] = []
        precision: list[float] = []
        for i in answerable:
            if answers[i].abstained:
                continue
            texts = {p.id: p.text for p in cases[i].passages}
            value = citation_precision(
                answers[i].cited_ids, texts, cases[i].example.answers, cases[i].example.supporting_ids
            )
            if value is not None:
                cited.append(i)
                precision.append(value)
        add(cited, {"citation_precision": precision}, {"citation_precision": True}, "cited")

        def support(i: int) -> float:
            texts = {p.id: p.text for p in cases[i].passages}
            return faithfulness(answers[i].text, [texts[c] for c in answers[i].cited_ids if c in texts])

        add(answered, {"faithfulness": [support(i) for i in answered]}, {"faithfulness": True}, "answered")
        declined = {"abstention_recall": True}
        add(
            unanswerable,
            {"abstention_recall": [float(answers[i].abstained) for i in unanswerable]},
            declined,
            "unanswerable",
        )
        for kind in dict.fromkeys(cases[i].kind for i in unanswerable):
            units = [i for i in unanswerable if cases[i].kind == kind]
            values = {"abstention_recall": [float(answers[i].abstained) for i in units]}
            label = "dataset" if kind == "question" else kind  # questions the dataset itself marks unanswerable
            add(units, values, declined, "unanswerable", group=f"probe:{label}")
        add(
            abstained,
            {"abstention_precision": [float(not cases[i].example.answerable) for i in abstained]},
            {"abstention_precision": True},
            "abstained",
        )
        for name in OUTCOMES:
            add(
                answerable,
                {"share": [float(outcome[i] == name) for i in answerable]},
                {"share": True},
                "answerable",
                group=f"outcome:{name}",
            )
            units = [i for i in answerable if outcome[i] == name]
            if name != "abstained":
                add(
                    units,
                    quality(units),
                    {"em": True, "f1": True, "holds_answer": True},
                    f"outcome-{name}",
                    group=f"outcome:{name}",
                )
        add(list(range(len(cases))), {"latency_ms": list(latencies)}, {"latency_ms": False}, "all")
        for q in (50, 95):
            out.metrics.append(
                MetricRecord(
                    f"latency_p{q}_ms",
                    float(np.percentile(latencies, q)) if latencies else 0.0,
                    False,
                    n=len(latencies),
                    timing=True,
                    **common,
                )
            )
        out.details["attribution"].append(self._attribution(system, setting, answerable, answers, outcome))

    def _attribution(
        self,
        system: str,
        setting: str,
        answerable: Sequence[int],
        answers: Sequence[SystemAnswer],
        outcome: Sequence[str],
    ) -> str:
        """Who answered the answerable questions of one setting, in words."""
        n = len(answerable)
        counts = Counter(outcome[i] for i in answerable)
        producers = Counter(answers[i].produced_by or "another backend" for i in answerable if outcome[i] == "fallback")
        reasons = Counter(answers[i].fallback or "unstated" for i in answerable if outcome[i] == "fallback")
        text = (
            f"{setting} setting: of {n} answerable questions, {system} answered {counts['own']} "
            f"({_share(counts['own'], n)}) itself"
        )
        if counts["fallback"]:
            by = ", ".join(f"{name} {count}" for name, count in producers.most_common())
            why = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
            text += (
                f", {counts['fallback']} ({_share(counts['fallback'], n)}) are another backend's answers "
                f"after a fallback ({by}; why: {why})"
            )
        text += f", and declined {counts['abstained']} ({_share(counts['abstained'], n)})."
        if counts["fallback"]:
            text += " Its own figures are the outcome:own rows; the task's overall figures include the fallback's."
        return text

    def _write_answers(
        self,
        out: TaskOutput,
        cases: dict[str, list[Case]],
        answers: dict[str, tuple[list[SystemAnswer], list[float]]],
    ) -> None:
        artifact = f"answers-{self.task_id}.jsonl"
        with (self.ctx.run_dir / artifact).open("w", encoding="utf-8") as handle:
            for setting, posed in cases.items():
                given, latencies = answers[setting]
                for case, answer, latency in zip(posed, given, latencies, strict=True):
                    row = {
                        "setting": setting,
                        "id": case.example.id,
                        "kind": case.kind,
                        "question": case.example.question,
                        "answerable": case.example.answerable,
                        "gold": list(case.example.answers),
                        "passages": [p.id for p in case.passages],
                        "answer": answer.text,
                        "cited": list(answer.cited_ids),
                        "abstained": answer.abstained,
                        "produced_by": answer.produced_by,
                        "fallback": answer.fallback,
                        "reason": answer.reason,
                        "latency_ms": round(latency, 3),
                    }
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.artifacts.append(artifact)
