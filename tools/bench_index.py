"""Benchmark: the index ``choose_index`` picks against exact (flat) search, measured in the same run.

    python tools/bench_index.py [--sizes 10000 100000 1000000] [--dim 512] [--queries 200] [--batch 64]
                                [--kinds auto [hnsw ivf_pq]] [--uniform-sizes 10000 100000] [--json out.json]
    python tools/bench_index.py --quick          # tiny sizes, every kind: a smoke run

Vectors are embedding-like: a seeded mixture of N/1000 gaussian clusters in D dims (real CLIP embeddings
cluster), the spread inside a cluster falling off as 1/sqrt(rank) over a random basis (a low intrinsic
dimension, as real embeddings have), normalised; queries are drawn the same way and held out. Plain uniform
unit vectors, at ``--uniform-sizes``, are the worst case: no structure, every neighbour nearly as far as any
other point. Vectors are made in float32 chunks, so 1M x 512 needs 2 GiB for the vectors and as much per index.

For each size: exact flat search (the baseline and the truth recall is measured against) and each index kind
asked for (``auto``: what ``choose_index`` picks; skipped where that is flat). Per index: build time (training
included), memory per vector (bytes of the serialized index / N, and RSS growth / N), latency of one query at
a time (p50, p99 over ``--queries``) and per query in batches of ``--batch``, recall@10. Then the ratio of each
index's p50 to flat's, and whether the goal holds: p50 < 10 ms per query at the largest size with recall@10
>= 0.95. FAISS keeps its default threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from vidclip.index.ann import AnnIndex, AnnSpec, choose_index, recall_at_k

K = 10
GOAL_MS, GOAL_RECALL = 10.0, 0.95


class Mixture:
    """A seeded mixture of ``clusters`` gaussian clusters of unit vectors (see the module docstring); each
    ``sample`` call draws fresh points from the same clusters."""

    def __init__(self, dim: int, clusters: int, seed: int = 0, sigma: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        spread = 1.0 / np.sqrt(np.arange(1, dim + 1))
        self.spread = (sigma * spread / np.linalg.norm(spread)).astype(np.float32)  # noise norm ~ sigma
        self.basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)

    def sample(self, n: int, seed: int, chunk: int = 50_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.centres.shape[1]), dtype=np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            noise = rng.standard_normal((m, out.shape[1]), dtype=np.float32) * self.spread
            x = self.centres[rng.integers(0, len(self.centres), m)] + noise @ self.basis
            out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def uniform(n: int, dim: int, seed: int, chunk: int = 50_000) -> np.ndarray:
    """Unit vectors spread uniformly over the sphere: the worst case for approximate search."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start : start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_bytes() -> int:
    """This process's resident memory now (not its peak: indexes are built and freed in turn)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serialized_bytes(index: AnnIndex) -> int:
    """The size of the file ``index.save`` would write, counted without writing it."""
    import faiss

    size = 0

    def count(block: bytes) -> int:
        nonlocal size
        size += len(block)
        return len(block)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index._index, writer)
    del writer  # flushes
    return size


def measure(spec: AnnSpec, vectors: np.ndarray, queries: np.ndarray, batch: int) -> tuple[dict, np.ndarray]:
    """Build ``spec`` on ``vectors`` and time searches of ``queries``; the row of figures and the ids found."""
    refine = vectors if spec.kind == "ivf_pq" else None  # what the store passes: its vectors, memory-mapped
    before = rss_bytes()
    start = time.perf_counter()
    index = AnnIndex.create(spec, vectors.shape[1])
    index.train_if_needed(vectors)
    for part in range(0, len(vectors), 100_000):  # the store adds in such parts
        index.add(vectors[part : part + 100_000])
    build = time.perf_counter() - start
    grown = rss_bytes() - before
    index.search(queries[:batch], K, vectors=refine)  # warm-up (first-touch pages, lazy tables)
    single, found = [], []
    for query in queries:
        start = time.perf_counter()
        found.append(index.search(query[None], K, vectors=refine)[1][0])
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    for part in range(0, len(queries), batch):
        index.search(queries[part : part + batch], K, vectors=refine)
    batched = (time.perf_counter() - start) / len(queries)
    row = {
        "index": spec.factory(),
        "params": spec.params,
        "build_s": build,
        "file_bytes_per_vector": serialized_bytes(index) / len(vectors),
        "rss_bytes_per_vector": grown / len(vectors),
        "p50_ms": 1e3 * float(np.percentile(single, 50)),
        "p99_ms": 1e3 * float(np.percentile(single, 99)),
        "batch_ms_per_query": 1e3 * batched,
    }
    return row, np.stack(found)


def bench_size(data: str, n: int, args: argparse.Namespace) -> list[dict]:
    """Flat and each kind asked for on ``n`` vectors of ``data``; rows with recall@10 against flat."""
    if data == "clustered":
        mixture = Mixture(args.dim, clusters=max(10, n // 1000), seed=args.seed)
        vectors, queries = mixture.sample(n, args.seed + 1), mixture.sample(args.queries, args.seed + 2)
    else:
        vectors, queries = uniform(n, args.dim, args.seed + 1), uniform(args.queries, args.dim, args.seed + 2)
    flat, truth = measure(AnnSpec("flat", {}), vectors, queries, args.batch)
    rows = [{**flat, "recall_at_10": 1.0}]
    for kind in args.kinds:
        spec = choose_index(n, args.dim, index_type=kind)
        if any(row["index"] == spec.factory() for row in rows):
            continue  # auto chose flat, or the kind also asked for by name
        row, found = measure(spec, vectors, queries, args.batch)
        rows.append({**row, "recall_at_10": recall_at_k(found, truth)})
    for row in rows:
        row.update(data=data, n=n, dim=args.dim, chosen=row["index"] == choose_index(n, args.dim).factory())
    return rows


def print_rows(rows: list[dict]) -> None:
    print(
        "| data | N | index | build s | file B/vector | RSS B/vector | p50 ms | p99 ms | batch ms/query | "
        "recall@10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = r["index"] + (" (auto)" if r["chosen"] else "")
        print(
            f"| {r['data']} | {r['n']} | {name} | {r['build_s']:.1f} | {r['file_bytes_per_vector']:.0f} | "
            f"{r['rss_bytes_per_vector']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['batch_ms_per_query']:.3f} | {r['recall_at_10']:.3f} |"
        )


def print_ratios(rows: list[dict]) -> None:
    for r in rows:
        if r["index"] == "Flat":
            flat = r
            continue
        print(
            f"{r['data']} {r['n']}: {r['index']} vs Flat: p50 speedup = {flat['p50_ms'] / r['p50_ms']:.2f}x, "
            f"batch speedup = {flat['batch_ms_per_query'] / r['batch_ms_per_query']:.2f}x, "
            f"memory = {r['file_bytes_per_vector'] / flat['file_bytes_per_vector']:.2f}x, "
            f"recall@10 {r['recall_at_10']:.3f}"
        )
    largest = max(r["n"] for r in rows if r["data"] == "clustered")
    auto = next(r for r in rows if r["data"] == "clustered" and r["n"] == largest and r["chosen"])
    met = auto["p50_ms"] < GOAL_MS and auto["recall_at_10"] >= GOAL_RECALL
    print(
        f"goal at {largest} clustered vectors: p50 < {GOAL_MS:g} ms with recall@10 >= {GOAL_RECALL}: "
        f"{'met' if met else 'NOT met'} ({auto['index']}: p50 {auto['p50_ms']:.3f} ms, "
        f"recall@10 {auto['recall_at_10']:.3f})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="held-out queries, timed one at a time")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--kinds", nargs="+", default=["auto"], choices=["auto", "hnsw", "ivf_pq"])
    parser.add_argument(
        "--uniform-sizes", type=int, nargs="*", default=None, help="default: the two smallest"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and every kind: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.dim, args.queries, args.kinds = [2000, 5000], 32, 40, ["auto", "hnsw", "ivf_pq"]
    if args.uniform_sizes is None:
        args.uniform_sizes = sorted(args.sizes)[:2]
    for name in ("sizes", "uniform_sizes"):
        if any(n < 1 for n in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.queries < 1 or args.batch < 1 or args.dim < 1:
        parser.error("--queries, --batch and --dim must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    import faiss

    args = parse_args(argv)
    print(
        f"# bench_index  D={args.dim}, {args.queries} queries, k={K}, faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads), numpy {np.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    rows = []
    for data, sizes in (("clustered", args.sizes), ("uniform (worst case)", args.uniform_sizes)):
        for n in sorted(sizes):
            start = time.perf_counter()
            rows += bench_size(data, n, args)
            print(f"# {data} {n}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print_rows(rows)
    print_ratios(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
