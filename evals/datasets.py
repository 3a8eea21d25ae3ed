"""Dataset adapters: benchmark folders read from disk (never downloaded), every line checked.

Suites name a dataset by its folder under the data root (``beir-scifact``, ``squad-v1.1``, ``ml-100k``, ...), or
by a path containing ``/`` (relative paths resolve against the project folder, e.g. ``data/demo``). Problems are
reported as ``file:line: reason``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evals.errors import DatasetFormatError, DatasetNotFoundError
from retrieval.digest import file_sha256
from retrieval.errors import PackValidationError
from retrieval.pack import DomainPack, load_pack
from retrieval.types import Interaction

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DatasetFormat = Literal["beir", "squad", "ml-100k", "ml-latest", "pack"]

# MovieLens 1M's age bands, applied to MovieLens 100K's exact ages.
AGE_BANDS: tuple[tuple[int, str], ...] = (
    (18, "under 18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
)
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def age_band(age: int) -> str:
    """MovieLens 1M age band of an exact age (``under 18``, ``18-24``, ..., ``56+``)."""
    for upper, label in AGE_BANDS:
        if age < upper:
            return label
    return "56+"


# -- locating and hashing -------------------------------------------------------------------------------------


def resolve_dataset(name: str, data_root: Path | None) -> Path:
    """Find a dataset folder (or file).

    Args:
        name: A folder name under the data root, or a path containing ``/`` (relative to the project folder).
        data_root: The data root (``--data-root`` or ``$CANDOR_DATA_ROOT``).

    Raises:
        DatasetNotFoundError: There is no data root for a bare name, or the path does not exist.
    """
    if "/" in name or name.startswith("."):
        path = Path(name)
        path = path if path.is_absolute() else PROJECT_ROOT / path
    else:
        if data_root is None:
            raise DatasetNotFoundError(
                f"dataset {name!r} is looked up under the data root: pass --data-root DIR or set CANDOR_DATA_ROOT"
            )
        path = data_root / name
    if not path.exists():
        raise DatasetNotFoundError(f"dataset {name!r} not found at {path}")
    return path


def detect_format(path: Path) -> DatasetFormat:
    """Guess a dataset's format from the files it holds.

    Raises:
        DatasetNotFoundError: Nothing recognisable is there.
    """
    if path.is_file() and path.suffix == ".json":
        return "squad"
    if (path / "corpus.jsonl").is_file():
        return "beir"
    if (path / "u.data").is_file():
        return "ml-100k"
    if (path / "ratings.csv").is_file():
        return "ml-latest"
    if (path / "items.jsonl").is_file():
        return "pack"
    if path.is_dir() and any(path.glob("*.json")):
        return "squad"
    raise DatasetNotFoundError(
        f"{path}: not a known dataset layout (BEIR corpus.jsonl, SQuAD *.json, MovieLens u.data or ratings.csv, "
        "or a domain pack with items.jsonl)"
    )


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """What ``results.json`` says about one dataset a task read.

    Attributes:
        name: Folder name (or path) as the suite gave it.
        path: Absolute path read.
        hash: SHA-256 over the names and bytes of the files read.
        files: Each file read with its own hash.
    """

    name: str
    path: str
    hash: str
    files: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, name: str, root: Path, files: Sequence[Path]) -> DatasetRecord:
        """Hash ``files`` (paths under ``root`` or ``root`` itself) into a record."""
        base = root if root.is_dir() else root.parent
        entries = tuple(
            (str(path.relative_to(base)) if path.is_relative_to(base) else str(path), file_sha256(path))
            for path in sorted(set(files))
        )
        return cls(name=name, path=str(root), hash=_listing_hash(entries), files=entries)

    def to_json(self) -> dict[str, Any]:
        """As the ``datasets`` entry of ``results.json``."""
        return {"name": self.name, "path": self.path, "hash": self.hash, "files": dict(self.files)}


def _listing_hash(entries: Iterable[tuple[str, str]]) -> str:
    """One digest over ``(relative path, file digest)`` pairs, in path order."""
    digest = hashlib.sha256()
    for rel, sha in sorted(entries):
        digest.update(f"{rel}\0{sha}\n".encode())
    return "sha256:" + digest.hexdigest()


def merge_dataset_entries(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge ``datasets`` entries naming the same folder (tasks read different files of it) into one each."""
    merged: dict[tuple[str, str], dict[str, str]] = {}
    for entry in entries:
        merged.setdefault((entry["name"], entry["path"]), {}).update(entry["files"])
    return [
        {"name": name, "path": path, "hash": _listing_hash(files.items()), "files": dict(sorted(files.items()))}
        for (name, path), files in merged.items()
    ]


