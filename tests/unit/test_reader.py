"""The span reader's pure parts: span search, window labels, the article split, calibration and span choice."""

from __future__ import annotations

import random

import numpy as np
import pytest

from retrieval.answers.reading import (
    SENTENCE_CANDIDATES,
    ReaderCalibration,
    candidate_sentences,
    choose_span,
    fit_calibration,
    sentence_around,
    sentence_matches,
    span_candidates,
    wants_sentence,
)
from retrieval.reader import ReaderConfig, Reading, Span, Windows, best_spans
from retrieval.reader_training import SpanExample, article_fold, batches, label_windows

pytestmark = pytest.mark.unit


def test_best_span_stays_in_the_passage_ordered_and_short() -> None:
    start = np.array([[9.0, 1.0, 0.0, 5.0, 0.0, 0.0]])
    end = np.array([[9.0, 0.0, 4.0, 0.0, 0.0, 6.0]])
    context = np.array([[False, True, True, True, True, True]])  # token 0 ([CLS]) is not a span
    s, e, score = best_spans(start, end, context, max_answer_tokens=3)
    assert (int(s[0]), int(e[0])) == (3, 5)  # 5 + 6; (1, 5) is too long, ends before starts are refused
    assert score[0] == pytest.approx(11.0)
    s, e, _ = best_spans(start, end, context, max_answer_tokens=1)
    assert int(s[0]) == int(e[0])


def test_a_window_without_passage_tokens_has_no_span() -> None:
    _, _, score = best_spans(np.zeros((1, 3)), np.zeros((1, 3)), np.zeros((1, 3), dtype=bool), 5)
    assert not np.isfinite(score[0])


def test_window_labels_point_at_the_answer_or_at_cls() -> None:
    context = "Delivery takes 3 to 7 business days."
    at = context.index("3 to 7")
    example = SpanExample("q", "how long?", context, at, "3 to 7", "a")
    offsets: list[tuple[int, int] | None] = [None, None, (0, 8), (9, 14), (15, 16), (17, 19), (20, 21), (22, 30)]
    windows = Windows([[0] * 8, [0] * 4], [], [0, 0], [offsets, [None, None, (0, 8), (9, 14)]])
    assert label_windows(windows, [example]) == [(4, 6), (0, 0)]
    unanswerable = SpanExample("q2", "how long?", context, -1, "", "a")
    assert label_windows(Windows([[0] * 8], [], [0], [offsets]), [unanswerable]) == [(0, 0)]


def test_an_example_must_carry_its_answer_where_it_says() -> None:
    with pytest.raises(ValueError, match="not at answer_start"):
        SpanExample("q", "?", "abc def", 2, "def")


def test_article_folds_depend_on_the_name_only() -> None:
    names = [f"article-{i}" for i in range(2000)]
    folds = [article_fold(n) for n in names]
    assert folds == [article_fold(n) for n in names]
    share = {f: folds.count(f) / len(folds) for f in ("train", "calibration", "test")}
    assert share["test"] == pytest.approx(0.3, abs=0.04)
    assert share["calibration"] == pytest.approx(0.1, abs=0.03)
    assert [article_fold(n, salt="x") for n in names] != folds
    with pytest.raises(ValueError, match="sum to under 1"):
        article_fold("a", test_fraction=0.8, calibration_fraction=0.3)


def test_batches_cover_every_window_once_with_similar_lengths() -> None:
    lengths = [random.Random(1).randint(10, 300) for _ in range(1000)]
    out = batches(lengths, 16, random.Random(3), pool=10)
    assert sorted(i for b in out for i in b) == list(range(1000))
    assert all(len(b) <= 16 for b in out)
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in out])
    assert spread < 60  # sorted within pools: far less than the 290 of a random batch


