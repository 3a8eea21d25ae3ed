"""Bulk embedding benchmark: the local encoder loop against Ray Data actors, and approximate-index recall.

Prints one JSON document (and writes it with ``--out``). Usage::

    python -m bench.bulk --items 20000 --out bench/results/<date>-bulk.json
    python -m bench.bulk --items 1000000 --engine ray --address auto     # the 1M-item run, on a Ray cluster
    python -m bench.bulk --items 20000 --index-items 200000               # recall also on 200k synthetic vectors

The catalog is synthetic: ``--items`` items whose titles and texts are drawn (seeded) from the demo pack's
words, written as a domain pack's ``items.jsonl`` in a temporary folder. Both engines embed the same items with
the same encoder settings (``[encoder]``); the Ray figure includes starting the actors and loading the encoder in
each, and is also given net of one measured start. Recall@10 of IVF and HNSW (``[index]`` settings) is measured
against exact (flat) search over the embedded catalog, with held-out items as queries; ``--index-items`` adds the
same measurement on that many synthetic vectors (embedded items plus Gaussian noise, normalised), which are cheap
to make at 1M but are not real item embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.settings import load_settings
from bench.load import emit_report
from retrieval.encoder import load_encoder
from retrieval.index import VectorIndex, configure_faiss
from retrieval.pack import load_pack
from retrieval.types import Item

PROJECT_ROOT = Path(__file__).resolve().parents[1]
QUERIES = 1000
K = 10


def synthetic_items(count: int, seed: int, source: Path = PROJECT_ROOT / "data" / "demo") -> list[Item]:
    """``count`` items whose titles (4-9 words) and texts (20-60 words) are drawn from the demo pack's words."""
    demo = load_pack(source).items
    rng = np.random.default_rng(seed)
    vocabulary = sorted({w for item in demo for w in (item.title + " " + item.text).split() if w.isalpha()})
    categories = sorted({item.category for item in demo})
    words = np.asarray(vocabulary)
    items = []
    for n in range(count):
        title = " ".join(rng.choice(words, size=int(rng.integers(4, 10))))
        text = " ".join(rng.choice(words, size=int(rng.integers(20, 61))))
        category = categories[int(rng.integers(len(categories)))]
        items.append(Item(id=f"syn-{n:07d}", title=title, text=text, category=category))
    return items


def write_pack(items: list[Item], folder: Path) -> Path:
    """Write ``items`` as a pack's ``items.jsonl``; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "items.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
    return path


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k ids that ``found`` holds, over all queries."""
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True))
    return round(hits / truth.size, 4)


def recall_at_k(vectors: np.ndarray, queries: np.ndarray, spec: Any) -> dict[str, Any]:
    """Recall@10 of IVF and HNSW (``spec``'s knobs) against exact search, with build and search times."""
    ids = np.arange(len(vectors))
    configure_faiss(spec)
    exact = VectorIndex.build(vectors.shape[1], replace(spec, kind="flat"), ids, vectors)
    _, truth = exact.search(queries, K)
    out: dict[str, Any] = {"vectors": len(vectors), "queries": len(queries), "k": K}
    for kind in ("ivf", "hnsw"):
        started = time.perf_counter()
        index = VectorIndex.build(vectors.shape[1], replace(spec, kind=kind), ids, vectors)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        _, found = index.search(queries, K)
        search_s = time.perf_counter() - started
        out[kind] = {
            "recall_at_10": _recall(found, truth),
            "build_s": round(build_s, 2),
            "search_ms_per_query": round(1000 * search_s / len(queries), 3),
        }
        if kind == "ivf":  # the same cells searched wider: what nprobe buys
            blob = index.to_bytes()[0]
            out[kind]["recall_at_10_by_nprobe"] = {
                probes: _recall(
                    VectorIndex.from_bytes(blob, replace(spec, ivf_nprobe=probes)).search(queries, K)[1], truth
                )
                for probes in (16, 32, 64)
            }
    out["settings"] = {
        "ivf_nlist": spec.ivf_nlist or "4*sqrt(n)",
        "ivf_nprobe": spec.ivf_nprobe,
        "ivf_train_sample": spec.ivf_train_sample,
        "hnsw_m": spec.hnsw_m,
        "hnsw_ef_construction": spec.hnsw_ef_construction,
        "hnsw_ef_search": spec.hnsw_ef_search,
        "threads": spec.threads,
    }
    return out


