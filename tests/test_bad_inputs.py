"""One corpus of broken and unusual videos through every command: each bad item is named with its reason (a
row, a warning, a count), the run goes on, and the valid items come out as if the bad ones were not there."""

import csv
import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from bad_corpus import CORPUS, MKNOD_NAME, SPECIAL, write_corpus, write_special

import vidclip
from vidclip.commands import eval as evaluate_module
from vidclip.commands import extract
from vidclip.commands import zeroshot as zeroshot_module

GOOD = [name for name, reason in CORPUS.items() if reason is None]
BROKEN = {
    name: reason for name, reason in CORPUS.items() if reason is not None and name != "never downloaded.mp4"
}
NUM_FRAMES = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus in a folder with a space in its name, and a list file naming every video (one is absent)."""
    root = tmp_path_factory.mktemp("bad inputs")
    paths = write_corpus(root / "videos")
    listing = root / "videos.txt"
    listing.write_text("".join(f"{path}\n" for path in paths))
    torch.manual_seed(0)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=NUM_FRAMES), root / "run").parent
    return root, listing, run


def embedding(run, path) -> np.ndarray:
    """The video's embedding computed directly, one video at a time."""
    model = vidclip.load_checkpoint(run).eval()
    clip = vidclip.load_frames(path, NUM_FRAMES)
    with torch.no_grad():
        return model.encode_video(
            vidclip.get_video_transform(model)(clip.frames)[None], clip.mask[None]
        ).pooled[0]


def test_extract_gives_every_bad_video_a_row_with_its_reason(corpus, tmp_path, capsys):
    root, listing, run = corpus
    out = tmp_path / "out"
    assert extract.main([str(listing), "--out", str(out), "--checkpoint", str(run), "--num-workers", "0",
                         "--batch-size", "4"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith(f"extract: {len(CORPUS)} videos, {len(GOOD)} ok, 5 failed")
    table = pd.read_parquet(out).set_index("video")
    assert len(table) == len(CORPUS)
    for name, reason in CORPUS.items():
        row = table.loc[str(root / "videos" / name)]
        if reason is None:
            assert pd.isna(row["error"]), (name, row["error"])
            np.testing.assert_allclose(row["embedding"], embedding(run, root / "videos" / name), atol=1e-5)
        else:
            assert row["embedding"] is None and reason in row["error"].lower(), (name, row["error"])


def test_zeroshot_writes_a_prediction_or_an_error_for_every_video(corpus, tmp_path):
    root, listing, run = corpus
    out = tmp_path / "preds.csv"
    args = [str(listing), "--labels", "one,two,three", "--checkpoint", str(run), "--num-workers", "0"]
    assert zeroshot_module.main([*args, "--output", str(out)]) == 0
    preds = pd.read_csv(out).set_index("video")
    assert len(preds) == len(CORPUS)
    for name, reason in CORPUS.items():
        row = preds.loc[str(root / "videos" / name)]
        if reason is None:
            assert pd.isna(row["error"]) and row["label"] in {"one", "two", "three"}, name
        else:
            assert pd.isna(row["label"]) and reason in row["error"].lower(), (name, row["error"])


def write_captions(root, path) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption"])
        writer.writerows((f"videos/{name}", f"caption {i}") for i, name in enumerate(CORPUS))
    return str(path)


def test_eval_counts_missing_and_failed_videos_and_scores_the_rest(corpus, tmp_path, caplog):
    root, _, run = corpus
    config = tmp_path / "eval.yaml"
    captions = write_captions(root, tmp_path / "captions.csv")
    config.write_text(f"task: retrieval\ndata:\n  format: csv\n  test: {captions}\n  video_root: {root}\n"
                      "  num_workers: 0\n")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        code = evaluate_module.main(["--config", str(config), "--checkpoint", str(run),
                                     "--output", str(tmp_path / "m.json")])  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["num_videos"], metrics["num_missing"], metrics["num_failed"]) == (
        len(GOOD),
        1,
        len(BROKEN),
    )
    assert metrics["num_queries"] == len(GOOD)
    assert "never downloaded.mp4" in caplog.text
    for name in BROKEN:
        assert name in caplog.text


@pytest.mark.slow
def test_train_skips_and_lists_the_bad_videos_and_finishes(corpus, tmp_path, fresh_accelerate_state, caplog):
    from vidclip.commands import train as train_module

    root, _, _ = corpus
    captions = write_captions(root, tmp_path / "captions.csv")
    config = tmp_path / "train.yaml"
    config.write_text("task: retrieval\nmodel: {head: mean}\n")
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", "model.name=tiny", "model.pretrained=null", f"model.num_frames={NUM_FRAMES}",
                 f"data.train={captions}", f"data.video_root={root}", "data.num_workers=0", "train.batch_size=5",
                 "train.max_steps=2", "train.warmup=0", "train.log_with=none"]  # fmt: skip
    assert train_module.main(["--config", str(config), *overrides]) == 0
    failed = dict(line.split("\t") for line in (out / "failed_videos.txt").read_text().splitlines())
    # the absent video is dropped before training (named in a warning), the others fail to decode
    assert "1 of" in caplog.text and "never downloaded" in caplog.text
    assert {path.rsplit("/", 1)[-1] for path in failed} == set(BROKEN)
    for path, reason in failed.items():
        assert BROKEN[path.rsplit("/", 1)[-1]] in reason.lower(), (path, reason)
    assert (out / "model.safetensors").exists()


