"""The FAISS layer (vidclip.index.ann): exact and approximate search against brute force, the size-based choice
of index, files saved and refused, and the checks on what goes in."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="needs FAISS: pip install faiss-cpu (a vidclip dependency)")

from vidclip.index import ann  # noqa: E402
from vidclip.index.ann import AnnFileError, AnnIndex, AnnSpec, choose_index, exact_search, recall_at_k  # noqa: E402

DIM = 64


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """Tiny indexes gain nothing from threads, and OpenMP spinning on a busy 2-core machine made IVF-PQ
    training 4x slower."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int = DIM, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors from a mixture of gaussian clusters (embedding-like: neighbours share a cluster)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """5,000 vectors and 100 held-out queries from the same clusters."""
    both = clustered(5100)
    return both[:5000], both[5000:]


def build(spec: AnnSpec, vectors: np.ndarray) -> AnnIndex:
    index = AnnIndex.create(spec, vectors.shape[1])
    index.train_if_needed(vectors)
    index.add(vectors)
    return index


def numpy_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


def test_flat_search_is_brute_force_top_k(data):
    vectors, queries = data
    scores, ids = build(choose_index(len(vectors), DIM), vectors).search(queries, 10)
    want_scores, want_ids = numpy_top_k(vectors, queries, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_exact_search_in_blocks_is_brute_force_top_k(data):
    vectors, queries = data
    scores, ids = exact_search(vectors, queries, 10, chunk=777)  # the top k spans several blocks
    want_scores, want_ids = numpy_top_k(vectors, queries, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf_pq"])
def test_approximate_kinds_find_the_true_neighbours_with_their_chosen_params(kind, data):
    vectors, queries = data
    spec = choose_index(len(vectors), DIM, index_type=kind)
    index = build(spec, vectors)
    _, truth = exact_search(vectors, queries, 10)
    _, ids = index.search(queries, 10, vectors=vectors)  # IVF-PQ re-scores its candidates exactly
    assert recall_at_k(ids, truth) >= 0.9
    if kind == "ivf_pq":  # the codes alone rank close neighbours worse: what re-scoring is for
        _, coded = index.search(queries, 10)
        assert recall_at_k(coded, truth) < recall_at_k(ids, truth)


def test_choose_index_thresholds():
    flat_max = ann.FLAT_MAX_FLOATS // 512
    assert flat_max == 65_536
    assert choose_index(0, 512).kind == "flat"
    assert choose_index(flat_max, 512).kind == "flat"
    assert choose_index(flat_max + 1, 512).factory() == "HNSW32,Flat"
    assert choose_index(1_000_000, 512).params["efSearch"] == 128
    assert choose_index(3_000_000, 512).params["efSearch"] == 256  # bigger graphs need a wider search
    # 8 GiB of HNSW32 holds 3.7M vectors of 512-d: beyond, IVF-PQ with nlist ~ sqrt(n)
    assert choose_index(3_600_000, 512).kind == "hnsw"
    big = choose_index(10_000_000, 512)
    assert big.kind == "ivf_pq" and big.params["nlist"] == 4096 and 512 % big.params["m"] == 0
    assert big.params["m"] * big.params["nbits"] / 8 * 10_000_000 <= ann.DEFAULT_MEMORY_BUDGET
    assert choose_index(flat_max * 2, 256).kind == "flat"  # the bound is on floats scanned, not vectors


def test_choose_index_under_a_memory_budget():
    n, dim = 1_000_000, 512
    assert choose_index(n, dim, memory_budget_bytes=3 * 2**30).factory() == "HNSW32,Flat"
    assert choose_index(n, dim, memory_budget_bytes=int(2.1 * 2**30)).factory() == "HNSW16,Flat"
    small = choose_index(n, dim, memory_budget_bytes=200 * 2**20)
    assert small.kind == "ivf_pq"
    assert small.bytes_per_vector(dim) * n <= 200 * 2**20 < small.bytes_per_vector(dim) * 2 * n
    with pytest.raises(ValueError, match="fits in 1000 bytes"):
        choose_index(n, dim, memory_budget_bytes=1000)


def test_forced_kinds_and_refusals():
    assert choose_index(10, DIM, index_type="hnsw").kind == "hnsw"
    assert choose_index(10_000_000, DIM, index_type="flat").kind == "flat"
    pq = choose_index(5000, DIM, index_type="ivf_pq")
    assert pq.params["nlist"] * ann.MIN_POINTS_PER_CENTROID <= 5000  # k-means gets its points
    assert 2 ** pq.params["nbits"] * ann.MIN_POINTS_PER_CENTROID <= 5000
    with pytest.raises(ValueError, match="at least 624 vectors"):
        choose_index(100, DIM, index_type="ivf_pq")
    with pytest.raises(ValueError, match="unknown index type 'annoy'"):
        choose_index(100, DIM, index_type="annoy")


def test_needs_rebuild_when_the_collection_outgrows_its_kind():
    flat = choose_index(1000, 512)
    assert not ann.needs_rebuild(flat, 60_000, 512)
    assert ann.needs_rebuild(flat, 70_000, 512)
    assert not ann.needs_rebuild(choose_index(100_000, 512), 2_000_000, 512)
    assert not ann.needs_rebuild(choose_index(10, 512, index_type="hnsw"), 20, 512, index_type="hnsw")
    ivf = choose_index(4_000_000, 512)  # IVF2048: 4096 lists at 10M are not worth a rebuild, 8192 at 100M are
    assert ivf.params["nlist"] == 2048
    assert not ann.needs_rebuild(ivf, 10_000_000, 512) and ann.needs_rebuild(ivf, 100_000_000, 512)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_pq"])
def test_save_and_load_give_the_same_results(kind, data, tmp_path):
    vectors, queries = data
    spec = choose_index(len(vectors), DIM, index_type=kind)
    index = build(spec, vectors)
    path = tmp_path / "index.faiss"
    digest = index.save(path)
    assert digest == ann.sha256_of(path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temporary file left beside it
    loaded = AnnIndex.load(path, AnnSpec.from_json(spec.to_json()), expected_sha256=digest)
    assert (loaded.ntotal, loaded.dim) == (len(vectors), DIM)
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_loading_applies_the_specs_search_params(data, tmp_path):
    vectors, queries = data
    spec = choose_index(len(vectors), DIM, index_type="hnsw")
    build(spec, vectors).save(tmp_path / "index.faiss")
    narrow = AnnSpec("hnsw", {**spec.params, "efSearch": 1})
    _, truth = exact_search(vectors, queries, 10)
    _, wide_ids = AnnIndex.load(tmp_path / "index.faiss", spec).search(queries, 10)
    _, narrow_ids = AnnIndex.load(tmp_path / "index.faiss", narrow).search(queries, 10)
    assert recall_at_k(narrow_ids, truth) < recall_at_k(wide_ids, truth)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data):
    """An HNSW index file and its SHA-256."""
    path = tmp_path_factory.mktemp("saved") / "index.faiss"
    spec = choose_index(1000, DIM, index_type="hnsw")
    return path, spec, build(spec, data[0][:1000]).save(path)


def test_a_corrupted_file_is_refused_by_its_checksum(saved, tmp_path):
    path, spec, digest = saved
    bad = tmp_path / "index.faiss"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = bytes(8)
    bad.write_bytes(bytes(raw))
    with pytest.raises(AnnFileError, match=f"{bad}: corrupted: checksum mismatch"):
        AnnIndex.load(bad, spec, expected_sha256=digest)


@pytest.mark.parametrize("keep", [0, 3, 4, 100, 0.5, 0.99])
def test_a_truncated_file_without_checksum_is_an_error_not_a_crash(keep, saved, tmp_path):
    path, spec, _ = saved
    raw = path.read_bytes()
    bad = tmp_path / "index.faiss"
    bad.write_bytes(raw[: int(keep * len(raw)) if isinstance(keep, float) else keep])
    with pytest.raises(AnnFileError, match=str(bad)):
        AnnIndex.load(bad, spec)


def test_other_files_are_refused_naming_the_reason(saved, tmp_path):
    path, spec, _ = saved
    text = tmp_path / "notes.faiss"
    text.write_text("not an index at all\n" * 10)
    with pytest.raises(AnnFileError, match=f"{text}: not a FAISS hnsw index"):
        AnnIndex.load(text, spec)
    with pytest.raises(AnnFileError, match="missing FAISS index file"):
        AnnIndex.load(tmp_path / "absent.faiss", spec)
    with pytest.raises(AnnFileError, match="not a FAISS flat index"):  # index.json says another kind
        AnnIndex.load(path, AnnSpec("flat", {}))
    with pytest.raises(AnnFileError, match="holds HNSW32,Flat .* says HNSW16,Flat"):
        AnnIndex.load(path, AnnSpec("hnsw", {**spec.params, "M": 16}))


def test_adding_in_two_batches_equals_adding_once(data):
    vectors, queries = data
    flat = AnnSpec("flat", {})
    once, twice = build(flat, vectors), build(flat, vectors[:3000])
    twice.add(vectors[3000:])
    for a, b in zip(once.search(queries, 10), twice.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    _, truth = exact_search(vectors, queries, 10)
    hnsw = choose_index(len(vectors), DIM, index_type="hnsw")
    graph = build(hnsw, vectors[:3000])
    graph.add(vectors[3000:])
    assert graph.ntotal == len(vectors)
    assert recall_at_k(graph.search(queries, 10)[1], truth) >= 0.9


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (
            np.ones((3, DIM + 1), np.float32) / np.sqrt(DIM + 1),
            r"must be \(n, 64\) float32, got shape \(3, 65\)",
        ),
        (np.ones((3, DIM), np.float32), "unit L2 norm .* row 0 has norm 8.0000"),
        (np.full((2, DIM), np.nan, np.float32), "must be finite: row 0 holds NaN"),
        (np.ones((3, DIM), np.float64) / 8, "must be float32, got float64"),
    ],
)
def test_bad_vectors_are_refused_naming_the_problem(vectors, message):
    index = AnnIndex.create(AnnSpec("flat", {}), DIM)
    with pytest.raises(ValueError, match=message):
        index.add(vectors)
    assert index.ntotal == 0


def test_ivf_refuses_to_add_before_training_and_to_train_on_too_few(data):
    vectors, _ = data
    index = AnnIndex.create(choose_index(len(vectors), DIM, index_type="ivf_pq"), DIM)
    with pytest.raises(ValueError, match="must be trained"):
        index.add(vectors)
    with pytest.raises(ValueError, match="needs at least .* training vectors .* got 100"):
        index.train_if_needed(vectors[:100])
    with pytest.raises(ValueError, match="do not divide dim 60"):
        AnnIndex.create(AnnSpec("ivf_pq", {**index.spec.params, "m": 16}), 60)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_k_beyond_ntotal_pads_with_minus_one(kind, data):
    vectors, queries = data
    index = build(choose_index(5, DIM, index_type=kind), vectors[:5])
    scores, ids = index.search(queries[:2], 8)
    assert ids.shape == (2, 8)
    assert sorted(ids[0, :5]) == [0, 1, 2, 3, 4] and (ids[:, 5:] == -1).all()
    assert np.isneginf(scores[:, 5:]).all() and np.isfinite(scores[:, :5]).all()
    empty = AnnIndex.create(AnnSpec("flat", {}), DIM)
    assert (empty.search(queries[0], 3)[1] == -1).all()  # one query as a (dim,) vector


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "annoy", "params": {}}, "unknown index kind 'annoy'"),
        ({"kind": "hnsw", "params": {"M": 32}}, r"missing \['efConstruction', 'efSearch'\]"),
        (
            {"kind": "hnsw", "params": {"M": "32", "efConstruction": 40, "efSearch": 64}},
            "M='32' is not an integer",
        ),
        ({"kind": "flat", "params": {"nprobe": 4}}, r"unknown \['nprobe'\]"),
        ({"kind": "flat", "params": {}, "factory": "HNSW32,Flat"}, "factory 'HNSW32,Flat' does not match"),
        (["flat"], "must be a mapping with a 'kind'"),
    ],
)
def test_a_bad_spec_is_refused_naming_it(data, message):
    with pytest.raises(ValueError, match=message):
        AnnSpec.from_json(data)


def test_spec_json_roundtrip():
    spec = choose_index(10_000_000, 512)
    assert AnnSpec.from_json(spec.to_json()) == spec
    assert spec.to_json()["factory"] == spec.factory() == f"IVF4096,PQ{spec.params['m']}x8"


def test_recall_at_k_counts_the_true_neighbours_found():
    truth = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    found = np.array([[4, 3, 9, 8], [6, 5, 7, -1]])
    assert recall_at_k(found, truth) == pytest.approx((2 + 2) / 6)


def test_faiss_is_imported_on_first_use_only(monkeypatch):
    code = "import sys, vidclip, vidclip.index.ann; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        AnnIndex.create(AnnSpec("flat", {}), DIM)
