"""Re-fitting a reader's confidence on a pack's questions: labels, cross-fitting by document, the service's decision."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from app import reader_calibration, reader_fine_tuning, training_reader
from app.reader_calibration import QuestionRead, fold_of, outcome, recalibrate
from app.training_reader import load_reader_source
from evals.qa_data import Passage, QAExample
from retrieval.answers.reading import ReaderCalibration, choose_span
from retrieval.reader import ReadRequest, Span
from retrieval.reader_training import SpanExample

NEVER = ReaderCalibration((0.0, 0.0, 0.0), -50.0, 0.5, "declines everything")


def _span(context: str, text: str, margin: float) -> Span:
    start = context.index(text)
    return Span(text, start, start + len(text), margin, 0.0)


def _reads(seed: int = 3) -> list[QuestionRead]:
    """Answerable questions whose own document gives the right span with a high margin (other documents a wrong
    one with a low margin), and unanswerable ones whose every span has a low margin."""
    rng = random.Random(seed)
    reads = []
    for i in range(30):
        doc, other = f"kb-{i % 12}", f"kb-other-{i}"
        own = f"Article {i}: returns are accepted within {i + 2} days of delivery."
        wrong = f"Unrelated article {i}: the shop opens at nine."
        answer = f"{i + 2} days"
        example = QAExample(f"q{i}", f"How long do I have to return item {i}?", (answer,), (doc,))
        spans: list[Span | None] = [_span(own, answer, 6 + rng.random()), _span(wrong, "nine", -1 - rng.random())]
        matches = [0.5 + 0.3 * rng.random(), 0.1 * rng.random()]
        reads.append(QuestionRead(example, doc, [doc, other], [own, wrong], [0.6, 0.4], spans, 0.6, matches))
    for i in range(10):
        text = f"Article {i}: delivery takes a week."
        example = QAExample(f"u{i}", f"Do you sell boats {i}?", (), (), answerable=False)
        reads.append(
            QuestionRead(example, f"u{i}", ["kb-x"], [text], [0.3], [_span(text, "a week", -2.0 - 0.3 * i)], 0.3)
        )
    return reads


def test_labels_need_a_right_span_from_a_supporting_document() -> None:
    read = _reads()[0]
    right, wrong = read.labels()
    assert right[3] == 1.0
    assert wrong[3] == 0.0
    assert [right[2], wrong[2]] == read.matches  # the sentence match is the third feature
    assert [row[3] for row in _reads()[-1].labels()] == [0.0]  # no span of an unanswerable question is right
    assert [row[2] for row in _reads()[-1].labels()] == [0.0]  # no match scored: 0


def test_folds_are_stable_and_use_every_fold() -> None:
    assert fold_of("kb-returns", 5, 13) == fold_of("kb-returns", 5, 13)
    assert {fold_of(f"kb-{i}", 5, 13) for i in range(100)} == set(range(5))


def test_no_question_is_judged_by_a_fit_that_saw_its_document(monkeypatch: pytest.MonkeyPatch) -> None:
    fitted_groups: list[set[str]] = []
    real_fit = reader_calibration.fit

    def spy(reads: list[QuestionRead], min_confidence: float, fitted_on: str, target: float) -> ReaderCalibration:
        fitted_groups.append({r.group for r in reads})
        return real_fit(reads, min_confidence, fitted_on, target)

    judged: list[tuple[str, ReaderCalibration]] = []
    real_outcome = reader_calibration.outcome

    def record(read: QuestionRead, calibration: ReaderCalibration, floor: float) -> reader_calibration.Outcome:
        judged.append((read.group, calibration))
        return real_outcome(read, calibration, floor)

    monkeypatch.setattr(reader_calibration, "fit", spy)
    monkeypatch.setattr(reader_calibration, "outcome", record)
    reads = _reads()
    report = recalibrate(reads, NEVER, folds=4, seed=13)
    assert fitted_groups[0] == {r.group for r in reads}  # the served calibration: every question
    fold_fits = fitted_groups[1:]
    assert len(fold_fits) == 4
    for groups in fold_fits:
        held_out = {r.group for r in reads} - groups
        assert held_out
        assert all(fold_of(g, 4, 13) == fold_of(next(iter(held_out)), 4, 13) for g in held_out)
    assert report.skipped_folds == 0
    assert len(judged) == 2 * len(reads)  # each question once cross-fitted, once with the previous calibration


def test_the_refit_answers_what_the_previous_calibration_declined() -> None:
    report = recalibrate(_reads(), NEVER, folds=4, seed=13)
    crossed, previous = report.figures["cross_fitted"], report.figures["previous"]
    assert previous["holds_answer"]["value"] == 0.0
    assert previous["false_abstention"]["value"] == 1.0
    assert crossed["holds_answer"]["value"] == 1.0
    assert crossed["right_document"]["value"] == 1.0
    assert crossed["abstention_accuracy"]["value"] == 1.0
    assert crossed["holds_answer"]["n"] == 30
    assert crossed["abstention_accuracy"]["n"] == 10
    assert report.calibration.weights[1] > 0  # a higher margin means a likelier right answer
    assert (report.questions, report.examples, report.right) == (40, 70, 30)


def test_an_abstention_target_sets_the_threshold_on_the_questions_no_document_answers() -> None:
    reads = _reads()
    free = [r for r in reads if not r.example.answerable]
    loose = reader_calibration.fit(reads, 0.5, "")
    confidences = sorted(
        choose_span(r.example.question, r.contexts, r.scores, r.spans, loose, r.sentence_matches(loose)).confidence  # type: ignore[union-attr]
        for r in free
    )
    everyone = sorted(
        choose_span(r.example.question, r.contexts, r.scores, r.spans, loose, r.sentence_matches(loose)).confidence  # type: ignore[union-attr]
        for r in reads
    )
    for target, declined in ((1.0, 10), (0.8, 8), (0.05, 1)):
        calibration = reader_calibration.fit(reads, 0.5, "", target)
        assert calibration.weights == loose.weights  # only the threshold moves
        edge = confidences[declined - 1]
        following = min((c for c in everyone if c > edge), default=edge)
        assert calibration.min_confidence == pytest.approx((edge + following) / 2, abs=1e-9)  # midway: a margin
        assert sum(c < calibration.min_confidence for c in confidences) == declined
        assert not any(c == pytest.approx(calibration.min_confidence, abs=1e-9) for c in everyone)
    report = recalibrate(reads, NEVER, folds=4, abstention_target=1.0)
    assert sum(c < report.calibration.min_confidence for c in confidences) == 10  # the served fit: all of them
    # Cross-fitted, a held-out question that looks more answerable than any the fit saw is answered: reported.
    assert 0.5 <= report.figures["cross_fitted"]["abstention_accuracy"]["value"] <= 1.0
    with pytest.raises(ValueError, match="no document answers"):
        reader_calibration.fit([r for r in reads if r.example.answerable], 0.5, "", 0.9)


def test_one_class_only_is_refused() -> None:
    unanswerable = [r for r in _reads() if not r.example.answerable]
    with pytest.raises(ValueError, match="right and wrong"):
        recalibrate(unanswerable, NEVER)
    with pytest.raises(ValueError, match="2 folds"):
        recalibrate(_reads(), NEVER, folds=1)


def test_the_service_decision_abstains_below_the_retrieval_floor() -> None:
    read = _reads()[0]
    always = ReaderCalibration((0.0, 0.0, 0.0), 50.0, 0.5)
    assert outcome(read, always, 0.0).holds_answer
    assert not outcome(read, always, 0.9).answered  # the service abstains before reading


def test_fine_tuning_examples_come_from_the_kept_questions_over_their_own_passages() -> None:
    passages = {
        "kb-gift": Passage("kb-gift", "A gift card is valid for 1 year from the date of issue."),
        "kb-ship": Passage("kb-ship", "Standard delivery takes 3 to 7 business days."),
        "kb-care": Passage("kb-care", "Wash towels before first use."),
    }
    examples = [
        QAExample("q1", "How long is a gift card valid?", ("1 year",), ("kb-gift",)),
        QAExample("q2", "How long does delivery take?", ("3 to 7 business days",), ("kb-ship",)),
        QAExample("q3", "Where is the answer?", ("not in the passage",), ("kb-care",)),
        QAExample("q4", "Do you sell boats?", (), (), answerable=False),
    ]
    made = reader_fine_tuning.fold_training_examples(examples, passages, [True, False, True, True], negatives=1.0)
    spans = [e for e in made if e.answer_start >= 0]
    assert [(e.id, e.answer) for e in spans] == [("q1", "1 year")]  # q2 held out, q3 unlocatable, q4 no answer
    assert passages["kb-gift"].text[spans[0].answer_start :].startswith("1 year")
    free = [e for e in made if e.answer_start < 0]
    assert [e.id for e in free] == ["q1~no-answer"]  # shown over a passage without its answer, as "no answer"
    assert "1 year" not in free[0].context
    assert reader_fine_tuning.fold_training_examples(examples, passages, [True] * 4, negatives=0.0)[0].id == "q1"
    assert all(not e.id.startswith("q2") for e in made)


def test_a_pack_source_shows_questions_over_answer_free_passages_of_other_documents() -> None:
    source = load_reader_source(None, Path(__file__).resolve().parents[2] / "data" / "demo", negatives=1.0)
    examples = [*source.train, *source.calibration]
    golds = {e.id: e.answer for e in examples if e.answer_start >= 0}
    free = [e for e in examples if e.answer_start < 0 and e.id.removesuffix("~no-answer") in golds]
    assert free  # each document is a group of one passage: the free passage comes from another document
    for example in free:
        assert golds[example.id.removesuffix("~no-answer")].lower() not in example.context.lower()


class _Info:
    precision = "fp32"


class _Reader:
    """Reads the year when the passage's index is even, the river's length otherwise, always with margin 5."""

    def __init__(self, config: object) -> None:
        self.info = _Info()

    def read(self, requests: list[ReadRequest]) -> list[Span | None]:
        out: list[Span | None] = []
        for request in requests:
            number = int(request.context.split("in ")[1][:4])
            text = str(number) if number % 2 == 0 else request.context.split("is ")[1].split(" miles")[0]
            out.append(_span(request.context, text, 5.0))
        return out


class _Encoder:
    """The question and the museum's sentence are one direction, everything else another."""

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([[1.0, 0.0] if "museum" in t and "river" not in t else [0.0, 1.0] for t in texts])


