"""``VideoIndex``: search an index folder by text, by embedding or by a video; add videos to it.

The FAISS index finds candidates; every returned score is then the exact cosine from the stored vectors (an
approximate index ranks, it never reports a rounded score). ``moments=True`` merges neighbouring windows of
a video into moments (:mod:`vidclip.index.moments`); ``rerank`` rescores the candidates on their frame
features (:mod:`vidclip.index.rerank`). The model that built the index is rebuilt on the first text or video
query, and refuses to run if its weights are not the ones the index was built with.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vidclip.index.moments import find_moments
from vidclip.index.rerank import DEFAULT_WEIGHT, rerank_scores
from vidclip.index.rows import ROWS, read_part
from vidclip.index.store import (
    FAISS_FILE,
    FRAMES_FILE,
    INDEX_FILE,
    IndexFolderError,
    IndexMeta,
    inconsistency,
    open_vectors,
    read_meta,
)

MAX_QUERY_CHARS = 1000  # CLIP reads 77 tokens (~300 characters); a longer text is a mistake, not a query
COLUMNS = ["rank", "video", "start", "end", "score", "row"]
MOMENT_CANDIDATES = 100  # windows fetched per moment asked for, whose videos are then scored in full


def check_query(text: Any) -> str:
    """A text query, stripped; ValueError for one that is empty, not text, or too long."""
    if not isinstance(text, str):
        raise ValueError(f"a query must be text, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise ValueError("the query is empty: type what to look for, e.g. 'a dog catches a frisbee'")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(
            f"the query is {len(text)} characters long; at most {MAX_QUERY_CHARS} (the model reads 77 tokens)"
        )
    return text


class VideoIndex:
    """An index folder made by ``vidclip index``: ``len(index)`` vectors of videos or their windows."""

    def __init__(self, folder: Path, meta: IndexMeta, device: Any = None) -> None:
        self.folder, self.meta, self.device = folder, meta, device
        self._load_rows()
        self.ann = None
        if meta.ntotal:
            from vidclip.index.ann import AnnIndex, AnnSpec

            self.ann = AnnIndex.load(
                folder / FAISS_FILE, AnnSpec.from_json(meta.ann), expected_sha256=meta.faiss_sha256
            )
        self.vectors = open_vectors(folder, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: Any = None) -> VideoIndex:
        """Open the index at ``path``; IndexFolderError (a ValueError) naming the file for a folder that is
        missing, not an index, half-written or corrupted."""
        folder = Path(path)
        if not folder.is_dir():
            raise IndexFolderError(
                f"{folder}: no such index folder (make one with vidclip index VIDEOS --out {folder})"
            )
        meta = read_meta(folder)
        if meta is None:
            raise IndexFolderError(
                f"{folder / INDEX_FILE} is missing: not an index, or its first build did not finish "
                f"(run the same vidclip index command again to finish it)"
            )
        from vidclip.index.ann import AnnFileError

        reason = inconsistency(folder, meta, checksum=False)  # the FAISS file's is checked as it loads
        if reason is not None:
            raise IndexFolderError(f"{folder}: {reason}; run the vidclip index command again to repair it")
        try:
            return cls(folder, meta, device)
        except AnnFileError as err:
            raise IndexFolderError(f"{err}; run the vidclip index command again to repair it") from err

    def _load_rows(self) -> None:
        """The (video, start, end) of every vector, in id order, and each video's contiguous row range."""
        videos, starts, ends = [], [], []
        for name, _ in self.meta.parts:
            table = read_part(self.folder / ROWS / name, ["video", "start", "end"])
            videos += table.column("video").to_pylist()
            starts.append(table.column("start").to_numpy())
            ends.append(table.column("end").to_numpy())
        self.row_video = np.asarray(videos, dtype=object)
        self.starts = np.concatenate(starts) if starts else np.zeros(0)
        self.ends = np.concatenate(ends) if ends else np.zeros(0)
        self.videos: list[str] = list(dict.fromkeys(videos))
        self._video_ids = {video: i for i, video in enumerate(self.videos)}
        first: dict[str, int] = {}
        for row, video in enumerate(videos):
            first.setdefault(video, row)
        counts = {video: 0 for video in first}
        for video in videos:
            counts[video] += 1
        self._ranges = {video: (first[video], first[video] + counts[video]) for video in first}

    def __len__(self) -> int:
        return self.meta.ntotal

    def __repr__(self) -> str:
        kind = (self.meta.ann or {}).get("kind", "empty")
        what = f"windows of {self.meta.segment:g} s" if self.meta.segment else "whole videos"
        return f"VideoIndex({str(self.folder)!r}: {len(self)} vectors of {len(self.videos)} videos, {what}, {kind})"

    # -- the videos ------------------------------------------------------------------------------------------
    def video_id(self, video: str) -> int:
        return self._video_ids[video]

    def video_file(self, video_id: int) -> Path:
        """The file of indexed video ``video_id`` (a position in :attr:`videos`), resolved against the folder
        the index was built from."""
        if not isinstance(video_id, (int, np.integer)) or not 0 <= video_id < len(self.videos):
            raise IndexError(f"no video {video_id!r} in this index (0..{len(self.videos) - 1})")
        return Path(self.meta.root, self.videos[video_id])

    # -- the model -------------------------------------------------------------------------------------------
    @cached_property
    def model(self):
        """The index's model, rebuilt from ``index.json``; refuses weights that changed since the build."""
        from vidclip.index.build import check_same_model, index_identity, load_source_model

        model, weights = load_source_model(self.meta.model, self.device, self.folder)
        check_same_model(
            self.folder, self.meta.identity, index_identity(model, weights, self.meta.identity["precision"])
        )
        return model

    def encode_text(self, text: str) -> np.ndarray:
        """The unit query vector (D,) of ``text``."""
        from vidclip.inference.pipeline import caption_tokenizer, encode_texts

        text = check_query(text)
        features = encode_texts(
            self.model,
            [text],
            caption_tokenizer(self.model),
            device=self.device,
            precision=self.meta.identity["precision"],
        )
        return _unit(features[0].cpu().numpy())

    def encode_video(self, path: str | os.PathLike) -> np.ndarray:
        """The unit vector (D,) of a whole video, as the index embeds videos."""
        from vidclip.inference.pipeline import iter_encoded

        (batch,) = list(
            iter_encoded(
                self.model,
                [os.fspath(path)],
                num_workers=0,
                device=self.device,
                precision=self.meta.identity["precision"],
            )
        )
        if not bool(batch.valid[0]):
            raise ValueError(f"{path}: {batch.errors[0][1] if batch.errors else 'could not be decoded'}")
        return _unit(batch.features.pooled[0].cpu().numpy())

    # -- search ----------------------------------------------------------------------------------------------
    def search(
        self,
        text: str,
        k: int = 10,
        moments: bool = False,
        rerank: bool | str = False,
        rerank_weight: float = DEFAULT_WEIGHT,
    ):
        """The ``k`` best rows (or moments) for ``text``: a DataFrame with columns rank, video, start, end,
        score, row. ``rerank``: True or ``"max_frame"`` (CLIPRerank), or ``"query_scored"``."""
        return self.search_embedding(
            self.encode_text(text), k, moments=moments, rerank=rerank, rerank_weight=rerank_weight
        )

    def search_like(self, path: str | os.PathLike, k: int = 10, moments: bool = False):
        """The ``k`` rows (or moments) most like the video at ``path`` (near duplicates, more like this)."""
        return self.search_embedding(self.encode_video(path), k, moments=moments)

    def search_embedding(
        self,
        query: Any,
        k: int = 10,
        moments: bool = False,
        rerank: bool | str = False,
        rerank_weight: float = DEFAULT_WEIGHT,
    ):
        """Search with a query vector (D,) or (1, D) made by this index's model."""
        import pandas as pd

        query = self._check_vector(query)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        mode = _rerank_mode(rerank, self.meta.frames is not None, self.folder)
        if len(self) == 0:
            return pd.DataFrame({c: [] for c in COLUMNS})
        fetch = min(len(self), k * MOMENT_CANDIDATES if moments else max(k, 50) if mode else k)
        _, ids = self.ann.search(query[None], fetch, vectors=self.vectors)  # IVF-PQ: refined on the vectors
        ids = ids[0][ids[0] >= 0]
        if moments:
            return self._moments(ids, query, k, mode, rerank_weight)
        scores = self._scores(ids, query, mode, rerank_weight)
        order = np.argsort(-scores, kind="stable")[:k]
        return self._table(ids[order], scores[order], self.starts[ids[order]], self.ends[ids[order]])

    def _scores(self, ids: np.ndarray, query: np.ndarray, mode: str | None, weight: float) -> np.ndarray:
        scores = np.asarray(self.vectors[ids]) @ query  # exact cosines, whatever the index's approximation
        if mode:
            frames = open_vectors(self.folder, self.meta, FRAMES_FILE)
            scores = rerank_scores(scores, np.asarray(frames[ids]), query, mode, weight)
        return scores

    def _moments(self, ids: np.ndarray, query: np.ndarray, k: int, mode: str | None, weight: float):
        found = []
        for video in dict.fromkeys(self.row_video[ids]):  # the candidates' videos, best first
            first, stop = self._ranges[video]
            rows = np.arange(first, stop)
            found += find_moments(
                rows, self.starts[rows], self.ends[rows], self._scores(rows, query, mode, weight)
            )
        found.sort(key=lambda m: -m.score)
        found = found[:k]
        return self._table(
            np.array([m.best for m in found], dtype=np.int64),
            np.array([m.score for m in found]),
            np.array([m.start for m in found]),
            np.array([m.end for m in found]),
        )

    def _table(self, rows: np.ndarray, scores: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        import pandas as pd

        return pd.DataFrame(
            {
                "rank": np.arange(1, len(rows) + 1),
                "video": list(self.row_video[rows]),
                "start": np.asarray(starts, dtype=float),
                "end": np.asarray(ends, dtype=float),
                "score": np.asarray(scores, dtype=float),
                "row": rows.astype(np.int64),
            },
            columns=COLUMNS,
        )

    def _check_vector(self, query: Any) -> np.ndarray:
        array = np.asarray(query.detach().cpu() if hasattr(query, "detach") else query, dtype=np.float32)
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 1 or array.shape[0] != self.meta.dim:
            raise ValueError(
                f"the query vector has shape {tuple(np.shape(query))}; this index's model makes ({self.meta.dim},) "
                "vectors: a query from another model cannot be compared with them"
            )
        if not np.isfinite(array).all() or not np.linalg.norm(array) > 0:
            raise ValueError("the query vector is zero or not finite")
        return _unit(array)

    # -- adding ----------------------------------------------------------------------------------------------
    def add(self, videos: list[str | os.PathLike], **options: Any) -> Any:
        """Embed ``videos`` with the index's model and settings and add them (those already in are skipped);
        ``options`` are :class:`~vidclip.inference.pipeline.EncodeOptions` fields. Returns the build summary."""
        from vidclip.index.build import IndexSettings, build_index, source_weights
        from vidclip.inference.pipeline import EncodeOptions

        meta = self.meta
        settings = IndexSettings(meta.segment, meta.stride, meta.frames is not None)
        encode = EncodeOptions.of(None, precision=meta.identity["precision"], device=self.device, **options)
        model = self.model  # checked against the index's identity
        weights = source_weights(meta.model, self.folder)
        summary = build_index(
            self.folder,
            [os.fspath(v) for v in videos],
            model,
            source=meta.model,
            weights=weights,
            options=encode,
            settings=settings,
        )
        fresh = VideoIndex.load(self.folder, device=self.device)
        model = self.__dict__.get("model")
        self.__dict__.update(fresh.__dict__)
        if model is not None:
            self.__dict__["model"] = model
        return summary


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _rerank_mode(rerank: bool | str, has_frames: bool, folder: Path) -> str | None:
    if rerank is False or rerank is None:
        return None
    mode = "max_frame" if rerank is True else rerank
    if not has_frames:
        raise ValueError(
            f"{folder} was built without --frame-features: there are no frame features to rerank on"
        )
    return mode
