"""vidclip.viz: figures render headless to PNGs that show what they claim (the frames' own colours, the ranks
vidclip.retrieval_metrics counts, only the videos a figure shows decoded), and matplotlib stays optional
(tests/test_cli.py checks that ``import vidclip.viz`` does not import it)."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vidclip
from vidclip import viz

PALETTE = [(230, 30, 30), (30, 200, 40), (40, 60, 240), (240, 220, 20), (200, 30, 200), (20, 210, 210)]


def solid_video(colour, frames=4, size=16):
    """uint8 (T, size, size, 3) frames of one colour."""
    return np.tile(np.array(colour, dtype=np.uint8), (frames, size, size, 1))


def read_png(path):
    """The PNG as an (H, W, 3) uint8 array."""
    return np.asarray(Image.open(path).convert("RGB"))


def has_colour(image, colour, tolerance=12, min_pixels=20):
    """Whether at least ``min_pixels`` pixels of ``image`` are within ``tolerance`` of ``colour``."""
    close = np.abs(image.astype(int) - np.array(colour)).max(axis=-1) <= tolerance
    return int(close.sum()) >= min_pixels


def check_png(path, min_size=(300, 150), max_size=(4000, 4000), min_std=10.0):
    """The file is a PNG of a plausible size and not blank; returns its pixels."""
    image = read_png(path)
    height, width = image.shape[:2]
    assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], (width, height)
    assert image.std() > min_std, f"{path} is nearly blank (pixel std {image.std():.1f})"
    return image


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib made unimportable for vidclip.viz (its cached Figure class forgotten before and after)."""
    viz._figure_class.cache_clear()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    yield
    viz._figure_class.cache_clear()


def test_without_matplotlib_a_figure_function_says_what_to_install(no_matplotlib):
    with pytest.raises(ImportError, match=r'pip install "vidclip\[viz\]"'):
        viz.frame_grid([solid_video(PALETTE[0])])


def test_strip_image_places_each_frame_between_white_gaps():
    frames = np.stack([solid_video(colour, frames=1, size=8)[0] for colour in PALETTE[:3]])  # (3, 8, 8, 3)
    image = viz.strip_image(torch.from_numpy(frames), gap=2)
    assert image.shape == (8, 3 * 8 + 2 * 2, 3)
    for i, colour in enumerate(PALETTE[:3]):
        assert (image[:, i * 10 : i * 10 + 8] == colour).all()
    assert (image[:, 8:10] == 255).all() and (image[:, 18:20] == 255).all()
    assert viz.strip_image(np.concatenate([frames] * 4), max_frames=3).shape == image.shape  # thinned to 3


def test_frames_must_be_uint8_rgb_and_the_error_names_the_argument():
    with pytest.raises(ValueError, match="frames must be uint8"):
        viz.frame_strip(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"uint8 frames \(T, H, W, 3\), got shape \(2, 8, 8\)"):
        viz.frame_strip(np.zeros((2, 8, 8), dtype=np.uint8))


def test_frame_strip_draws_the_frames_own_colours_from_torch_or_numpy(tmp_path):
    frames = np.concatenate([solid_video(PALETTE[0], 2), solid_video(PALETTE[2], 2)])
    ax = viz.frame_strip(torch.from_numpy(frames), title="two colours")
    path = viz.save_figure(ax.figure, tmp_path / "deep" / "er" / "strip.png")
    assert path == tmp_path / "deep" / "er" / "strip.png"
    image = check_png(path, min_size=(200, 50))
    assert has_colour(image, PALETTE[0]) and has_colour(image, PALETTE[2])
    assert not has_colour(image, PALETTE[1])
    again = viz.save_figure(viz.frame_strip(frames, title="two colours").figure, tmp_path / "numpy.png")
    assert np.array_equal(read_png(again), image)


