"""Validation during training, on every process (a rank-0-only evaluation would leave the others waiting in
the next collective).

Each process encodes its share of the videos (and captions); ``gather_for_metrics`` assembles all of them,
dropping the samples Accelerate repeated to even out the last batch, and every process computes the same
metrics. Videos that cannot be decoded (or time out) follow the failure policy of every command: they are
dropped with their captions and counted, so validation scores a split exactly as ``vidclip eval`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vidclip.fileio import reporting_full_disk
from vidclip.inference.retrieval import keep_decoded
from vidclip.losses import class_embeddings
from vidclip.metrics import retrieval_metrics
from vidclip.model import VideoFeatures

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from vidclip.train.state import Run


def gather(accelerator, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``gather_for_metrics`` of a dict of tensors; bool travels as uint8 (not every backend gathers bool)."""
    wire = {
        key: value.to(torch.uint8) if value.dtype == torch.bool else value for key, value in values.items()
    }
    out = accelerator.gather_for_metrics(wire)
    return {key: out[key].bool() if values[key].dtype == torch.bool else out[key] for key in values}


def embed_videos(run: Run, loader: DataLoader) -> tuple[VideoFeatures, dict[str, torch.Tensor]]:
    """Every video of ``loader``: gathered VideoFeatures, and the fields ``valid`` (V,) and ``label`` (V,)."""
    from vidclip.data.shard_stream import streams_by_itself

    if streams_by_itself(loader):
        return _embed_streamed(run, loader)
    parts = []
    for batch in loader:
        features = run.net.encode_video(batch["video"], batch["mask"])
        values = {"frames": features.frames.float(), "mask": batch["mask"], "valid": batch["valid"]}
        if features.pooled is not None:
            values["pooled"] = features.pooled.float()
        if "label" in batch:
            values["label"] = batch["label"]
        parts.append(gather(run.accelerator, values))
    merged = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return VideoFeatures(merged["frames"], merged["mask"], merged.get("pooled")), merged


def _embed_streamed(run: Run, loader: DataLoader) -> tuple[VideoFeatures, dict[str, torch.Tensor]]:
    """:func:`embed_videos` for a shard stream: each process encodes the videos of its own shards, in
    whatever order its workers deliver them; all are gathered (processes hold different counts) and put in
    input order by their index, so every video counts once whatever the number of processes."""
    device, parts = run.accelerator.device, []
    for batch in loader:
        video, mask = batch["video"].to(device), batch["mask"].to(device)
        features = run.net.encode_video(video, mask)
        values = {"index": batch["index"].to(device), "frames": features.frames.float(), "mask": mask}
        values["valid"] = batch["valid"].to(device)
        if features.pooled is not None:
            values["pooled"] = features.pooled.float()
        if "label" in batch:
            values["label"] = batch["label"].to(device)
        parts.append(values)
    local = {key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else None
    local = local if local is not None else _no_videos(run, loader, device)
    merged = gather_ragged(run.accelerator, local)
    order = torch.argsort(merged.pop("index"))
    merged = {key: value[order] for key, value in merged.items()}
    return VideoFeatures(merged["frames"], merged["mask"], merged.get("pooled")), merged


def _no_videos(run: Run, loader: DataLoader, device: torch.device) -> dict[str, torch.Tensor]:
    """Empty fields of the right widths for a process whose share of the shards held no video."""
    frames, dim = run.config.model.num_frames, run.net.clip.visual.output_dim
    values = {
        "index": torch.zeros(0, dtype=torch.long, device=device),
        "frames": torch.zeros(0, frames, dim, device=device),
        "mask": torch.zeros(0, frames, dtype=torch.bool, device=device),
        "valid": torch.zeros(0, dtype=torch.bool, device=device),
    }
    if not run.net.head.text_conditioned:
        values["pooled"] = torch.zeros(0, dim, device=device)
    if loader.dataset.videos.labels is not None:
        values["label"] = torch.zeros(0, dtype=torch.long, device=device)
    return values


def gather_ragged(accelerator, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every process's rows of ``values`` (the same keys, any number of rows each), concatenated in rank order."""
    if accelerator.num_processes == 1:
        return dict(values)
    count = next(iter(values.values())).shape[0]
    counts = accelerator.gather(torch.tensor([count], device=accelerator.device)).tolist()
    most = max(counts)
    out = {}
    for key, value in values.items():
        wire = value.to(torch.uint8) if value.dtype == torch.bool else value
        padded = torch.cat([wire, wire.new_zeros(most - count, *wire.shape[1:])])
        rows = accelerator.gather(padded).reshape(len(counts), most, *wire.shape[1:])
        joined = torch.cat([rows[rank, :n] for rank, n in enumerate(counts)])
        out[key] = joined.bool() if value.dtype == torch.bool else joined
    return out


def embed_texts(run: Run, loader: DataLoader) -> torch.Tensor:
    """Every caption of ``loader``: gathered text features (N_text, D)."""
    return torch.cat(
        [run.accelerator.gather_for_metrics(run.net.encode_text(b["tokens"]).float()) for b in loader]
    )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits: (V, C) -> top-1 and top-5 accuracy in percent over the V videos."""
    metrics = {}
    for k in (1, 5):
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (V, k)
        metrics[f"top{k}"] = 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item()
    return metrics


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """``val/``-prefixed metrics: retrieval R@1/5/10, MdR, MnR both ways, or classification top-1/top-5, over
    the videos that decoded (failed ones dropped with their captions, as ``vidclip eval`` drops them)."""
    run.model.eval()
    with run.accelerator.autocast():
        video, fields = embed_videos(run, run.val.videos)
        valid = fields["valid"]
        _warn_failed(valid)
        if run.class_tokens is None:
            keep, text_to_video = keep_decoded(run.val.text_to_video, valid)
            text = embed_texts(run, run.val.texts)[keep.to(valid.device)]
            sim = run.net.similarity(text, video[valid]).float()  # (N_kept, V_decoded)
            metrics = retrieval_metrics(sim, text_to_video)
        else:
            if not bool(valid.any()):
                raise ValueError(f"none of the {len(valid)} validation videos could be decoded")
            classes = class_embeddings(run.net.encode_text(run.class_tokens), len(run.config.data.templates))
            logits = run.net.similarity(classes, video[valid]).T.float()  # (V_decoded, C)
            metrics = accuracy(logits, fields["label"][valid])
    run.model.train()
    run.evaluated_step = run.state.step
    return {f"val/{key}": value for key, value in metrics.items()}


def _warn_failed(valid: torch.Tensor) -> None:
    failed = int((~valid).sum())
    if failed:
        from accelerate.logging import get_logger

        get_logger(__name__).warning(
            f"validation: {failed} of {len(valid)} videos could not be decoded and were dropped (with their "
            "captions), as vidclip eval drops them"
        )


def log_metrics(run: Run, metrics: dict[str, float], echo: bool = True) -> None:
    """To the trackers, to ``metrics.jsonl`` (one JSON line per call) and, with ``echo``, to the log."""
    from accelerate.logging import get_logger

    step = run.state.step
    run.accelerator.log(metrics, step=step)
    if echo:
        get_logger(__name__).info(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    if run.accelerator.is_main_process:
        path = Path(run.config.output_dir) / "metrics.jsonl"
        with reporting_full_disk(path), open(path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
