"""The demo suite end to end (real encoder, real FAISS, real ALS), through the CLI and the runner.

Checks the pipeline and what it writes, not the figures: results.json and report.html, agreement of the run file
with trec_eval, cache reuse and identical metrics on a second run, compare, and a gate failing on a worse system.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from app.cli import main
from app.cli_eval import service_answer_backends, service_pack_retrieval
from app.settings import load_settings
from evals.answer_cases import PackRetrieval
from evals.answers import AnswerSystem, Passage, SystemAnswer
from evals.datasets import read_qrels
from evals.ir_metrics import read_trec_run
from evals.runner import RunOptions, run_suite
from evals.suite import load_suite
from retrieval.encoder import Encoder
from retrieval.knowledge import ChunkingConfig
from tests.conftest import DEMO_PACK

pytrec_eval = pytest.importorskip("pytrec_eval")


@dataclass(frozen=True)
class DemoRuns:
    state: Path
    first: Path
    second: Path
    cli_output: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Iterator[DemoRuns]:
    """The demo suite run twice on one cache: through the CLI, then through the runner with the session encoder."""
    state = tmp_path_factory.mktemp("evals-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CANDOR_PATHS__STATE_DIR", str(state))
        first = state / "evals" / "runs" / "first"
        result = CliRunner().invoke(main, ["eval", "run", "demo", "--out", str(first), "--no-progress"])
        assert result.exit_code == 0, result.output
        second = state / "evals" / "runs" / "second"
        run_suite(
            load_suite("demo"),
            RunOptions(
                state_dir=state / "evals",
                out_dir=second,
                progress=False,
                encoder=encoder,
                answer_backends=service_answer_backends(load_settings()),
                pack_retrieval=service_pack_retrieval(load_settings()),
            ),
        )
        yield DemoRuns(state, first, second, result.output)


def _results(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "results.json").read_text("utf-8"))
    return data


def test_results_json_describes_the_run(demo: DemoRuns) -> None:
    results = _results(demo.first)
    for key in ("suite", "run_id", "git_sha", "started_at", "wall_time_s", "seed", "system", "datasets"):
        assert key in results, key
    assert results["suite"] == "demo"
    assert results["seed"] == 13
    encoder = results["system"]["encoder"]
    assert encoder["name"] == "all-MiniLM-L6-v2"
    assert encoder["version"].startswith("sha256:")
    assert results["system"]["index"]["kind"] == "flat"
    assert results["system"]["recommender"]["half_life_days"] == 30.0
    assert results["system"]["answer_backend"]["available"] is True
    assert results["system"]["answer_backend"]["name"] == "extractive"
    assert results["system"]["recommender"]["rating_neutral"] == 3.0
    assert set(results["system"]["recommenders"]["recommendation.shoppers"]) == {
        "most-popular",
        "item-knn",
        "embedding",
        "als",
        "candor-ease",
        "candor-hybrid",
    }
    (dataset,) = results["datasets"]
    assert dataset["hash"].startswith("sha256:")
    assert {"items.jsonl", "interactions.jsonl", "eval/qrels.tsv"} <= set(dataset["files"])
    assert results["library_versions"]["torch"]
    assert results["library_versions"]["implicit"]
    tasks = results["tasks"]
    assert tasks["retrieval.search"]["status"] == "done"
    assert tasks["recommendation.shoppers"]["status"] == "done"
    assert tasks["answers.pack"]["status"] == "done"
    # `candor eval run` reads the pack with the service's [knowledge] settings (places kept for documents).
    served = tasks["answers.pack"]["details"]["open_retrieval"]["as_served"]
    assert served["min_documents"] == load_settings().knowledge.min_document_passages
    answer_metrics = {m["name"] for m in results["metrics"] if m["task"] == "answers.pack"}
    assert {"em", "f1", "abstention_recall", "abstention_precision", "share"} <= answer_metrics
    assert tasks["retrieval.search"]["primary_metric"] == "ndcg@10"
    assert tasks["retrieval.search"]["greater_is_better"] is True
    for metric in results["metrics"]:
        assert {"name", "value", "higher_is_better", "dataset", "task", "system"} <= set(metric)
    names = {(m["system"], m["name"], m.get("group")) for m in results["metrics"]}
    for system in ("most-popular", "item-knn", "embedding", "als", "candor-ease", "candor-hybrid"):
        for name in ("hr@10", "ndcg@10", "mrr", "coverage@10", "novelty@10", "popularity_bias@10"):
            assert (system, name, None) in names
        assert (system, "ndcg@10.gap", "gender") in names
        assert (system, "hr@10", "age_band:25-34") in names
    gap = next(m for m in results["metrics"] if m["name"] == "ndcg@10.gap" and m["system"] == "embedding")
    assert gap["higher_is_better"] is False
    assert gap["ci_low"] <= gap["value"] <= gap["ci_high"]
    assert [g["status"] for g in results["gates"]] == ["passed", "passed", "passed"]
    assert "retrieval.search" in demo.cli_output
    assert f"run {results['run_id']}" in demo.cli_output


def test_report_has_tables_and_plots(demo: DemoRuns) -> None:
    html = (demo.first / "report.html").read_text("utf-8")
    for fragment in ("retrieval.search", "recommendation.shoppers", "By gender", "max-min gap", "Gates", "sha256:"):
        assert fragment in html, fragment
    assert html.count("<img") >= 3
    assert "data:image/png;base64," in html


def test_run_file_agrees_with_trec_eval(demo: DemoRuns) -> None:
    results = _results(demo.first)
    per_unit = json.loads((demo.first / "per_unit.json").read_text("utf-8"))
    run = read_trec_run(demo.first / "run-search.trec")
    qrels = read_qrels(DEMO_PACK / "eval" / "qrels.tsv")
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recall.100", "map"}).evaluate(run)
    names = {"ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "recall@100": "recall_100", "map": "map"}
    for ours, ref in names.items():
        key = f"retrieval.search/{ours}"
        assert set(per_unit[key]) == set(qrels)
        for qid, value in per_unit[key].items():
            assert value == pytest.approx(reference[qid][ref], abs=1e-6)
        metric = next(m for m in results["metrics"] if m["key"] == key)
        assert metric["value"] == pytest.approx(np.mean([reference[q][ref] for q in qrels]), abs=1e-6)


def test_second_run_reuses_the_cache_and_gives_identical_metrics(demo: DemoRuns) -> None:
    first, second = _results(demo.first), _results(demo.second)
    assert first["tasks"]["retrieval.search"]["details"]["cache"]["hit"] is False
    assert second["tasks"]["retrieval.search"]["details"]["cache"]["hit"] is True
    assert second["tasks"]["recommendation.shoppers"]["details"]["cache"]["hit"] is True
    assert first["run_id"] != second["run_id"]

    def stable(results: dict[str, Any]) -> list[dict[str, Any]]:
        return [m for m in results["metrics"] if not m.get("timing")]

    assert stable(first) == stable(second)


def test_compare_and_a_failing_gate(demo: DemoRuns) -> None:
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CANDOR_PATHS__STATE_DIR", str(demo.state))
        same = runner.invoke(main, ["eval", "compare", str(demo.first), str(demo.second), "--bootstrap", "200"])
        assert same.exit_code == 0, same.output
        assert "paired interval" in same.stdout
        # Identical reruns: only timings may move (they are measured, not reproducible).
        worse_rows = [line for line in same.stdout.splitlines() if line.rstrip().endswith("worse")]
        assert [line for line in worse_rows if "latency" not in line.split()[0]] == []
        assert list((demo.state / "evals" / "compare").glob("*.html"))
        worse = demo.state / "evals" / "runs" / "worse"
        gated = runner.invoke(
            main,
            [
                "eval",
                "run",
                "demo",
                "--set",
                "system.index.kind=ivf",
                "--set",
                "system.index.ivf_nprobe=1",
                "--set",
                'gates.rules=["ndcg@10[task=retrieval.search] >= baseline - 0.01"]',
                "--baseline",
                str(demo.first),
                "--gate",
                "--out",
                str(worse),
                "--no-progress",
            ],
        )
        assert gated.exit_code == 3, gated.output
        assert "gate FAILED: ndcg@10[task=retrieval.search] >= baseline - 0.01" in gated.stderr
        assert "needs >=" in gated.stderr
        assert "(baseline " in gated.stderr
        diff_html = demo.state / "diff.html"
        compared = runner.invoke(
            main, ["eval", "compare", str(demo.first), str(worse), "--bootstrap", "200", "--out", str(diff_html)]
        )
        assert compared.exit_code == 0, compared.output
        assert "index kind differs: flat vs ivf" in compared.stderr
        row = next(line for line in compared.stdout.splitlines() if line.startswith("retrieval.search/ndcg@10 "))
        assert row.rstrip().endswith("worse")
        assert "worse" in diff_html.read_text("utf-8")
    results = _results(worse)
    assert results["baseline"]["path"] == str(demo.first)
    assert results["gates"][0]["passed"] is False


class _PackOracle:
    """Answers pack questions from a fixed table when a given passage holds the answer (a test double)."""

    name = "pack-oracle"

    def __init__(self, answers: Mapping[str, str]) -> None:
        self.answers = answers
        self.read: dict[str, list[list[str]]] = {}  # question -> the passage texts of each time it was asked

    def describe(self) -> Mapping[str, Any]:
        return {"kind": "test double"}

    def answer(self, question: str, passages: Sequence[Passage]) -> SystemAnswer:
        gold = self.answers.get(question, "")
        self.read.setdefault(question, []).append([p.text for p in passages])
        for passage in passages:
            if gold and gold in passage.text:
                return SystemAnswer(gold, (passage.id,))
        return SystemAnswer("", (), abstained=True)


RETURNS = "You can return any item within 30 days of delivery."


def _qa_pack(tmp_path: Path, returns: str = RETURNS, passages: int = 2) -> tuple[Path, list[dict[str, Any]]]:
    """A small pack (five towels, three articles, three questions) and a suite that asks its questions."""
    pack = tmp_path / "pack"
    (pack / "eval").mkdir(parents=True)
    items = [
        {"id": f"i{n}", "title": f"Cotton towel {n}", "text": "A soft cotton bath towel.", "category": "Home > Towels"}
        for n in range(5)
    ]
    docs = [
        {"id": "doc-returns", "title": "Returns", "text": returns},
        {"id": "doc-shipping", "title": "Shipping", "text": "Orders ship within 2 business days."},
        {"id": "doc-payment", "title": "Payment", "text": "We accept cards and UPI payments."},
    ]
    qa: list[dict[str, Any]] = [
        {
            "id": "qa-001",
            "question": "How many days do I have to return an item?",
            "answers": ["30 days"],
            "supporting_ids": ["doc-returns"],
            "answerable": True,
        },
        {
            "id": "qa-002",
            "question": "How fast do orders ship?",
            "answers": ["2 business days"],
            "supporting_ids": ["doc-shipping"],
            "answerable": True,
        },
        {"id": "qa-003", "question": "Do you deliver to the Moon?", "answers": [], "answerable": False},
    ]
    for name, rows in (("items.jsonl", items), ("documents.jsonl", docs)):
        (pack / name).write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    (pack / "eval" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa), "utf-8")
    suite = tmp_path / "pack.toml"
    suite.write_text(
        f'[suite]\nname = "pack-qa"\nbootstrap = 20\n[system.answer]\nbackend = "pack-oracle"\n'
        f'[answers.pack]\ndataset = "{pack}"\npassages = {passages}\nunanswerable = 2\n',
        "utf-8",
    )
    return suite, qa


def test_pack_questions_are_asked_over_retrieved_passages(tmp_path: Path, encoder: Encoder) -> None:
    suite, qa = _qa_pack(tmp_path)
    table = {str(q["question"]): str(q["answers"][0]) for q in qa if q["answers"]}
    factory: dict[str, Any] = {"pack-oracle": lambda ctx: _PackOracle(table)}
    summary = run_suite(
        load_suite(str(suite)),
        RunOptions(state_dir=tmp_path / "state", progress=False, encoder=encoder, answer_backends=factory),
    )
    assert isinstance(_PackOracle(table), AnswerSystem)
    for setting in ("open", "gold"):
        values = {
            m["name"]: m["value"]
            for m in summary.results["metrics"]
            if m["setting"] == setting and m.get("group") is None
        }
        assert values["em"] == 1.0  # open: the encoder retrieved each supporting document in the top 2
        assert values["citation_precision"] == 1.0
        assert values["abstention_recall"] == 1.0  # the Moon question and both nearest-passage probes
        assert values["abstention_precision"] == 1.0
    answered: list[dict[str, Any]] = [
        json.loads(line) for line in (summary.run_dir / "answers-pack.jsonl").read_text("utf-8").splitlines()
    ]
    opened = [r for r in answered if r["setting"] == "open"]
    assert len(opened) == 5  # three questions, and two probes: the one-sentence documents cannot lose a sentence
    assert {r["kind"] for r in opened} == {"question", "nearest"}
    assert "doc-returns" in opened[0]["passages"]
    gold_rows = [r for r in answered if r["setting"] == "gold" and r["answerable"]]
    assert [r["passages"] for r in gold_rows] == [["doc-returns"], ["doc-shipping"]]
    groups = {m["group"] for m in summary.results["metrics"] if m["name"] == "abstention_recall" and m.get("group")}
    assert groups == {"probe:dataset", "probe:nearest"}
    settings = summary.results["tasks"]["answers.pack"]["details"]["settings"]
    assert settings["open"]["probes_not_built"] == {"removed": 2}


def test_a_pack_is_read_as_the_service_reads_it(tmp_path: Path, encoder: Encoder) -> None:
    # The service's [knowledge] settings: chunks of one sentence here, and the one place read kept for a document.
    returns = f"{RETURNS} Watches and computer accessories have a shorter return window of 10 days."
    suite, qa = _qa_pack(tmp_path, returns, passages=1)
    oracle = _PackOracle({str(q["question"]): str(q["answers"][0]) for q in qa if q["answers"]})
    served = PackRetrieval(ChunkingConfig(16, 0), answer_items=True, item_passage_chars=12, min_documents=1)
    summary = run_suite(
        load_suite(str(suite)),
        RunOptions(
            state_dir=tmp_path / "state",
            progress=False,
            encoder=encoder,
            answer_backends={"pack-oracle": lambda ctx: oracle},
            pack_retrieval=served,
        ),
    )
    details = summary.results["tasks"]["answers.pack"]["details"]
    assert details["open_retrieval"]["as_served"]["min_documents"] == 1
    rows = [json.loads(line) for line in (summary.run_dir / "answers-pack.jsonl").read_text("utf-8").splitlines()]
    opened = [r for r in rows if r["setting"] == "open"]
    # Every question read one passage, and it was a document: the towels never took the place kept for one.
    assert all(len(r["passages"]) == 1 and r["passages"][0].startswith("doc-") for r in opened)
    first = next(r for r in opened if r["id"] == "qa-001")
    assert first["passages"] == ["doc-returns"]
    assert first["answer"] == "30 days"
    # The open setting (asked first) read the document's best chunk, a sentence; the gold one all of it.
    read = oracle.read["How many days do I have to return an item?"]
    assert read[0] == [RETURNS]
    assert [returns] in read[1:]