def test_calibration_recovers_a_known_logistic_model() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(0, 1, 4000), rng.normal(0, 3, 4000), rng.uniform(0, 1, 4000)], axis=1)
    p = 1 / (1 + np.exp(-(3.0 * x[:, 0] + 0.8 * x[:, 1] + 2.0 * x[:, 2] - 2.5)))
    y = (rng.uniform(size=4000) < p).astype(float)
    weights, bias = fit_calibration(x, y)
    assert weights == pytest.approx((3.0, 0.8, 2.0), abs=0.4)
    assert bias == pytest.approx(-2.5, abs=0.4)
    with pytest.raises(ValueError, match="right and wrong"):
        fit_calibration(x, np.ones(4000))
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        fit_calibration(x[:, :2], y)


def test_calibration_round_trips_through_the_card() -> None:
    calibration = ReaderCalibration((2.0, 0.5, 3.0), -1.0, 0.6, "squad calibration articles")
    assert ReaderCalibration.from_card({"calibration": calibration.to_dict()}) == calibration
    assert ReaderCalibration.from_card({}) == ReaderCalibration()
    assert calibration.confidence(1.0, 10.0) > calibration.confidence(1.0, -10.0)
    assert calibration.confidence(1.0, 1.0, 0.9) > calibration.confidence(1.0, 1.0, 0.1)
    # A card fitted before the sentence match counted keeps its confidence and needs no sentence vectors.
    older = ReaderCalibration.from_card({"calibration": {"weights": [2.0, 0.5], "bias": -1.0}})
    assert older.weights == (2.0, 0.5, 0.0)
    assert not older.uses_sentences
    assert calibration.uses_sentences


def test_questions_that_want_a_sentence() -> None:
    assert wants_sentence("Why was my order cancelled?")
    assert wants_sentence("How do I return a gift card?")
    assert not wants_sentence("How long does delivery take?")
    assert not wants_sentence("How many gift cards can I use?")
    assert not wants_sentence("Who founded the company?")
    for polar in ("Is there a charge for return pickup?", "Does the mug keep tea hot?", "Should I iron it?"):
        assert wants_sentence(polar)  # a yes or no is said by a sentence, not a span
    assert not wants_sentence("Which island is the largest?")  # "is" inside a question does not make it yes/no
    # What is asked is the sentence with the question mark, after whatever the shopper says first.
    assert wants_sentence("Money was taken but my payment failed. What happens?")
    assert wants_sentence("My order says delivered but I never got it. What should I do?")
    assert not wants_sentence("I ordered towels. How long does delivery take?")
    assert wants_sentence("Is it late? How long does delivery take?")  # either asked sentence counts
    assert wants_sentence("Can I return a gift card")  # no question mark: the whole text is what is asked


def test_an_answer_sentence_keeps_its_clauses_unless_it_is_a_long_list() -> None:
    context = (
        "You can cancel free of charge. Once an order is shipped it can no longer be cancelled; you can refuse "
        "the delivery instead."
    )
    span = context.index("refuse")
    assert sentence_around(context, span, span + 6) == (
        "Once an order is shipped it can no longer be cancelled; you can refuse the delivery instead."
    )
    specification = "Specifications: " + " ".join(f"Feature {i}: Yes;" for i in range(20)) + " Colour: Blue."
    span = specification.index("Feature 7")
    assert sentence_around(specification, span, span + 9) == "Feature 7: Yes;"  # the clause, not 60 words


def test_the_most_confident_span_wins_and_explanations_get_their_sentence() -> None:
    contexts = ["Returns are free. Refunds take 5 days because banks batch them.", "Shipping is fast."]
    refund = contexts[0].index("5 days")
    spans = [Span("5 days", refund, refund + 6, 6.0, 0.0), Span("fast", 12, 16, 1.0, 0.0)]
    calibration = ReaderCalibration((1.0, 1.0, 0.0), 0.0)
    read = choose_span("How long do refunds take?", contexts, [0.5, 0.9], spans, calibration)
    assert read is not None
    assert (read.passage, read.text) == (0, "5 days")
    read = choose_span("Why do refunds take time?", contexts, [0.5, 0.9], spans, calibration)
    assert read is not None
    assert read.text == "Refunds take 5 days because banks batch them."
    assert choose_span("?", contexts, [0.5, 0.9], [None, None], calibration) is None
    assert sentence_around(contexts[0], 0, 3) == "Returns are free."


