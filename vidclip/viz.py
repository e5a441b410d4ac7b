"""Figures of videos and retrieval results: frame strips, recall@K curves, best/worst queries, contact sheets.

matplotlib is optional (``pip install "vidclip[viz]"``) and imported only when a function here is called, so
``import vidclip`` never loads it. Figures are built as :class:`matplotlib.figure.Figure` objects, never through
``pyplot``: no global state, no display needed, so they render headless (Agg) in scripts, tests and CI. A figure
returned here shows itself as a PNG in a notebook cell; :func:`save_figure` writes it to disk.

Frames everywhere are uint8 ``(T, H, W, 3)``, a torch tensor or a numpy array (what :func:`vidclip.load_video`
returns). The ranking convention is :func:`vidclip.retrieval_metrics`': text i belongs to video i, or to video
``text_to_video[i]`` when several captions share a video.
"""

from __future__ import annotations

import functools
import io
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # only for type hints: importing vidclip.viz must not import matplotlib
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Frames = torch.Tensor | np.ndarray  # uint8 (T, H, W, 3)
VideoOrError = Frames | str | BaseException  # a string or exception: why the video could not be decoded
HIGHLIGHT = "#2ca02c"  # the true video's frame in query_grid
ERROR_COLOUR = "#d62728"
DPI = 100
GAP = 2  # white pixels between the frames of a strip


# -- matplotlib, lazily -------------------------------------------------------------------------------------
@functools.cache
def _figure_class() -> type:
    """A matplotlib Figure that renders itself as a PNG in notebooks; ImportError without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('vidclip.viz needs matplotlib: pip install "vidclip[viz]"') from err

    class VizFigure(Figure):
        def _repr_png_(self) -> bytes:  # notebooks show the figure without pyplot or %matplotlib
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=DPI)
            return buffer.getvalue()

    return VizFigure


def require_matplotlib() -> None:
    """Fail now, with the pip command, when matplotlib is missing: before hours of work, not after."""
    _figure_class()


def require_plotting(option: str) -> None:
    """Refuse ``option`` at once (ValueError) when matplotlib is missing, rather than after the whole run."""
    try:
        require_matplotlib()
    except ImportError:
        raise ValueError(
            f'{option} draws with matplotlib, which is not installed: pip install "vidclip[viz]"'
        ) from None


def _new_figure(width: float, height: float) -> Figure:
    """A blank figure of ``width`` x ``height`` inches (Agg canvas, no pyplot)."""
    return _figure_class()(figsize=(width, height), dpi=DPI)


# -- frames -------------------------------------------------------------------------------------------------
def as_frames(frames: Frames, name: str = "frames") -> np.ndarray:
    """``frames`` as a numpy uint8 (T, H, W, 3) array; a single (H, W, 3) frame becomes T = 1."""
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 frames (T, H, W, 3), got shape {tuple(array.shape)}")
    if array.ndim == 3:
        array = array[None]
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (T, H, W, 3) frames, got dtype {array.dtype}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    return array


def strip_image(frames: Frames, max_frames: int | None = None, gap: int = GAP) -> np.ndarray:
    """The frames side by side as one (H, T*W + gaps, 3) image, white between frames; ``max_frames`` keeps
    that many, evenly spread."""
    array = as_frames(frames)
    if max_frames is not None and len(array) > max_frames:
        array = array[np.linspace(0, len(array) - 1, max_frames).round().astype(int)]
    count, height, width, _ = array.shape
    image = np.full((height, count * width + (count - 1) * gap, 3), 255, dtype=np.uint8)
    for i, frame in enumerate(array):
        start = i * (width + gap)
        image[:, start : start + width] = frame
    return image


def frame_strip(
    frames: Frames, ax: Axes | None = None, title: str | None = None, *, max_frames: int | None = None
) -> Axes:
    """Draw the frames (T, H, W, 3) side by side in one axes (a new figure's when ``ax`` is None); returns it."""
    image = strip_image(frames, max_frames)
    if ax is None:
        height, width = image.shape[:2]
        inches = min(12.0, max(3.0, width / 40))  # about 40 px of frames per inch, within 3-12 inches
        ax = _new_figure(inches, inches * height / width + 0.4).add_subplot()
    ax.imshow(image, interpolation="nearest")
    _clear(ax)
    if title:
        ax.set_title(title, loc="left", fontsize=9)
    return ax


def _clear(ax: Axes) -> None:
    """No ticks, no frame: the axes is a picture."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _error_cell(ax: Axes, error: str | BaseException) -> None:
    """A cell that says why its video could not be shown."""
    _clear(ax)
    message = textwrap.fill(f"could not decode: {error}", 80)
    ax.text(0.0, 0.5, message, color=ERROR_COLOUR, fontsize=8, va="center", transform=ax.transAxes)


def _video_cell(ax: Axes, video: VideoOrError, title: str | None, caption: str | None, **strip: Any) -> None:
    """One video in one axes: its frame strip (or its error), a title above and a caption below."""
    if isinstance(video, (str, BaseException)):
        _error_cell(ax, video)
        if title:
            ax.set_title(title, loc="left", fontsize=9)
    else:
        frame_strip(video, ax, title, **strip)
    if caption:
        ax.text(0.0, -0.04, caption, fontsize=8, va="top", family="monospace", transform=ax.transAxes)


def _strip_aspect(videos: Sequence[VideoOrError], max_frames: int | None = None) -> float:
    """Height / width of the first drawable video's strip (1/4 when none is drawable)."""
    for video in videos:
        if not isinstance(video, (str, BaseException)):
            height, width = strip_image(video, max_frames).shape[:2]
            return height / width
    return 0.25


def frame_grid(
    videos: Sequence[VideoOrError],
    titles: Sequence[str] | None = None,
    captions: Sequence[str] | None = None,
    *,
    width: float = 10.0,
    max_frames: int | None = None,
) -> Figure:
    """One row per video (T, H, W, 3) with its title above and caption below; a string or exception in place of
    a video is drawn as that error."""
    videos = list(videos)
    titles = _per_video(titles, len(videos), "titles")
    captions = _per_video(captions, len(videos), "captions")
    if not videos:
        raise ValueError("videos is empty: nothing to draw")
    text_lines = max((caption.count("\n") + 1 if caption else 0) for caption in captions)
    row = width * _strip_aspect(videos, max_frames) + 0.35 + 0.16 * text_lines  # inches per row
    fig = _new_figure(width, row * len(videos))
    axes = fig.subplots(len(videos), 1, squeeze=False)[:, 0]
    for ax, video, title, caption in zip(axes, videos, titles, captions, strict=True):
        _video_cell(ax, video, title, caption, max_frames=max_frames)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.3 / fig.get_figheight(), bottom=0.02, hspace=0.5)
    return fig


