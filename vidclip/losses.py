"""Training losses over the GLOBAL batch; they own the cross-process gathers (the model never does).

Retrieval: symmetric InfoNCE, (CE(S) + CE(Sᵀ)) / 2 with S = scale · similarity(texts, videos) over the
batch of all processes. Each process computes only its own rows ("local loss", open_clip's shape): its texts
against every video, and its videos against every text. Features come from the other processes through
:func:`gather_with_grad`, whose backward sums the gradients of every process's copy into the owner's
features.

Why N processes give exactly one process's gradient: let the single-process loss be
L = (1/V) Σ_i ℓ_i over the V valid pairs of the global batch. Process r returns
L_r = (N/V) Σ_{i in r} ℓ_i. Its backward gives every parameter the gradient of Σ_r' (N/V) Σ_{i in r'} ℓ_i
that flows through *its* features (the gather's backward collects the other processes' terms), plus the
direct gradient of L_r for parameters used outside the towers (logit scale, a text-conditioned head).
Summed over processes that is N · ∂L/∂θ; DDP averages over the N processes, leaving ∂L/∂θ.
(CLIP4Clip's AllGather returns only the local slice of the gradient, which leaves 1/N of it.)

Text-conditioned heads score text against frames, so the gather carries the frame features and masks
(``VideoFeatures``), not a pooled vector. Invalid slots (videos that failed to decode) are masked out as
rows and as columns.

Classification: cross-entropy of scale · similarity(video, class embeddings), the class embeddings being the
prompt-template ensemble of each class name (normalise each template's embedding, average, renormalise; the
ViFi-CLIP / ActionCLIP recipe).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vidclip.model import VideoFeatures

Similarity = Callable[[torch.Tensor, VideoFeatures], torch.Tensor]  # text (N, D) x video (B) -> (N, B)


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward gives each process the SUM over processes of the gradients of its slice
    (every process's loss used the gathered copy), i.e. a reduce-scatter, done as all_reduce + slice so it
    runs on every backend (gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rows = slice(rank * tensor.shape[0], (rank + 1) * tensor.shape[0])
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # (N·b, ...): every process's gradient for every slice
        return grad[ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (b, ...) from every process into (N·b, ...); gradients flow back to each owner.
    Every process must pass the same shape."""
    if world()[1] == 1:
        return tensor
    return _GatherWithGrad.apply(tensor.contiguous())


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (b, ...) from every process, without gradient (bool travels as uint8)."""
    if world()[1] == 1:
        return tensor
    wire = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
    parts = [torch.empty_like(wire) for _ in range(world()[1])]
    dist.all_gather(parts, wire)
    return torch.cat(parts).to(tensor.dtype)


def gather_video(video: VideoFeatures) -> VideoFeatures:
    """Every process's VideoFeatures, in rank order. Frames carry gradient only where no pooled embedding
    does (text-conditioned heads); features travel as float32."""
    pooled = None if video.pooled is None else gather_with_grad(video.pooled.float())
    frames = video.frames.float()
    frames = gather_with_grad(frames) if pooled is None else gather_no_grad(frames.detach())
    return VideoFeatures(frames, gather_no_grad(video.mask), pooled)


def _sum_valid_ce(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """Σ over valid rows of CE(logits (b, M), targets), invalid columns excluded from the softmax."""
    logits = logits.masked_fill(~columns[None, :], torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits[rows], targets[rows], reduction="sum")


def contrastive_loss(
    similarity: Similarity,
    text: torch.Tensor,
    video: VideoFeatures,
    logit_scale: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch; text i and video i of each process form a pair.

    text: (b, D) this process's caption features; video: its VideoFeatures (b videos); logit_scale: the
    multiplier (already exp'd); valid: bool (b,), False for pairs whose video failed to decode.
    Returns this process's share L_r (see the module docstring): the mean over processes is the global loss.
    """
    rank, size = world()
    local = text.shape[0]
    valid = torch.ones(local, dtype=torch.bool, device=text.device) if valid is None else valid.bool()
    text = text.float()
    all_valid = gather_no_grad(valid)  # (B,)
    # this process's pairs sit at rows rank*b ... rank*b + b - 1 of the global batch (Accelerate's split order)
    targets = torch.arange(local, device=text.device) + rank * local
    t2v = similarity(text, gather_video(video))  # (b, B): local texts against every video
    v2t = t2v.T if size == 1 else similarity(gather_with_grad(text), video).T  # (b, B): local videos vs texts
    total = _sum_valid_ce(logit_scale * t2v.float(), targets, valid, all_valid)
    total = total + _sum_valid_ce(logit_scale * v2t.float(), targets, valid, all_valid)
    num_valid = all_valid.sum().clamp_min(1)
    return total / 2 * size / num_valid


def class_embeddings(text: torch.Tensor, num_templates: int) -> torch.Tensor:
    """Prompt ensemble: text features (C·K, D) of C classes x K templates, class-major -> (C, D) unit vectors.

    Each template's embedding is normalised, the K are averaged, and the mean is renormalised (CLIP's
    zero-shot recipe), so no template dominates through its norm.
    """
    if text.ndim != 2 or text.shape[0] % num_templates:
        raise ValueError(f"text must be (classes x {num_templates} templates, D), got {tuple(text.shape)}")
    per_template = F.normalize(text.float(), dim=-1).view(-1, num_templates, text.shape[-1])  # (C, K, D)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def classification_loss(
    similarity: Similarity,
    classes: torch.Tensor,
    video: VideoFeatures,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each video against the class embeddings (C, D); labels: int (b,).

    Returns this process's share (N/V) Σ_local CE, V being the valid videos of the global batch, so DDP's
    average of gradients equals the gradient of the global mean, even when processes lost different numbers
    of videos to decoding errors.
    """
    _, size = world()
    valid = torch.ones(len(labels), dtype=torch.bool, device=labels.device) if valid is None else valid.bool()
    logits = logit_scale * similarity(classes, video).T.float()  # (b, C)
    total = F.cross_entropy(logits[valid], labels[valid], reduction="sum")
    num_valid = valid.sum()
    if size > 1:
        num_valid = num_valid.clone()
        dist.all_reduce(num_valid)
    return total * size / num_valid.clamp_min(1)