def test_a_span_in_a_sentence_about_the_question_beats_a_surer_one_elsewhere() -> None:
    question = "How long does a refund to my card take?"
    contexts = ["Refunds to cards take 5 to 7 business days. Refunds to UPI take 2 to 3 business days.", "Nothing."]
    cards_at, upi_at = contexts[0].index("5 to 7"), contexts[0].index("2 to 3")
    cards = Span("5 to 7 business days", cards_at, cards_at + 20, 6.0, 0.0)
    upi = Span("2 to 3 business days", upi_at, upi_at + 20, 8.0, 0.0)
    spans: list[Span | None] = [Span(upi.text, upi.start, upi.end, 8.0, 0.0, (cards, upi)), None]
    assert span_candidates(spans, by_sentence=False) == [(0, spans[0])]
    candidates = span_candidates(spans, by_sentence=True)
    assert candidates == [(0, cards), (0, upi)]  # the best span of each sentence
    sentences = candidate_sentences(contexts, candidates)
    assert sentences == ["Refunds to cards take 5 to 7 business days.", "Refunds to UPI take 2 to 3 business days."]
    unit = np.eye(3)
    # The question's vector is the cards sentence's; the UPI one is orthogonal and shares fewer question words.
    matches = sentence_matches(question, unit[1], [*sentences, ""], [unit[1], unit[0]])
    assert matches[2] == 0.0
    assert 0.0 < matches[1] < 1 / 3 < 2 / 3 < matches[0] <= 1.0
    by_margin = ReaderCalibration((0.0, 1.0, 0.0), 0.0)
    assert by_margin.uses_sentences is False
    read = choose_span(question, contexts, [0.5, 0.5], spans, by_margin)
    assert read is not None
    assert read.text == "2 to 3 business days"
    with_sentences = ReaderCalibration((0.0, 1.0, 20.0), 0.0)
    read = choose_span(question, contexts, [0.5, 0.5], spans, with_sentences, matches[:2])
    assert read is not None
    assert read.text == "5 to 7 business days"
    assert read.sentence_match == matches[0]
    with pytest.raises(ValueError, match="sentence matches"):
        choose_span(question, contexts, [0.5, 0.5], spans, with_sentences)


def test_a_passage_gives_the_best_spans_of_its_best_few_sentences() -> None:
    context = " ".join(f"Fact {i} is {i}." for i in range(6))
    by_sentence = tuple(
        Span(str(i), context.index(f"is {i}") + 3, context.index(f"is {i}") + 4, score, 0.0)
        for i, score in enumerate([1.0, 9.0, 3.0, 8.0, 2.0, 7.0])
    )
    spans: list[Span | None] = [Span("1", by_sentence[1].start, by_sentence[1].end, 9.0, 0.0, by_sentence)]
    picked = [span.text for _, span in span_candidates(spans, by_sentence=True)]
    assert len(picked) == SENTENCE_CANDIDATES == 3
    assert picked == ["1", "3", "5"]  # the three best, in passage order


def test_reading_settings_come_from_the_card_unless_configured() -> None:
    card = {"reading": {"max_seq_length": 256, "doc_stride": 96, "max_question_tokens": 48}}
    assert Reading.resolve(ReaderConfig(path="x"), card) == Reading(256, 96, 48)
    assert Reading.resolve(ReaderConfig(path="x", max_seq_length=384, doc_stride=128), card) == Reading(384, 128, 48)
    assert Reading.resolve(ReaderConfig(path="x"), {}) == Reading(384, 128, 64)
    assert Reading(128, 32, 64).max_question_tokens == 64  # half the window for the question still leaves room
    with pytest.raises(ValueError, match="leave room"):
        Reading(64, 24, 40)
