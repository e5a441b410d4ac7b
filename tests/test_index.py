"""``vidclip index`` / ``vidclip search`` / ``VideoIndex``: built from videos on the tiny model, searched, added
to, resumed, refused, repaired."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import vidclip
from vidclip.commands import index as index_command
from vidclip.commands import search as search_command
from vidclip.index import IndexFolderError, VideoIndex
from vidclip.inference.pipeline import caption_tokenizer, encode_texts, encode_videos
from vidclip.synthetic import index_frames, write_video
from vidclip.synthetic.demo_data import draw_moving_shape


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    videos = root / "videos"
    videos.mkdir()
    for i in range(6):
        write_video(videos / f"v{i}.mp4", index_frames(20 + 3 * i, 64, 64), fps=25)
    (videos / "broken.mp4").write_text("not a video")
    torch.manual_seed(0)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), root / "run").parent
    return root, videos, run


def build(videos, out, run, *extra) -> int:
    args = [str(v) for v in (videos if isinstance(videos, list) else [videos])]
    return index_command.main(
        [*args, "--out", str(out), "--checkpoint", str(run), "--num-workers", "0", *extra]
    )


def expected_ranking(run, paths, text):
    model = vidclip.load_checkpoint(run).eval()
    encoded = encode_videos(model, paths, num_workers=0)
    query = encode_texts(model, [text], caption_tokenizer(model))
    return model.similarity(query, encoded.features)[0].numpy()


def test_search_ranks_as_exact_similarity_and_reports_failures(setup, tmp_path, capsys):
    root, videos, run = setup
    out = tmp_path / "index"
    assert build(videos, out, run) == 0
    assert "6 ok" in capsys.readouterr().out
    index = VideoIndex.load(out)
    assert len(index) == 6 and len(index.videos) == 6
    results = index.search("a square moving left", k=10)
    assert list(results.columns) == ["rank", "video", "start", "end", "score", "row"]
    assert len(results) == 6 and results["rank"].tolist() == list(range(1, 7))
    paths = sorted(str(p) for p in videos.glob("v*.mp4"))
    scores = expected_ranking(run, paths, "a square moving left")
    order = np.argsort(-scores)
    assert results["video"].tolist() == [paths[i] for i in order]
    np.testing.assert_allclose(results["score"], scores[order], atol=1e-5)
    assert (results["start"] == 0).all() and results["end"].tolist() == pytest.approx(
        [(20 + 3 * int(v[-5])) / 25 for v in results["video"]]
    )
    rows = pd.read_parquet(out / "rows")  # the searchable table, readable as it is (autofaiss too)
    assert set(rows.columns) == {"video", "start", "end", "embedding"} and len(rows) == 6
    failures = pd.read_parquet(out / "failures")
    assert failures["video"].tolist() == [str(videos / "broken.mp4")] and failures["error"][0]


def test_the_search_command_prints_and_writes(setup, tmp_path, capsys):
    root, videos, run = setup
    out = tmp_path / "index"
    build(videos, out, run)
    capsys.readouterr()
    assert search_command.main([str(out), "a disc", "--top-k", "3", "--output", str(tmp_path / "r.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    written = pd.read_csv(tmp_path / "r.csv")
    assert len(printed) == 4 and len(written) == 3
    assert written["video"].tolist() == VideoIndex.load(out).search("a disc", k=3)["video"].tolist()
    assert search_command.main([str(out), "--like", str(videos / "v2.mp4"), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("v2.mp4")  # a video is most like itself


def test_rerun_skips_and_adding_a_video_adds_only_it(setup, tmp_path, capsys):
    root, videos, run = setup
    out = tmp_path / "index"
    build(videos, out, run)
    before = json.loads((out / "index.json").read_text())
    assert build(videos, out, run) == 0
    assert "7 skipped" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["faiss_sha256"] == before["faiss_sha256"]
    extra = tmp_path / "new.mp4"
    write_video(extra, draw_moving_shape("red", "disc", "up", num_frames=30), fps=25)
    index = VideoIndex.load(out)
    summary = index.add([extra], num_workers=0)
    assert summary.ok == 1 and len(index) == 7 and str(extra) in index.videos
    after = json.loads((out / "index.json").read_text())
    assert after["parts"][: len(before["parts"])] == before["parts"]  # the old rows kept, one part added
    assert index.search_like(extra, k=1)["video"][0] == str(extra)


def test_another_model_is_refused(setup, tmp_path, capsys):
    root, videos, run = setup
    out = tmp_path / "index"
    build(videos, out, run)
    capsys.readouterr()
    code = index_command.main([str(videos), "--out", str(out), "--model", "tiny", "--num-frames", "4"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "not comparable" in errors[0] and "tiny" in errors[0]
    with pytest.raises(ValueError, match="another model"):
        VideoIndex.load(out).search_embedding(np.ones(32, np.float32))
    assert len(VideoIndex.load(out)) == 6  # nothing lost


def test_random_weights_are_kept_in_the_index(setup, tmp_path):
    root, videos, run = setup
    out = tmp_path / "index"
    assert (
        index_command.main(
            [str(videos), "--out", str(out), "--model", "tiny", "--num-frames", "4", "--num-workers", "0"]
        )
        == 0
    )
    assert (out / "model.safetensors").exists()
    index = VideoIndex.load(out)
    like = index.search_like(videos / "v3.mp4", k=1)
    assert like["video"][0].endswith("v3.mp4") and like["score"][0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "query, message",
    [("", "empty"), ("   ", "empty"), ("x" * 10_000, "10000 characters")],
)
def test_bad_queries_get_a_clear_message(setup, tmp_path, capsys, query, message):
    root, videos, run = setup
    out = tmp_path / "index"
    build(videos, out, run)
    with pytest.raises(ValueError, match=message):
        VideoIndex.load(out).search(query)
    capsys.readouterr()
    assert search_command.main([str(out), query]) == 2
    assert message in capsys.readouterr().err


def test_missing_half_written_and_corrupted_indexes(setup, tmp_path, capsys):
    root, videos, run = setup
    with pytest.raises(IndexFolderError, match="no such index folder"):
        VideoIndex.load(tmp_path / "nothing")
    out = tmp_path / "index"
    build(videos, out, run)
    reference = VideoIndex.load(out).search("a square", k=6)
    faiss_file = out / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    with pytest.raises(IndexFolderError, match="corrupted"):
        VideoIndex.load(out)
    assert search_command.main([str(out), "a square"]) == 2
    assert "corrupted" in capsys.readouterr().err
    assert build(videos, out, run) == 0  # repaired from the rows
    pd.testing.assert_frame_equal(VideoIndex.load(out).search("a square", k=6), reference)
    (out / "index.json").unlink()  # as a first build killed before its commit leaves it
    with pytest.raises(IndexFolderError, match="did not finish"):
        VideoIndex.load(out)
    assert build(videos, out, run) == 0
    pd.testing.assert_frame_equal(VideoIndex.load(out).search("a square", k=6), reference)
    (out / "index.json").write_text("{not json")
    with pytest.raises(IndexFolderError, match="index.json: corrupted"):
        VideoIndex.load(out)


def test_from_embeddings_indexes_what_extract_wrote(setup, tmp_path):
    from vidclip.commands import extract

    root, videos, run = setup
    assert (
        extract.main(
            [str(videos), "--out", str(tmp_path / "emb"), "--checkpoint", str(run), "--num-workers", "0"]
        )
        == 0
    )
    assert index_command.main(["--from-embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "a")]) == 0
    build(videos, tmp_path / "b", run)
    a = VideoIndex.load(tmp_path / "a").search("a disc", k=6)
    b = VideoIndex.load(tmp_path / "b").search("a disc", k=6)
    assert a["video"].tolist() == b["video"].tolist()
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-6)
    assert a["end"].isna().all()  # extract does not record durations
    code = index_command.main(["--from-embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "a")])
    assert code == 0 and len(VideoIndex.load(tmp_path / "a")) == 6  # nothing added twice


def test_a_moved_video_still_searches(setup, tmp_path):
    root, videos, run = setup
    moved = tmp_path / "videos"
    shutil.copytree(videos, moved)
    out = tmp_path / "index"
    build(moved, out, run)
    (moved / "v1.mp4").unlink()
    index = VideoIndex.load(out)
    assert len(index.search("a square", k=6)) == 6
    assert not index.video_file(index.video_id(str(moved / "v1.mp4"))).exists()
    with pytest.raises(IndexError):
        index.video_file(99)


def test_search_gives_the_ranks_of_eval_on_a_retrieval_split(setup, tmp_path):
    """Every caption of a split, searched over an exact index of its videos, finds its video at the rank the
    evaluation's similarity matrix gives (so the recalls are the same)."""
    from vidclip.config import DataConfig
    from vidclip.data import read_annotations
    from vidclip.inference.retrieval import score_retrieval
    from vidclip.synthetic.demo_data import make_caption_dataset

    root, videos, run = setup
    csv = make_caption_dataset(tmp_path / "data", num_frames=8, size=32)
    config = DataConfig(format="csv", test=str(csv), video_root=str(tmp_path / "data"))
    annotations = read_annotations(config, "retrieval", "test")
    model = vidclip.load_checkpoint(run).eval()
    scores = score_retrieval(model, annotations, num_workers=0)
    sim = scores.similarity
    eval_ranks = [int((sim[q] > sim[q, v]).sum()) + 1 for q, v in enumerate(scores.text_to_video.tolist())]
    build(scores.paths, tmp_path / "index", run, "--index-type", "flat")
    index = VideoIndex.load(tmp_path / "index")
    search_ranks = []
    for caption, v in zip(scores.captions, scores.text_to_video.tolist(), strict=True):
        found = index.search(caption, k=len(index))
        search_ranks.append(found["video"].tolist().index(scores.paths[v]) + 1)
    assert search_ranks == eval_ranks
    metrics = vidclip.retrieval_metrics(sim, scores.text_to_video)
    assert metrics["t2v/R@1"] == pytest.approx(100 * np.mean(np.array(search_ranks) == 1))


def test_ctrl_c_keeps_what_was_embedded_and_the_rerun_finishes(setup, tmp_path, monkeypatch, capsys):
    from vidclip.index import build as build_module

    root, videos, run = setup
    take, calls = build_module._take_whole, []

    def interrupt_third_batch(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return take(*args)

    monkeypatch.setattr(build_module, "_take_whole", interrupt_third_batch)
    out = tmp_path / "index"
    assert build(videos, out, run, "--batch-size", "2") == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    kept = len(pd.read_parquet(out / "rows")) + len(pd.read_parquet(out / "failures"))
    assert kept == 4  # the first two batches (broken.mp4 among them), though no part was full
    monkeypatch.setattr(build_module, "_take_whole", take)
    assert build(videos, out, run, "--batch-size", "2") == 0
    assert len(VideoIndex.load(out)) == 6 and pd.read_parquet(out / "rows")["video"].is_unique
