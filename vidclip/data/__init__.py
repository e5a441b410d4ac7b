"""Datasets: annotation readers by format (registry), and torch datasets that decode in DataLoader workers.

Importing this package registers the built-in formats. A new format registers its reader with
``@register_format("name")`` (see :mod:`vidclip.data.base`).
"""

from vidclip.data import csv, didemo, msrvtt, recognition, webdataset  # noqa: F401  (register the built-in formats)
from vidclip.data.base import (
    FORMATS,
    AnnotationError,
    AnnotationReader,
    Annotations,
    ClassificationAnnotations,
    RetrievalAnnotations,
    VideoRecord,
    get_reader,
    list_formats,
    read_annotations,
    register_format,
)
from vidclip.data.dataset import (
    EpochSampler,
    TextDataset,
    VideoDataset,
    collate,
    create_caption_tokenizer,
    seeded_generator,
)

__all__ = [
    "FORMATS",
    "AnnotationError",
    "AnnotationReader",
    "Annotations",
    "ClassificationAnnotations",
    "EpochSampler",
    "RetrievalAnnotations",
    "TextDataset",
    "VideoDataset",
    "VideoRecord",
    "collate",
    "create_caption_tokenizer",
    "get_reader",
    "list_formats",
    "read_annotations",
    "register_format",
    "seeded_generator",
]
