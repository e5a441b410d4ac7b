"""Inference shared by every command that runs a model: the one video-encoding pipeline (decode in workers or
on the GPU, time limit, failure policy, precision, compile), retrieval and zero-shot scoring, and the Parquet
parts embeddings are stored in."""

from vidclip.inference.pipeline import (
    EncodedBatch,
    EncodedVideos,
    EncodeOptions,
    caption_tokenizer,
    create_video_loader,
    encode_texts,
    encode_videos,
    iter_encoded,
    report_failures,
)
from vidclip.inference.runtime import autocast, check_precision, compile_image_tower, resolve_device

__all__ = [
    "EncodeOptions",
    "EncodedBatch",
    "EncodedVideos",
    "autocast",
    "caption_tokenizer",
    "check_precision",
    "compile_image_tower",
    "create_video_loader",
    "encode_texts",
    "encode_videos",
    "iter_encoded",
    "report_failures",
    "resolve_device",
]