def test_frame_grid_has_a_row_per_video_and_draws_an_error_in_place_of_frames(tmp_path):
    videos = [solid_video(PALETTE[0]), "not a video: moov atom missing", solid_video(PALETTE[1])]
    fig = viz.frame_grid(videos, titles=["a.mp4", "b.mp4", "c.mp4"], captions=["red", None, "green"])
    assert len(fig.axes) == 3
    texts = [text.get_text() for text in fig.axes[1].texts]
    assert any("moov atom missing" in text for text in texts) and not fig.axes[1].images
    image = check_png(viz.save_figure(fig, tmp_path / "grid.png"))
    assert has_colour(image, PALETTE[0]) and has_colour(image, PALETTE[1])
    with pytest.raises(ValueError, match="titles has 2 entries for 3 videos"):
        viz.frame_grid(videos, titles=["a", "b"])


@pytest.mark.parametrize("per_video", [1, 3])
def test_recall_curves_match_retrieval_metrics_with_one_or_several_captions_per_video(per_video, tmp_path):
    torch.manual_seed(per_video)
    num_videos = 30
    text_to_video = torch.arange(num_videos).repeat_interleave(per_video)
    sim = torch.randn(len(text_to_video), num_videos) + 1.5 * torch.eye(num_videos)[text_to_video]
    target = None if per_video == 1 else text_to_video
    metrics = vidclip.retrieval_metrics(sim, target)
    t2v, v2t = viz.retrieval_ranks(sim, target)
    assert t2v.mean() == pytest.approx(metrics["t2v/MnR"]) and v2t.mean() == pytest.approx(metrics["v2t/MnR"])
    assert np.median(v2t) == pytest.approx(metrics["v2t/MdR"])
    fig = viz.recall_at_k_figure(sim, text_to_video=target)
    lines = {line.get_label().split()[0]: line for line in fig.axes[0].lines}
    for direction in ("t2v", "v2t"):
        curve = dict(zip(lines[direction].get_xdata(), lines[direction].get_ydata(), strict=True))
        for k in (1, 5, 10):
            assert curve[k] == pytest.approx(metrics[f"{direction}/R@{k}"])
        assert f"R@5 {metrics[f'{direction}/R@5']:.1f}" in lines[direction].get_label()
    check_png(viz.save_figure(fig, tmp_path / "recall.png"), min_size=(500, 300))


def test_recall_figure_rejects_a_bad_matrix():
    with pytest.raises(ValueError, match="non-square matrix needs text_to_video"):
        viz.recall_at_k_figure(torch.randn(4, 3))


def test_ranked_queries_never_lists_a_query_twice():
    best, worst = viz.ranked_queries(np.array([3, 1, 4, 2]), n_best=3, n_worst=3)
    assert best == [1, 3, 0] and worst == [2]
    assert viz.ranked_queries(np.array([5, 1, 9, 2, 7]), 1, 2) == ([1], [2, 4])


def query_grid_case(perfect, num=40, seed=0):
    """A (num, num) similarity: text i's video ranked first (``perfect``) or random, and a decoding counter."""
    torch.manual_seed(seed)
    sim = torch.rand(num, num) + (2.0 * torch.eye(num) if perfect else 0)
    decoded = []

    def decode(index):
        decoded.append(index)
        return solid_video(PALETTE[index % len(PALETTE)])

    return sim, decode, decoded


def test_query_grid_decodes_only_the_videos_it_shows_each_once():
    sim, decode, decoded = query_grid_case(perfect=False)
    fig = viz.query_grid(sim, [f"query {i}" for i in range(len(sim))], decode, k=5, n_best=3, n_worst=3)
    t2v, _ = viz.retrieval_ranks(sim)
    best, worst = viz.ranked_queries(t2v, 3, 3)
    shown = {v for q in best + worst for v in sim[q].topk(5).indices.tolist()} | set(best + worst)
    assert sorted(decoded) == sorted(shown) and len(shown) < len(sim)
    assert len(fig.axes) == 6 * 6 + sum(t2v[q] > 5 for q in best + worst)  # text + top-5 (+ the true video)


