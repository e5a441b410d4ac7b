"""Search: an index folder of video and window embeddings with a FAISS index (``vidclip index``), searched by
text, embedding or video (``VideoIndex``, ``vidclip search``) and from a web page (``vidclip serve``)."""

from vidclip.index.build import BuildSummary, IndexSettings, build_index
from vidclip.index.moments import Moment, find_moments, temporal_iou
from vidclip.index.store import IndexFolderError
from vidclip.index.video_index import MAX_QUERY_CHARS, VideoIndex, check_query

__all__ = [
    "MAX_QUERY_CHARS",
    "BuildSummary",
    "IndexFolderError",
    "IndexSettings",
    "Moment",
    "VideoIndex",
    "build_index",
    "check_query",
    "find_moments",
    "temporal_iou",
]