def test_the_squad_calibration_fits_the_sentence_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training_reader, "SpanReader", _Reader)
    cases = []
    for i in range(40):
        year = 1900 + i
        context = f"The museum opened in {year}. The river is {i + 3} miles long."
        cases.append(SpanExample(f"q{i}", "When did the museum open?", context, context.index(str(year)), str(year)))
    source = training_reader.ReaderSource("squad:test", Path("test.json"), "squad", "", [], calibration=cases)
    said: list[str] = []
    calibration = training_reader.calibrate(Path("reader"), source, _Encoder(), say=said.append)  # type: ignore[arg-type]
    # Margins and retrieval scores are the same for right and wrong spans: only the span's sentence tells them apart.
    assert calibration.weights[2] > 5 * max(abs(calibration.weights[0]), abs(calibration.weights[1]), 0.1)
    assert calibration.uses_sentences
    assert "(sentence match)" in said[0]


def test_an_answer_removed_probe_keeps_the_passages_but_not_the_answer() -> None:
    question = _reads()[0]
    own = "Returns are accepted within 2 days of delivery. Keep the invoice."
    read = QuestionRead(
        question.example,
        question.group,
        ["kb-0", "kb-other-0", "kb-0-copy"],
        [own, "Unrelated article 0: the shop opens at nine.", "Within 2 days, always."],
        [0.6, 0.4, 0.3],
        [],
        0.6,
    )
    (probe,) = reader_calibration.answer_removed([read, _reads()[-1]])  # an unanswerable question gives none
    assert probe.probe
    assert probe.example.id == "q0#removed"
    assert not probe.example.answerable
    assert probe.example.answers == ()
    assert probe.group == read.group  # judged in its question's fold
    # The answer's sentence is cut; the passage left empty by the cut is left out; the others are kept as retrieved.
    assert probe.doc_ids == ["kb-0", "kb-other-0"]
    assert probe.contexts == ["Keep the invoice.", "Unrelated article 0: the shop opens at nine."]
    assert probe.scores == [0.6, 0.4]
    assert reader_calibration.answer_removed([probe]) == []  # no probe of a probe


