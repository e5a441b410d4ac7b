"""Temporal heads: importing this package registers every built-in head (one module each)."""

from vidclip.heads import (
    mean,  # noqa: F401  (registers "mean")
    query_scored,  # noqa: F401  (registers "query_scored")
    seq_lstm,  # noqa: F401  (registers "seq_lstm")
    seq_transformer,  # noqa: F401  (registers "seq_transformer")
    ted_adapter,  # noqa: F401  (registers "ted_adapter")
    vop,  # noqa: F401  (registers "vop")
    x_pool,  # noqa: F401  (registers "x_pool")
)
from vidclip.heads.base import (
    HEADS,
    InstalledModule,
    TemporalHead,
    VideoLayout,
    create_head,
    list_heads,
    register_head,
)

__all__ = [
    "HEADS",
    "InstalledModule",
    "TemporalHead",
    "VideoLayout",
    "create_head",
    "list_heads",
    "register_head",
]
