"""Question-answering data: SQuAD v1.1 files and a domain pack's ``eval/qa.jsonl``, with the passages to cite.

Problems are reported as ``file:line: reason``, like every dataset adapter (:mod:`evals.datasets`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from evals.datasets import _id_field, _jsonl, _str_field
from evals.errors import DatasetFormatError, DatasetNotFoundError
from retrieval.pack import DomainPack


@dataclass(frozen=True, slots=True)
class Passage:
    """A passage an answer system may read and cite."""

    id: str
    text: str
    title: str = ""


@dataclass(frozen=True, slots=True)
class QAExample:
    """One question with its gold answers.

    Attributes:
        id: Question id.
        question: The question.
        answers: Gold answers (empty for unanswerable questions).
        supporting_ids: Passages that hold the answer, when the dataset names them.
        answerable: Whether the question can be answered from the dataset's passages.
        context_id: The passage the question was written about (SQuAD), if any.
        answer_starts: Character offset of each answer in that passage (SQuAD's ``answer_start``; ``-1`` where the
            file gives none or the answer is not there).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    supporting_ids: tuple[str, ...] = ()
    answerable: bool = True
    context_id: str | None = None
    answer_starts: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class QAData:
    """Questions and the passages they are asked over.

    Attributes:
        examples: The questions.
        passages: Every passage, by id.
        passage_group: Passage id to its article (SQuAD) so wrong contexts come from other articles.
        files: Files read.
    """

    examples: list[QAExample]
    passages: dict[str, Passage]
    passage_group: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _line_of(text: str, needle: str) -> int | None:
    pos = text.find(needle)
    return None if pos < 0 else text.count("\n", 0, pos) + 1


def _squad_file(path: Path, file: str) -> Path:
    if path.is_file():
        return path
    if file:
        chosen = path / file
        if not chosen.is_file():
            raise DatasetNotFoundError(f"{chosen}: missing")
        return chosen
    found = sorted(path.glob("*.json"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DatasetNotFoundError(f"{path}: expected one SQuAD .json file (found: {names}); set the task's file")
    return found[0]


def load_squad(path: Path, file: str = "") -> QAData:
    """Read a SQuAD v1.1 JSON file (``data[].paragraphs[].qas[]``).

    Args:
        path: The file, or its folder.
        file: File name inside the folder when it holds several.

    Raises:
        DatasetNotFoundError: No file.
        DatasetFormatError: Invalid JSON or structure (with the line of the offending question when known).
    """
    source = _squad_file(path, file)
    text = source.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(source, exc.lineno, f"invalid JSON ({exc.msg})") from exc
    articles = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(articles, list):
        raise DatasetFormatError(source, 1, "expected an object with a 'data' list (SQuAD v1.1)")
    examples: list[QAExample] = []
    passages: dict[str, Passage] = {}
    groups: dict[str, str] = {}
    seen: set[str] = set()
    for a_index, article in enumerate(articles):
        where = f"data[{a_index}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DatasetFormatError(source, None, f"{where}: expected an object with a 'paragraphs' list")
        title = str(article.get("title") or f"article-{a_index}")
        for p_index, paragraph in enumerate(article["paragraphs"]):
            p_where = f"{where}.paragraphs[{p_index}]"
            if not isinstance(paragraph, dict):
                raise DatasetFormatError(source, None, f"{p_where}: expected an object")
            context, qas = paragraph.get("context"), paragraph.get("qas")
            if not isinstance(context, str) or not context.strip() or not isinstance(qas, list):
                raise DatasetFormatError(source, None, f"{p_where}: needs a non-empty 'context' and a 'qas' list")
            pid = f"{title}#{p_index}"
            passages[pid] = Passage(id=pid, text=context, title=title)
            groups[pid] = title
            for q_index, qa in enumerate(qas):
                q_where = f"{p_where}.qas[{q_index}]"
                qid = qa.get("id") if isinstance(qa, dict) else None

                def fail(reason: str, qid: object = qid, q_where: str = q_where) -> DatasetFormatError:
                    # The line is looked up only on failure: searching the text for every question is quadratic.
                    line = _line_of(text, f'"{qid}"') if isinstance(qid, str) and qid else None
                    return DatasetFormatError(source, line, f"{q_where}: {reason}")

                if not isinstance(qa, dict) or not isinstance(qid, str) or not qid:
                    raise fail("needs a string 'id'")
                if qid in seen:
                    raise fail(f"duplicate question id {qid!r}")
                question, answers = qa.get("question"), qa.get("answers")
                if not isinstance(question, str) or not question.strip():
                    raise fail("'question' must be a non-empty string")
                if not isinstance(answers, list) or not answers:
                    raise fail("'answers' must be a non-empty list")
                golds: list[str] = []
                starts: list[int] = []
                for answer in answers:
                    value = answer.get("text") if isinstance(answer, dict) else None
                    if not isinstance(value, str) or not value.strip():
                        raise fail("every answer needs a non-empty 'text'")
                    golds.append(value)
                    at = answer.get("answer_start")
                    ok = isinstance(at, int) and context[at : at + len(value)] == value
                    starts.append(at if ok and isinstance(at, int) else context.find(value))
                seen.add(qid)
                examples.append(QAExample(qid, question, tuple(golds), (pid,), True, pid, tuple(starts)))
    return QAData(examples, passages, groups, [source])


def load_pack_qa(path: Path, pack: DomainPack) -> list[QAExample]:
    """A pack's ``eval/qa.jsonl``: ``{"id", "question", "answers", "supporting_ids"?, "answerable"?}`` per line.

    Raises:
        DatasetFormatError: A line is malformed or names an unknown supporting passage.
    """
    known = {item.id for item in pack.items} | {doc.id for doc in pack.documents}
    examples: list[QAExample] = []
    seen: set[str] = set()
    for lineno, obj in _jsonl(path):
        qid = _id_field(path, lineno, obj, "id")
        if qid in seen:
            raise DatasetFormatError(path, lineno, f"duplicate id {qid!r}")
        question = _str_field(path, lineno, obj, "question", required=True)
        answerable = obj.get("answerable", True)
        if not isinstance(answerable, bool):
            raise DatasetFormatError(path, lineno, "'answerable' must be true or false")
        answers = obj.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
            raise DatasetFormatError(path, lineno, "'answers' must be a list of non-empty strings")
        if answerable and not answers:
            raise DatasetFormatError(path, lineno, "an answerable question needs at least one answer")
        supporting = obj.get("supporting_ids", [])
        if not isinstance(supporting, list) or not all(isinstance(s, str) for s in supporting):
            raise DatasetFormatError(path, lineno, "'supporting_ids' must be a list of strings")
        unknown = [s for s in supporting if s not in known]
        if unknown:
            raise DatasetFormatError(path, lineno, f"supporting id {unknown[0]!r} is not a pack item or document")
        seen.add(qid)
        examples.append(QAExample(qid, question, tuple(answers), tuple(supporting), answerable))
    return examples


def pack_passages(pack: DomainPack) -> dict[str, Passage]:
    """Everything a grounded answer over a pack may cite: its documents and its items."""
    passages = {doc.id: Passage(doc.id, doc.text, doc.title) for doc in pack.documents}
    for item in pack.items:
        passages.setdefault(item.id, Passage(item.id, item.embedding_text(), item.title))
    return passages