def _per_video(values: Sequence[str] | None, count: int, name: str) -> list[str | None]:
    """``values`` as a list of ``count`` (Nones when not given); a wrong length names the argument."""
    if values is None:
        return [None] * count
    values = list(values)
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} videos")
    return values


def contact_sheet(
    videos: Sequence[VideoOrError],
    names: Sequence[str],
    top_labels: Sequence[Sequence[tuple[str, float]] | None],
    *,
    columns: int = 2,
    max_frames: int | None = 8,
) -> Figure:
    """Per video its frame strip, its name and its top-3 (label, score) pairs, ``columns`` videos per row; an
    undecodable video (a string or exception in ``videos``) shows its error instead of frames."""
    videos, names = list(videos), list(names)
    labels = _per_video(top_labels, len(videos), "top_labels")
    if len(names) != len(videos):
        raise ValueError(f"names has {len(names)} entries for {len(videos)} videos")
    if not videos:
        raise ValueError("videos is empty: nothing to draw")
    columns = max(1, min(columns, len(videos)))
    rows = -(-len(videos) // columns)
    cell_width = 6.0
    strip_height = cell_width * _strip_aspect(videos, max_frames)
    cell_height = strip_height + 1.0  # the strip, then an inch for the name above and three label lines below
    fig = _new_figure(cell_width * columns, cell_height * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= len(videos):
            ax.set_visible(False)
            continue
        caption = "\n".join(f"{score:6.1%}  {label}" for label, score in list(labels[i] or [])[:3])
        _video_cell(ax, videos[i], _shorten(names[i], 70), caption, max_frames=max_frames)
    top, bottom = 1 - 0.3 / fig.get_figheight(), 0.6 / fig.get_figheight()
    fig.subplots_adjust(left=0.02, right=0.98, top=top, bottom=bottom, hspace=1.0 / strip_height, wspace=0.05)
    return fig


def _shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, keeping its end (the file name of a long path)."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]


# -- retrieval ----------------------------------------------------------------------------------------------
def retrieval_ranks(
    similarity: torch.Tensor, text_to_video: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks (t2v (N_text,), v2t (N_video,)) exactly as :func:`vidclip.retrieval_metrics` counts them."""
    from vidclip.metrics import retrieval_ranks as ranks

    t2v, v2t = ranks(similarity, text_to_video)
    return t2v.numpy(), v2t.numpy()


def recall_at_k_figure(
    similarity: torch.Tensor,
    ks: Sequence[int] | None = None,
    *,
    text_to_video: torch.Tensor | None = None,
    title: str | None = None,
) -> Figure:
    """Text->video and video->text recall@K curves of an (N_text, N_video) similarity matrix, R@1/5/10 marked,
    chance as a dashed line; ``ks``: the K axis (default 1..N_video)."""
    from matplotlib.ticker import MaxNLocator

    from vidclip.metrics import retrieval_metrics

    metrics = retrieval_metrics(similarity, text_to_video)  # validates the matrix; gives the marked values
    t2v, v2t = retrieval_ranks(similarity, text_to_video)
    num_texts, num_videos = torch.as_tensor(similarity).shape
    ks = np.arange(1, num_videos + 1) if ks is None else np.asarray(sorted(set(ks)))
    if ks.size == 0 or ks.min() < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    marked = [k for k in (1, 5, 10) if k <= num_videos]
    for name, ranks, colour in (("t2v", t2v, "C0"), ("v2t", v2t, "C1")):
        values = [metrics[f"{name}/R@{k}"] for k in marked]
        summary = "  ".join(f"R@{k} {value:.1f}" for k, value in zip(marked, values, strict=True))
        ax.plot(ks, [100.0 * np.mean(ranks <= k) for k in ks], color=colour, label=f"{name}  {summary}")
        ax.scatter(marked, values, color=colour, zorder=3)
    ax.plot(ks, 100.0 * np.minimum(ks / num_videos, 1.0), "--", color="grey", label="chance")
    if ks.max() > 20:
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="K", ylabel="recall@K (%)", ylim=(0, 102))
    ax.set_title(f"{title + ': ' if title else ''}{num_texts} queries, {num_videos} videos", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def ranked_queries(t2v_ranks: np.ndarray, n_best: int, n_worst: int) -> tuple[list[int], list[int]]:
    """Indices of the ``n_best`` best-ranked and ``n_worst`` worst-ranked queries (by their true video's
    rank, ties by index); no query is in both lists."""
    order = np.argsort(t2v_ranks, kind="stable")
    best = order[: min(n_best, len(order))].tolist()
    rest = [int(i) for i in order[::-1] if int(i) not in best]
    return [int(i) for i in best], rest[: max(0, n_worst)]


def query_grid(
    similarity: torch.Tensor,
    queries: Sequence[str],
    videos: Sequence[Frames] | Callable[[int], Frames],
    k: int = 5,
    n_best: int = 3,
    n_worst: int = 3,
    *,
    text_to_video: torch.Tensor | None = None,
    video_names: Sequence[str] | None = None,
    max_frames: int = 4,
) -> Figure:
    """The best and worst ranked queries, one row each: the query, its top-``k`` videos as frame strips (the
    true video framed in green), and the true video at the end when it is not among them.

    ``videos``: frames per video index, or a callable index -> frames so only the videos shown are decoded
    (it may raise; that cell then shows the error).
    """
    sim = torch.as_tensor(similarity).detach().float().cpu()
    if sim.ndim != 2 or len(queries) != sim.shape[0]:
        raise ValueError(f"queries has {len(queries)} entries for a similarity of shape {tuple(sim.shape)}")
    target = torch.arange(sim.shape[0]) if text_to_video is None else torch.as_tensor(text_to_video).long()
    t2v, _ = retrieval_ranks(sim, target)
    best, worst = ranked_queries(t2v, n_best, n_worst)
    k = min(k, sim.shape[1])
    rows = [("best", i) for i in best] + [("worst", i) for i in worst]
    if not rows:
        raise ValueError("n_best and n_worst are both 0: no query to show")
    fetch = _frames_getter(videos)
    fig = _new_figure(3.0 + 2.2 * (k + 1), 1.25 * len(rows) + 0.4)
    grid = fig.add_gridspec(len(rows), k + 2, width_ratios=[1.4] + [1.0] * (k + 1), wspace=0.08, hspace=0.6)
    for row, (group, query) in enumerate(rows):
        true_video, rank = int(target[query]), int(t2v[query])
        top = sim[query].topk(k).indices.tolist()
        _query_text(fig.add_subplot(grid[row, 0]), group, queries[query], rank)
        shown = [(v, f"#{r + 1}  {sim[query, v]:.3f}") for r, v in enumerate(top)]
        if true_video not in top:
            shown.append((true_video, f"true: #{rank}  {sim[query, true_video]:.3f}"))
        for column, (video, label) in enumerate(shown, start=1):
            name = f"{label}\n{_shorten(video_names[video], 28)}" if video_names else label
            _ranked_cell(
                fig.add_subplot(grid[row, column]), fetch(video), name, video == true_video, max_frames
            )
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.25 / fig.get_figheight(), bottom=0.02)
    return fig


def _frames_getter(videos: Sequence[Frames] | Callable[[int], Frames]) -> Callable[[int], VideoOrError]:
    """index -> frames, decoding each video at most once; a failure becomes the exception, shown in its cell."""
    get = videos if callable(videos) else videos.__getitem__

    @functools.cache
    def fetch(index: int) -> VideoOrError:
        try:
            return get(index)
        except Exception as err:  # one video that cannot be shown must not cost the figure
            return err

    return fetch


def _query_text(ax: Axes, group: str, query: str, rank: int) -> None:
    """The text cell of a query_grid row: best/worst, the query wrapped, the true video's rank."""
    _clear(ax)
    colour = HIGHLIGHT if group == "best" else ERROR_COLOUR
    ax.text(
        0,
        1,
        f"{group} · rank {rank}",
        color=colour,
        fontsize=8,
        fontweight="bold",
        va="top",
        transform=ax.transAxes,
    )
    ax.text(0, 0.75, textwrap.fill(query, 32), fontsize=8, va="top", transform=ax.transAxes)


def _ranked_cell(ax: Axes, video: VideoOrError, label: str, is_true: bool, max_frames: int) -> None:
    """One retrieved video: its strip (or error), its rank and score; the true video gets a green frame."""
    if isinstance(video, (str, BaseException)):
        _error_cell(ax, video)
    else:
        frame_strip(video, ax, max_frames=max_frames)
    ax.set_title(label, fontsize=7, loc="left", color=HIGHLIGHT if is_true else "black")
    if is_true:
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color(HIGHLIGHT)
            spine.set_linewidth(3)


# -- frame weights ------------------------------------------------------------------------------------------
def weights_figure(
    frames: Frames,
    weights_by_query: Mapping[str, Sequence[float] | torch.Tensor] | Sequence[tuple[str, Sequence[float]]],
) -> Figure:
    """The frames (T, H, W, 3) in a row, and under them one bar row per query of its per-frame weights (T,),
    e.g. ``query_scored``'s softmax weights: which frames each query looks at."""
    array = as_frames(frames)
    items = list(weights_by_query.items() if isinstance(weights_by_query, Mapping) else weights_by_query)
    if not items:
        raise ValueError("weights_by_query is empty: give at least one query's frame weights")
    count, height, width, _ = array.shape
    weights = [(query, _weights(values, count, query)) for query, values in items]
    aspect = height / width
    fig_width = max(6.0, 1.3 * count)
    strip_height = 0.9 * fig_width / count * aspect  # frames keep their aspect ratio
    fig = _new_figure(fig_width, strip_height + 1.1 * len(weights) + 0.6)
    grid = fig.add_gridspec(1 + len(weights), 1, height_ratios=[strip_height] + [0.8] * len(weights))
    top = fig.add_subplot(grid[0])
    for i, frame in enumerate(array):  # frame i spans [i, i + 1) so bar i sits under it
        top.imshow(frame, extent=(i + 0.03, i + 0.97, 0, aspect), interpolation="nearest")
    top.set(xlim=(0, count), ylim=(0, aspect), aspect="auto")
    _clear(top)
    top.tick_params(labelbottom=False)
    high = max(float(values.max()) for _, values in weights)
    for row, (query, values) in enumerate(weights, start=1):
        ax = fig.add_subplot(grid[row], sharex=top)
        ax.bar(np.arange(count) + 0.5, values, width=0.8, color=f"C{row - 1}")
        ax.set_ylim(0, high * 1.1 if high > 0 else 1)
        ax.set_title(textwrap.shorten(query, 90), loc="left", fontsize=9)
        ax.tick_params(labelbottom=False, labelsize=7)
        ax.set_xticks(np.arange(count) + 0.5)
    fig.axes[-1].tick_params(labelbottom=True)
    fig.axes[-1].set_xticklabels([str(i) for i in range(count)])
    fig.axes[-1].set_xlabel("frame")
    fig.tight_layout()
    return fig


def _weights(values: Sequence[float] | torch.Tensor, count: int, query: str) -> np.ndarray:
    """One query's weights as a float (T,) array; a wrong length names the query."""
    array = torch.as_tensor(values).detach().float().cpu().numpy().reshape(-1)
    if array.shape != (count,):
        raise ValueError(f"weights of {query!r} have {array.size} values for {count} frames")
    return array


# -- files --------------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: str | Path, *, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path
