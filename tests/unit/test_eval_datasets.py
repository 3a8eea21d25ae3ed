"""Dataset adapters on small fixture files (written here, never copied from a dataset), and on the real shared
files when they are present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets import (
    DatasetRecord,
    age_band,
    detect_format,
    load_beir,
    load_domain_pack,
    load_movielens_100k,
    load_movielens_latest,
    load_pack_retrieval,
    merge_dataset_entries,
    resolve_dataset,
)
from evals.errors import DatasetFormatError, DatasetNotFoundError
from evals.pack_judgments import derive, load_rules, render
from evals.qa_data import load_pack_qa, load_squad
from tests.conftest import DEMO_PACK, SHARED_DATA


def _beir(root: Path, *, corpus_extra: str = "", qrels: str | None = None) -> Path:
    (root / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces fever."},
        {"_id": "d2", "title": "", "text": "Vitamin C and colds."},
        {"_id": 3, "title": "Sleep", "text": ""},
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in corpus) + "\n" + corpus_extra, "utf-8")
    queries = [
        {"_id": "q1", "text": "does aspirin lower fever"},
        {"_id": "q2", "text": "colds"},
        {"_id": "q3", "text": "x"},
    ]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n", "utf-8")
    default = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td9\t1\n"
    (root / "qrels" / "test.tsv").write_text(default if qrels is None else qrels, "utf-8")
    return root


def test_beir_folder(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir")
    assert detect_format(root) == "beir"
    data = load_beir(root, "test")
    assert data.corpus_ids == ["d1", "d2", "3"]
    assert data.corpus_texts[0] == "Aspirin Aspirin reduces fever."
    assert data.corpus_texts[1] == "Vitamin C and colds."
    assert data.queries == {"q1": "does aspirin lower fever", "q2": "colds"}  # only judged queries
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d9": 1}}
    assert data.missing_docs == 1


@pytest.mark.parametrize(
    ("corpus_extra", "qrels", "where", "reason"),
    [
        ('{"_id": "d4", "text": \n', None, "corpus.jsonl:4", "invalid JSON"),
        ('{"_id": "d1", "text": "again"}\n', None, "corpus.jsonl:4", "duplicate document id"),
        ('{"title": "no id"}\n', None, "corpus.jsonl:4", "'_id'"),
        ("", "q1\td1\n", "test.tsv:1", "expected 3 tab-separated fields"),
        ("", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "test.tsv:2", "not an integer"),
        ("", "q1\td1\t1\nq7\td1\t1\n", "test.tsv", "not in queries.jsonl"),
    ],
)
def test_beir_errors_name_file_line_and_reason(
    tmp_path: Path, corpus_extra: str, qrels: str | None, where: str, reason: str
) -> None:
    root = _beir(tmp_path / "beir", corpus_extra=corpus_extra, qrels=qrels)
    with pytest.raises(DatasetFormatError) as info:
        load_beir(root, "test")
    assert where in str(info.value)
    assert reason in str(info.value)


def test_missing_split_and_data_root(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir")
    with pytest.raises(DatasetNotFoundError, match="splits present: test"):
        load_beir(root, "train")
    with pytest.raises(DatasetNotFoundError, match="CANDOR_DATA_ROOT"):
        resolve_dataset("beir-scifact", None)
    with pytest.raises(DatasetNotFoundError, match="not found"):
        resolve_dataset("nope", tmp_path)
    assert resolve_dataset("beir", tmp_path) == tmp_path / "beir"


def _squad(path: Path) -> Path:
    doc = {
        "version": "1.1",
        "data": [
            {
                "title": "Broncos",
                "paragraphs": [
                    {
                        "context": "Super Bowl 50 was won by the Denver Broncos in Santa Clara.",
                        "qas": [
                            {"id": "a1", "question": "Who won?", "answers": [{"text": "Denver Broncos"}]},
                            {"id": "a2", "question": "Where?", "answers": [{"text": "Santa Clara"}]},
                        ],
                    }
                ],
            },
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [{"id": "b1", "question": "Capital of France?", "answers": [{"text": "Paris"}]}],
                    },
                    {"context": "The Seine flows through Paris and Rouen.", "qas": []},
                ],
            },
        ],
    }
    path.write_text(json.dumps(doc, indent=1), "utf-8")
    return path


def test_squad_file(tmp_path: Path) -> None:
    (tmp_path / "squad").mkdir()
    path = _squad(tmp_path / "squad" / "dev.json")
    assert detect_format(path.parent) == "squad"
    data = load_squad(path.parent)
    assert [e.id for e in data.examples] == ["a1", "a2", "b1"]
    assert data.examples[0].context_id == "Broncos#0"
    assert data.examples[0].supporting_ids == ("Broncos#0",)
    assert data.examples[0].answers == ("Denver Broncos",)
    assert len(data.passages) == 3
    assert data.passage_group["Broncos#0"] == "Broncos"


def test_squad_errors(tmp_path: Path) -> None:
    path = _squad(tmp_path / "dev.json")
    doc = json.loads(path.read_text("utf-8"))
    del doc["data"][0]["paragraphs"][0]["qas"][1]["question"]
    path.write_text(json.dumps(doc, indent=1), "utf-8")
    with pytest.raises(DatasetFormatError) as info:
        load_squad(path)
    assert "'question'" in str(info.value)
    line = info.value.line
    assert line is not None
    assert '"a2"' in path.read_text("utf-8").splitlines()[line - 1]
    path.write_text('{"data": [', "utf-8")
    with pytest.raises(DatasetFormatError, match=r"dev.json:1: invalid JSON"):
        load_squad(path)


def _movielens(root: Path, *, bad_rating: bool = False) -> Path:
    root.mkdir()
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|17|M|student|32067\n", "latin-1")
    flags = ["0"] * 19
    action = flags.copy()
    action[1] = "1"
    comedy = flags.copy()
    comedy[5], comedy[14] = "1", "1"
    (root / "u.item").write_text(
        f"1|Film A (1995)|01-Jan-1995||http://x|{'|'.join(action)}\n"
        f"2|Film B (1996)|01-Jan-1996||http://x|{'|'.join(comedy)}\n"
        f"3|Film C (1997)|01-Jan-1997||http://x|{'|'.join(flags)}\n",
        "latin-1",
    )
    rating = "9" if bad_rating else "4"
    (root / "u.data").write_text(f"1\t1\t5\t100\n1\t2\t3\t200\n2\t3\t{rating}\t150\n3\t1\t2\t50\n", "latin-1")
    (root / "ua.base").write_text("1\t1\t5\t100\n2\t3\t4\t150\n3\t1\t2\t50\n", "latin-1")
    (root / "ua.test").write_text("1\t2\t3\t200\n", "latin-1")
    return root


def test_movielens_100k(tmp_path: Path) -> None:
    root = _movielens(tmp_path / "ml")
    assert detect_format(root) == "ml-100k"
    data = load_movielens_100k(root, "ua")
    assert data.item_ids == ["1", "2", "3"]
    assert data.item_texts == [
        "Film A (1995). Genres: Action",
        "Film B (1996). Genres: Comedy, Romance",
        "Film C (1997)",
    ]
    assert data.user_attrs["2"] == {"gender": "F", "age_band": "50-55", "occupation": "other"}
    assert data.user_attrs["3"]["age_band"] == "under 18"
    assert len(data.events) == 4
    assert data.events[0].event == "rating"
    assert data.events[0].value == 5.0
    base, test = data.splits["ua"]
    assert (len(base), len(test)) == (3, 1)
    assert [age_band(a) for a in (17, 18, 24, 25, 44, 49, 55, 56)] == [
        "under 18",
        "18-24",
        "18-24",
        "25-34",
        "35-44",
        "45-49",
        "50-55",
        "56+",
    ]


def test_movielens_errors(tmp_path: Path) -> None:
    root = _movielens(tmp_path / "ml", bad_rating=True)
    with pytest.raises(DatasetFormatError, match=r"u.data:3: rating 9 is outside 1..5"):
        load_movielens_100k(root)
    with pytest.raises(DatasetNotFoundError, match=r"ub\.base"):
        load_movielens_100k(_movielens(tmp_path / "ml2"), "ub")


def test_movielens_latest_csv(tmp_path: Path) -> None:
    root = tmp_path / "latest"
    root.mkdir()
    (root / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story (1995)",Animation|Comedy\n2,"Heat, The (1995)",(no genres listed)\n',
        "utf-8",
    )
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.5,10\n1,2,3.0,20\n", "utf-8")
    assert detect_format(root) == "ml-latest"
    data = load_movielens_latest(root)
    assert data.item_texts == ["Toy Story (1995). Genres: Animation, Comedy", "Heat, The (1995)"]
    assert [e.value for e in data.events] == [4.5, 3.0]
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,7,4.5,10\n", "utf-8")
    with pytest.raises(DatasetFormatError, match=r"ratings.csv:2: movie 7"):
        load_movielens_latest(root)


def _pack(root: Path, qa_lines: list[dict[str, object]]) -> Path:
    (root / "eval").mkdir(parents=True)
    items = [
        {"id": "i1", "title": "Blue mug", "text": "A ceramic mug.", "category": "Kitchen > Mugs"},
        {"id": "i2", "title": "Red towel", "text": "A cotton towel.", "category": "Home > Towels"},
    ]
    (root / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items), "utf-8")
    docs = [{"id": "doc-returns", "title": "Returns", "text": "You can return items within 30 days."}]
    (root / "documents.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), "utf-8")
    (root / "eval" / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa_lines), "utf-8")
    (root / "eval" / "queries.jsonl").write_text('{"_id": "s1", "text": "mug"}\n', "utf-8")
    (root / "eval" / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\ns1\ti1\t1\n", "utf-8")
    return root


def test_pack_eval_files(tmp_path: Path) -> None:
    qa = [
        {
            "id": "qa-001",
            "question": "How long to return?",
            "answers": ["30 days"],
            "supporting_ids": ["doc-returns"],
            "answerable": True,
        },
        {"id": "qa-002", "question": "Do you ship to Mars?", "answers": [], "answerable": False},
    ]
    root = _pack(tmp_path / "pack", qa)
    assert detect_format(root) == "pack"
    pack = load_domain_pack(root)
    examples = load_pack_qa(root / "eval" / "qa.jsonl", pack)
    assert [(e.id, e.answerable, e.supporting_ids) for e in examples] == [
        ("qa-001", True, ("doc-returns",)),
        ("qa-002", False, ()),
    ]
    search = load_pack_retrieval(root, pack)
    assert search.queries == {"s1": "mug"}
    assert search.corpus_ids == ["i1", "i2"]
    assert search.corpus_texts[0] == pack.items[0].embedding_text()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"id": "x", "question": "q?", "answers": ["a"], "supporting_ids": ["nope"]}, "supporting id 'nope'"),
        ({"id": "x", "question": "q?", "answers": []}, "needs at least one answer"),
        ({"id": "x", "question": "", "answers": ["a"]}, "'question'"),
        ({"id": "x", "question": "q?", "answers": ["a"], "answerable": "yes"}, "'answerable'"),
    ],
)
def test_pack_qa_errors(tmp_path: Path, line: dict[str, object], reason: str) -> None:
    root = _pack(tmp_path / "pack", [{"id": "ok", "question": "q?", "answers": ["a"]}, line])
    with pytest.raises(DatasetFormatError) as info:
        load_pack_qa(root / "eval" / "qa.jsonl", load_domain_pack(root))
    assert "qa.jsonl:2" in str(info.value)
    assert reason in str(info.value)


def test_dataset_hashes_change_with_content(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir")
    files = [root / "corpus.jsonl", root / "queries.jsonl"]
    first = DatasetRecord.of("beir", root, files)
    assert first.hash == DatasetRecord.of("beir", root, files).hash
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "changed"}\n', "utf-8")
    assert DatasetRecord.of("beir", root, files).hash != first.hash
    merged = merge_dataset_entries(
        [first.to_json(), DatasetRecord.of("beir", root, [root / "qrels/test.tsv"]).to_json()]
    )
    assert len(merged) == 1
    assert set(merged[0]["files"]) == {"corpus.jsonl", "queries.jsonl", "qrels/test.tsv"}


def test_demo_judgments_match_their_rules() -> None:
    rules = load_rules(DEMO_PACK / "eval" / "rules.toml")
    items = load_domain_pack(DEMO_PACK).items
    qrels = derive(rules, items)
    assert all(qrels[r.id] for r in rules), "every query has a relevant item"
    queries, qrels_text = render(rules, qrels)
    assert (DEMO_PACK / "eval" / "queries.jsonl").read_text("utf-8") == queries
    assert (DEMO_PACK / "eval" / "qrels.tsv").read_text("utf-8") == qrels_text
    kinds = {r.kind for r in rules}
    assert {"category", "attribute", "price", "brand", "paraphrase"} <= kinds
    assert len(rules) >= 30


# -- the real shared files ----------------------------------------------------------------------------------------

needs = pytest.mark.skipif


@needs(not (SHARED_DATA / "ml-100k" / "u.data").is_file(), reason=f"MovieLens 100K not present under {SHARED_DATA}")
def test_real_movielens_100k() -> None:
    data = load_movielens_100k(SHARED_DATA / "ml-100k", "ua")
    assert (len(data.events), len(data.user_attrs), len(data.item_ids)) == (100_000, 943, 1682)
    base, test = data.splits["ua"]
    assert (len(base), len(test)) == (90_570, 9_430)
    assert {a["gender"] for a in data.user_attrs.values()} == {"M", "F"}
    assert data.item_texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"


@needs(not (SHARED_DATA / "beir-scifact" / "corpus.jsonl").is_file(), reason=f"SciFact not present under {SHARED_DATA}")
def test_real_scifact_train_split() -> None:
    data = load_beir(SHARED_DATA / "beir-scifact", "train")
    assert len(data.corpus_ids) == 5183
    assert len(data.queries) == 809
    assert sum(len(j) for j in data.qrels.values()) == 919


@needs(not (SHARED_DATA / "squad-v1.1").is_dir(), reason=f"SQuAD v1.1 not present under {SHARED_DATA}")
def test_real_squad() -> None:
    data = load_squad(SHARED_DATA / "squad-v1.1")
    assert len(data.examples) > 5000
    assert len({e.id for e in data.examples}) == len(data.examples)
    assert all(e.answers and e.context_id in data.passages for e in data.examples)