# -- what is not a regular file: refused from os.stat, never opened (a FIFO would block the command) ----------
def special_reason(name: str) -> str:
    if name == MKNOD_NAME:
        return "not a regular file: a character device"
    return SPECIAL["link loop.mp4" if name.startswith("link loop") else name]  # both links of the loop


@pytest.fixture
def special(corpus, tmp_path):
    """The names that are not regular files, beside one good video, in a folder and in a list file."""
    root, _, run = corpus
    folder = tmp_path / "special"
    paths = write_special(folder)
    good = folder / "good.mp4"
    good.write_bytes((root / "videos" / "one frame.mp4").read_bytes())
    listing = tmp_path / "special.txt"
    listing.write_text("".join(f"{path}\n" for path in [*paths, good]))
    return folder, listing, paths, good, run


@pytest.mark.timeout(120)  # a FIFO opened for reading would block here
def test_open_video_and_diagnose_name_what_is_not_a_regular_file(special):
    _, _, paths, good, _ = special
    for path in paths:
        reason = special_reason(path.name)
        with pytest.raises(vidclip.video.VideoDecodeError) as caught:
            vidclip.load_frames(path, NUM_FRAMES)
        assert caught.value.reason.lower().startswith(reason), (path.name, caught.value.reason)
        assert vidclip.video.errors.diagnose(str(path)).lower().startswith(reason), path.name
    dangling = good.with_name("dangling.mp4")
    dangling.symlink_to(good.with_name("gone.mp4"))
    with pytest.raises(FileNotFoundError, match="symbolic link to a missing target"):
        vidclip.load_frames(dangling, NUM_FRAMES)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("source", ["list", "folder"])
def test_extract_names_what_is_not_a_regular_file_and_embeds_the_rest(special, source, tmp_path):
    folder, listing, paths, good, run = special
    out = tmp_path / "out"
    inputs = str(listing if source == "list" else folder)
    assert extract.main([inputs, "--out", str(out), "--checkpoint", str(run), "--num-workers", "0",
                         "--timeout", "30"]) == 0  # fmt: skip
    table = pd.read_parquet(out).set_index("video")
    found = paths  # walking the folder finds both links of the loop, and goes into folder.mp4
    if source == "folder":
        found = [folder / name for name in os.listdir(folder) if name not in ("folder.mp4", "good.mp4")]
    assert sorted(table.index) == sorted(map(str, [*found, good]))
    assert pd.isna(table.loc[str(good), "error"])
    for path in found:
        error = table.loc[str(path), "error"]
        assert error.lower().startswith(special_reason(path.name)), (path.name, error)


@pytest.mark.timeout(300)
def test_zeroshot_names_what_is_not_a_regular_file(special, tmp_path):
    _, listing, paths, good, run = special
    out = tmp_path / "preds.csv"
    args = [str(listing), "--labels", "one,two", "--checkpoint", str(run), "--num-workers", "0"]
    assert zeroshot_module.main([*args, "--timeout", "30", "--output", str(out)]) == 0
    preds = pd.read_csv(out).set_index("video")
    assert preds.loc[str(good), "label"] in {"one", "two"}
    for path in paths:
        error = preds.loc[str(path), "error"]
        assert pd.isna(preds.loc[str(path), "label"]), path.name
        assert error.lower().startswith(special_reason(path.name)), (path.name, error)