# -- shared readers ---------------------------------------------------------------------------------------------


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line; any bad line is an error."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DatasetNotFoundError(f"{path}: cannot read ({exc.strerror})") from exc
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DatasetFormatError(path, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(obj, dict):
                raise DatasetFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _id_field(path: Path, lineno: int, obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
        raise DatasetFormatError(path, lineno, f"field {name!r} must be a non-empty string")
    return str(value)


def _str_field(path: Path, lineno: int, obj: Mapping[str, Any], name: str, *, required: bool) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DatasetFormatError(path, lineno, f"field {name!r} must be a non-empty string")
    return value


def read_queries(path: Path) -> dict[str, str]:
    """BEIR ``queries.jsonl``: ``{"_id", "text"}`` per line (other fields ignored)."""
    queries: dict[str, str] = {}
    for lineno, obj in _jsonl(path):
        qid = _id_field(path, lineno, obj, "_id")
        if qid in queries:
            raise DatasetFormatError(path, lineno, f"duplicate query id {qid!r}")
        queries[qid] = _str_field(path, lineno, obj, "text", required=True)
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV: ``query-id<TAB>corpus-id<TAB>score``, with or without the header line."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetNotFoundError(f"{path}: cannot read ({exc.strerror})") from exc
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        parts = raw.rstrip("\r").split("\t")
        if lineno == 1 and parts[0].strip().lower() in {"query-id", "query_id", "qid"}:
            continue
        if len(parts) != 3:
            raise DatasetFormatError(path, lineno, f"expected 3 tab-separated fields, got {len(parts)}")
        qid, doc_id, score = (p.strip() for p in parts)
        if not qid or not doc_id:
            raise DatasetFormatError(path, lineno, "empty query or corpus id")
        try:
            value = int(score)
        except ValueError as exc:
            raise DatasetFormatError(path, lineno, f"score {score!r} is not an integer") from exc
        qrels.setdefault(qid, {})[doc_id] = value
    return qrels


# -- BEIR -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrievalData:
    """A retrieval benchmark: corpus, queries and relevance judgments for one split.

    Attributes:
        corpus_ids: Document ids, in file order.
        corpus_texts: The text the encoder sees for each document (BEIR: ``title + " " + text``).
        queries: Query id to text, only queries judged in this split.
        qrels: Query id to ``{doc id: grade}``.
        missing_docs: Judged document ids absent from the corpus (they can never be retrieved).
        files: Files read.
    """

    corpus_ids: list[str]
    corpus_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    missing_docs: int
    files: list[Path]


def _judged(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], qrels_path: Path) -> dict[str, str]:
    absent = sorted(set(qrels) - set(queries))
    if absent:
        raise DatasetFormatError(
            qrels_path, None, f"{len(absent)} judged query id(s) not in queries.jsonl, e.g. {absent[0]!r}"
        )
    return {qid: queries[qid] for qid in qrels}


def load_beir(folder: Path, split: str) -> RetrievalData:
    """Read a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    Raises:
        DatasetNotFoundError: A file or the split is missing.
        DatasetFormatError: A line is malformed.
    """
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise DatasetNotFoundError(f"{path}: missing (a BEIR folder needs corpus.jsonl and queries.jsonl)")
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DatasetNotFoundError(f"{qrels_path}: missing; splits present: {', '.join(splits) or 'none'}")
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    for lineno, obj in _jsonl(corpus_path):
        doc_id = _id_field(corpus_path, lineno, obj, "_id")
        if doc_id in seen:
            raise DatasetFormatError(corpus_path, lineno, f"duplicate document id {doc_id!r}")
        title = _str_field(corpus_path, lineno, obj, "title", required=False)
        text = _str_field(corpus_path, lineno, obj, "text", required=False)
        if not (title.strip() or text.strip()):
            raise DatasetFormatError(corpus_path, lineno, "document has neither title nor text")
        seen.add(doc_id)
        ids.append(doc_id)
        texts.append(f"{title} {text}".strip())  # BEIR's sentence-transformers convention
    qrels = read_qrels(qrels_path)
    queries = _judged(read_queries(queries_path), qrels, qrels_path)
    missing = sum(1 for judged in qrels.values() for doc in judged if doc not in seen)
    return RetrievalData(ids, texts, queries, qrels, missing, [corpus_path, queries_path, qrels_path])


# -- interactions (MovieLens, packs) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InteractionData:
    """Users, items and their interactions, for recommendation evaluation.

    Attributes:
        item_ids: Every item id, in catalog order.
        item_texts: The text the embedding recommender sees for each item.
        user_attrs: User id to group attributes (gender, age band, occupation, ...).
        events: Every interaction, in file order.
        splits: Official train/test splits by name (MovieLens ``ua``/``ub``).
        files: Files read.
        item_providers: Item id to its provider (seller or brand group, for exposure audits); empty when the
            dataset names none (MovieLens).
    """

    item_ids: list[str]
    item_texts: list[str]
    user_attrs: dict[str, dict[str, str]]
    events: list[Interaction]
    splits: dict[str, tuple[list[Interaction], list[Interaction]]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    item_providers: dict[str, str] = field(default_factory=dict)


def _pipe_rows(path: Path, encoding: str = "latin-1") -> Iterator[tuple[int, list[str]]]:
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: missing")
    with path.open(encoding=encoding) as handle:
        for lineno, raw in enumerate(handle, start=1):
            if raw.strip():
                yield lineno, raw.rstrip("\r\n").split("|")


def _ml100k_ratings(path: Path, users: Mapping[str, object], items: Mapping[str, object]) -> list[Interaction]:
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: missing")
    events: list[Interaction] = []
    with path.open(encoding="latin-1") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            parts = raw.split()
            if len(parts) != 4:
                raise DatasetFormatError(path, lineno, f"expected 4 fields (user item rating time), got {len(parts)}")
            try:
                user, item, rating, ts = (int(p) for p in parts)
            except ValueError as exc:
                raise DatasetFormatError(path, lineno, "fields must be integers") from exc
            if not 1 <= rating <= 5:
                raise DatasetFormatError(path, lineno, f"rating {rating} is outside 1..5")
            if str(user) not in users:
                raise DatasetFormatError(path, lineno, f"user {user} is not in u.user")
            if str(item) not in items:
                raise DatasetFormatError(path, lineno, f"item {item} is not in u.item")
            events.append(Interaction(str(user), str(item), "rating", float(rating), float(ts)))
    return events


def load_movielens_100k(folder: Path, split: str | None = None) -> InteractionData:
    """Read MovieLens 100K (``u.data``, ``u.user``, ``u.item``, ``u.genre``; ``<split>.base/.test`` if asked).

    Item text is the title and genres. User groups: ``gender``, ``age_band`` (MovieLens 1M bands) and
    ``occupation``.

    Raises:
        DatasetNotFoundError: A file is missing.
        DatasetFormatError: A line is malformed.
    """
    files = [folder / "u.user", folder / "u.item", folder / "u.data"]
    genres = list(ML100K_GENRES)
    if (folder / "u.genre").is_file():
        files.append(folder / "u.genre")
        named = {int(row[1]): row[0] for _, row in _pipe_rows(folder / "u.genre") if len(row) == 2}
        genres = [named.get(i, name) for i, name in enumerate(genres)]
    users: dict[str, dict[str, str]] = {}
    for lineno, row in _pipe_rows(folder / "u.user"):
        if len(row) != 5:
            raise DatasetFormatError(folder / "u.user", lineno, f"expected 5 '|'-separated fields, got {len(row)}")
        uid, age, gender, occupation, _zip = row
        if not age.isdigit() or gender not in {"M", "F"}:
            raise DatasetFormatError(folder / "u.user", lineno, "age must be an integer and gender M or F")
        users[uid] = {"gender": gender, "age_band": age_band(int(age)), "occupation": occupation}
    item_ids: list[str] = []
    texts: list[str] = []
    for lineno, row in _pipe_rows(folder / "u.item"):
        if len(row) != 5 + len(genres):
            raise DatasetFormatError(
                folder / "u.item", lineno, f"expected {5 + len(genres)} '|'-separated fields, got {len(row)}"
            )
        flags = row[5:]
        if any(f not in {"0", "1"} for f in flags):
            raise DatasetFormatError(folder / "u.item", lineno, "genre flags must be 0 or 1")
        tagged = [g for g, f in zip(genres, flags, strict=True) if f == "1" and g != "unknown"]
        item_ids.append(row[0])
        texts.append(f"{row[1]}. Genres: {', '.join(tagged)}" if tagged else row[1])
    known_items = dict.fromkeys(item_ids)
    events = _ml100k_ratings(folder / "u.data", users, known_items)
    splits: dict[str, tuple[list[Interaction], list[Interaction]]] = {}
    if split is not None:
        base, test = folder / f"{split}.base", folder / f"{split}.test"
        splits[split] = (_ml100k_ratings(base, users, known_items), _ml100k_ratings(test, users, known_items))
        files += [base, test]
    return InteractionData(item_ids, texts, users, events, splits, files)


def load_movielens_latest(folder: Path) -> InteractionData:
    """Read a MovieLens "latest" CSV folder (``ratings.csv``, ``movies.csv``); it has no user attributes.

    Raises:
        DatasetNotFoundError: A file is missing.
        DatasetFormatError: A row is malformed.
    """
    movies_path, ratings_path = folder / "movies.csv", folder / "ratings.csv"
    for path in (movies_path, ratings_path):
        if not path.is_file():
            raise DatasetNotFoundError(f"{path}: missing")
    item_ids: list[str] = []
    texts: list[str] = []
    with movies_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if header[:3] != ["movieId", "title", "genres"]:
            raise DatasetFormatError(movies_path, 1, "expected the header movieId,title,genres")
        for row in reader:
            if len(row) != 3:
                raise DatasetFormatError(movies_path, reader.line_num, f"expected 3 fields, got {len(row)}")
            genre_list = [] if row[2] == "(no genres listed)" else row[2].split("|")
            item_ids.append(row[0])
            texts.append(f"{row[1]}. Genres: {', '.join(genre_list)}" if genre_list else row[1])
    known = set(item_ids)
    events: list[Interaction] = []
    with ratings_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if header[:4] != ["userId", "movieId", "rating", "timestamp"]:
            raise DatasetFormatError(ratings_path, 1, "expected the header userId,movieId,rating,timestamp")
        for row in reader:
            if len(row) != 4:
                raise DatasetFormatError(ratings_path, reader.line_num, f"expected 4 fields, got {len(row)}")
            try:
                rating, ts = float(row[2]), float(row[3])
            except ValueError as exc:
                raise DatasetFormatError(ratings_path, reader.line_num, "rating and timestamp must be numbers") from exc
            if row[1] not in known:
                raise DatasetFormatError(ratings_path, reader.line_num, f"movie {row[1]} is not in movies.csv")
            events.append(Interaction(row[0], row[1], "rating", rating, ts))
    return InteractionData(item_ids, texts, {}, events, {}, [movies_path, ratings_path])


# -- domain packs -------------------------------------------------------------------------------------------------


def load_domain_pack(folder: Path) -> DomainPack:
    """Load a pack with the service's validator, as a dataset error on problems."""
    try:
        return load_pack(folder)
    except PackValidationError as exc:
        shown = "; ".join(exc.problems[:3])
        raise DatasetFormatError(folder, None, f"{len(exc.problems)} problem(s) in domain pack: {shown}") from exc


def pack_files(folder: Path, *names: str) -> list[Path]:
    """The pack files among ``names`` that exist."""
    return [folder / n for n in names if (folder / n).is_file()]


def load_pack_retrieval(folder: Path, pack: DomainPack) -> RetrievalData:
    """Product search judgments of a pack (``eval/queries.jsonl``, ``eval/qrels.tsv``) over its items.

    Raises:
        DatasetNotFoundError: The pack has no search judgments.
        DatasetFormatError: A line is malformed.
    """
    queries_path, qrels_path = folder / "eval" / "queries.jsonl", folder / "eval" / "qrels.tsv"
    for path in (queries_path, qrels_path):
        if not path.is_file():
            raise DatasetNotFoundError(
                f"{path}: missing (a pack's search judgments are eval/queries.jsonl + qrels.tsv)"
            )
    qrels = read_qrels(qrels_path)
    queries = _judged(read_queries(queries_path), qrels, qrels_path)
    ids = [item.id for item in pack.items]
    known = set(ids)
    missing = sum(1 for judged in qrels.values() for doc in judged if doc not in known)
    files = [*pack_files(folder, "items.jsonl"), queries_path, qrels_path]
    return RetrievalData(ids, [item.embedding_text() for item in pack.items], queries, qrels, missing, files)


def load_pack_interactions(folder: Path, pack: DomainPack) -> InteractionData:
    """A pack's interactions and user groups, with item text as the service embeds it."""
    if not pack.interactions:
        raise DatasetNotFoundError(f"{folder}: the pack has no interactions.jsonl to evaluate recommendations on")
    users = {u.user_id: dict(u.attributes) for u in pack.users}
    return InteractionData(
        [item.id for item in pack.items],
        [item.embedding_text() for item in pack.items],
        users,
        list(pack.interactions),
        {},
        pack_files(folder, "items.jsonl", "interactions.jsonl", "users.jsonl"),
        {item.id: provider for item in pack.items if (provider := item.provider or item.brand)},
    )