def test_query_grid_highlights_the_true_video_and_tells_perfect_from_random_scores(tmp_path):
    images = {}
    for perfect in (True, False):
        sim, decode, _ = query_grid_case(perfect)
        queries = [f"a query about video {i}" for i in range(len(sim))]
        fig = viz.query_grid(sim, queries, decode, k=5)
        titles = [ax.get_title(loc="left") for ax in fig.axes]
        highlighted = [ax.get_title(loc="left") for ax in fig.axes if ax.spines["top"].get_linewidth() == 3]
        if perfect:  # every shown query finds its video first: six green cells, all at rank 1
            assert len(highlighted) == 6 and all(title.startswith("#1 ") for title in highlighted)
            assert not any(title.startswith("true:") for title in titles)
        else:  # the worst queries' videos are not in their top 5: shown at the end of the row
            assert sum(title.startswith("true:") for title in titles) == 3
        path = viz.save_figure(fig, tmp_path / f"grid_{perfect}.png")
        images[perfect] = check_png(path, min_size=(800, 400))
    assert images[True].shape == images[False].shape
    assert np.abs(images[True].astype(int) - images[False]).mean() > 1.0
    assert has_colour(images[True], (44, 160, 44), tolerance=4, min_pixels=200)  # the green frames


def test_query_grid_shows_a_video_that_fails_to_decode_as_its_error():
    sim = torch.eye(6) + 0.01 * torch.arange(6.0)

    def decode(index):
        if index == 0:
            raise RuntimeError("video0.mp4 is truncated")
        return solid_video(PALETTE[index])

    fig = viz.query_grid(sim, [f"q{i}" for i in range(6)], decode, k=2, n_best=2, n_worst=0)
    assert any("video0.mp4 is truncated" in text.get_text() for ax in fig.axes for text in ax.texts)


def test_contact_sheet_shows_names_top_labels_and_errors(tmp_path):
    videos = [solid_video(PALETTE[0], 8), solid_video(PALETTE[2], 8), "cannot decode: empty file"]
    names = ["clips/red.mp4", "clips/blue.mp4", "clips/broken.mp4"]
    labels = [[("red", 0.9), ("blue", 0.07), ("green", 0.03)], [("blue", 0.6), ("red", 0.4)], None]
    fig = viz.contact_sheet(videos, names, labels, columns=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    texts = " ".join(text.get_text() for ax in visible for text in ax.texts)
    assert "90.0%  red" in texts and "60.0%  blue" in texts and "empty file" in texts
    assert [ax.get_title(loc="left") for ax in visible] == names
    image = check_png(viz.save_figure(fig, tmp_path / "sheet.png"))
    assert has_colour(image, PALETTE[0]) and has_colour(image, PALETTE[2])


def test_weights_figure_draws_one_bar_row_per_query(tmp_path):
    frames = np.concatenate([solid_video(colour, 1) for colour in PALETTE])  # (6, 16, 16, 3)
    weights = {"a red frame": torch.softmax(torch.arange(6.0), 0), "uniform": np.full(6, 1 / 6)}
    fig = viz.weights_figure(frames, weights)
    bars = fig.axes[1].patches
    assert len(fig.axes) == 3 and len(bars) == 6
    assert [bar.get_height() for bar in bars] == pytest.approx(weights["a red frame"].tolist())
    image = check_png(viz.save_figure(fig, tmp_path / "weights.png"))
    assert all(has_colour(image, colour) for colour in PALETTE)
    with pytest.raises(ValueError, match="weights of 'short' have 2 values for 6 frames"):
        viz.weights_figure(frames, [("short", [0.5, 0.5])])


def test_a_figure_shows_itself_as_png_in_a_notebook():
    png = viz.frame_grid([solid_video(PALETTE[0])])._repr_png_()
    assert png.startswith(b"\x89PNG")