def run_ray(args: argparse.Namespace, items: list[Item], items_path: Path, settings: Any) -> dict[str, Any]:
    """Embed ``items`` with Ray Data actors; returns timings and the vectors."""
    import ray

    from retrieval.bulk import RayItemEmbedder

    if args.address:
        ray.init(address=args.address, include_dashboard=False, logging_level="warning")
    else:
        ray.init(
            num_cpus=args.ray_cpus or None,
            object_store_memory=args.object_store_mb * 1024 * 1024,
            include_dashboard=False,
            logging_level="warning",
        )
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        cfg = settings.ray.to_config(args.address or "")
        cfg = replace(cfg, actors=args.actors or cfg.actors, actor_cpus=args.actor_cpus or cfg.actor_cpus)
        embedder = RayItemEmbedder(cfg, settings.encoder_config(), items_path)
        started = time.perf_counter()
        embedder(items[:64], False)  # one actor pool started and used on 64 items: the fixed cost of a run
        startup_s = time.perf_counter() - started
        started = time.perf_counter()
        vectors = embedder(items, True)
        total_s = time.perf_counter() - started
        resources = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    finally:
        ray.shutdown()
    net = max(total_s - startup_s, 1e-9)
    return {
        "cluster": resources,
        "actors": cfg.actors or "auto",
        "actor_cpus": cfg.actor_cpus,
        "batch_rows": cfg.batch_rows,
        "seconds": round(total_s, 2),
        "items_per_s": round(len(items) / total_s, 1),
        "startup_s_64_items": round(startup_s, 2),
        "items_per_s_net_of_startup": round(len(items) / net, 1),
        "_vectors": vectors,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20000, help="synthetic catalog size")
    parser.add_argument("--engine", choices=["both", "local", "ray"], default="both")
    parser.add_argument("--address", default="", help="Ray cluster to join (default: a local one)")
    parser.add_argument("--actors", type=int, default=0, help="encoder actors (0: [ray] actors)")
    parser.add_argument("--actor-cpus", type=int, default=0, help="CPUs per actor (0: [ray] actor_cpus)")
    parser.add_argument("--ray-cpus", type=int, default=0, help="CPUs of a local Ray cluster (0: all)")
    parser.add_argument("--object-store-mb", type=int, default=512, help="object store of a local Ray cluster")
    parser.add_argument("--index-items", type=int, default=0, help="also measure recall on this many synthetic vectors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = load_settings()
    items = synthetic_items(args.items, args.seed)
    texts = [item.embedding_text() for item in items]
    report: dict[str, Any] = {
        "benchmark": "bulk",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.bulk " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # other work on a shared host shows here: figures from a busy host are slower than the code
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
        "catalog": {
            "items": len(items),
            "synthetic": "titles of 4-9 and texts of 20-60 words drawn from the demo pack's words (seeded)",
            "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
        },
        "encoder": {k: v for k, v in asdict(settings.encoder_config()).items() if k != "path"},
    }
    local_vectors = ray_vectors = None
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        items_path = write_pack(items, Path(tmp) / "pack")
        if args.engine in ("both", "local"):
            encoder = load_encoder(settings.encoder_config())
            encoder.warmup()
            started = time.perf_counter()
            local_vectors = encoder.encode(texts, batch_size=settings.encoder.bulk_batch_size)
            seconds = time.perf_counter() - started
            report["local"] = {
                "device": encoder.info.device,
                "seconds": round(seconds, 2),
                "items_per_s": round(len(items) / seconds, 1),
                "note": "one process, every free core; encoder loaded before timing",
            }
        if args.engine in ("both", "ray"):
            ray_report = run_ray(args, items, items_path, settings)
            ray_vectors = ray_report.pop("_vectors")
            report["ray"] = ray_report
    if local_vectors is not None and ray_vectors is not None:
        report["ray_vs_local"] = {
            "items_per_s_ratio": round(report["ray"]["items_per_s"] / report["local"]["items_per_s"], 3),
            "net_of_startup_ratio": round(
                report["ray"]["items_per_s_net_of_startup"] / report["local"]["items_per_s"], 3
            ),
            "max_abs_vector_difference": float(np.abs(ray_vectors - local_vectors).max()),
        }
    vectors = local_vectors if local_vectors is not None else ray_vectors
    assert vectors is not None
    spec = settings.index.to_config()
    rng = np.random.default_rng(args.seed)
    held = rng.choice(len(vectors), size=min(QUERIES, len(vectors) // 10), replace=False)
    keep = np.setdiff1d(np.arange(len(vectors)), held)
    report["index_recall"] = {"embedded_catalog": recall_at_k(vectors[keep], vectors[held], spec)}
    if args.index_items:
        # Sums of two random embedded items plus noise: copies of single items would sit in tight clusters that
        # any index finds whole (IVF recall 1.0 at 200k in a first try), which says nothing about real catalogs.
        count = args.index_items + QUERIES
        pairs = rng.integers(0, len(vectors), size=(count, 2))
        weight = rng.uniform(0.2, 0.8, size=(count, 1)).astype(np.float32)
        mixed = weight * vectors[pairs[:, 0]] + (1 - weight) * vectors[pairs[:, 1]]
        mixed += rng.normal(0.0, 0.03, size=mixed.shape).astype(np.float32)
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        report["index_recall"]["synthetic_vectors"] = {
            "made_as": "w*a + (1-w)*b + noise (sd 0.03), normalised: a, b random embedded items, w uniform in 0.2-0.8",
            **recall_at_k(mixed[QUERIES:], mixed[:QUERIES], spec),
        }
    report["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
