"""Re-encoding a dataset for fast loading (``vidclip prepare``): frame rate, size, keyframe interval, codec,
cut and audio, with the FFmpeg that PyAV bundles; the source tree mirrored, a Parquet manifest, resumable; and
packing a dataset into WebDataset tar shards with a Parquet index (``--shards``)."""

from vidclip.prepare.encode import OutputInfo, describe_output, encode_video, read_tag
from vidclip.prepare.manifest import COLUMNS, MANIFEST_NAME, read_manifest
from vidclip.prepare.run import PrepareSummary, prepare_dataset
from vidclip.prepare.settings import CODECS, PRESETS, PrepareSettings
from vidclip.prepare.shards import DEFAULT_SHARD_SIZE, INDEX_COLUMNS, ShardSummary, write_shards
from vidclip.prepare.tree import Job, plan_outputs

__all__ = [
    "CODECS",
    "COLUMNS",
    "DEFAULT_SHARD_SIZE",
    "INDEX_COLUMNS",
    "MANIFEST_NAME",
    "PRESETS",
    "Job",
    "OutputInfo",
    "PrepareSettings",
    "PrepareSummary",
    "ShardSummary",
    "describe_output",
    "encode_video",
    "plan_outputs",
    "prepare_dataset",
    "read_manifest",
    "read_tag",
    "write_shards",
]