def _probe(read: QuestionRead, margin: float) -> QuestionRead:
    """A near miss: a confident span in a passage that matches the question, which no longer holds the answer."""
    text = "Article: returns of opened items are accepted after a check."
    example = QAExample(f"{read.example.id}#removed", read.example.question, (), (), answerable=False)
    spans: list[Span | None] = [_span(text, "after a check", margin)]
    return QuestionRead(example, read.group, ["kb-near"], [text], [0.6], spans, 0.6, [0.6], probe=True)


def test_probes_are_reported_always_and_fitted_on_when_asked() -> None:
    reads = _reads()
    rng = random.Random(5)
    probes = [_probe(r, 5 + 2 * rng.random()) for r in reads if r.example.answerable]
    without = recalibrate([*reads, *probes], NEVER, folds=4, abstention_target=0.9, fit_probes=False)
    fitted = recalibrate([*reads, *probes], NEVER, folds=4, abstention_target=0.9)
    # Reported apart from the pack's own unanswerable questions, whichever way the fit went.
    for report in (without, fitted):
        assert report.figures["cross_fitted"]["probe_abstention"]["n"] == 30
        assert report.figures["cross_fitted"]["abstention_accuracy"]["n"] == 10
    assert without.questions == 40
    assert fitted.questions == 70
    # Fitted on only the far misses, the threshold lets the confident near misses through; fitted on them, not.
    assert without.figures["cross_fitted"]["probe_abstention"]["value"] < 0.5
    assert fitted.figures["cross_fitted"]["probe_abstention"]["value"] >= 0.75  # 0.9 of those fitted on, held out
