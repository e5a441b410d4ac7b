"""Frame transforms: uint8 frames (T, H, W, 3) -> normalised float (T, 3, S, S), on CPU or GPU tensors.

Evaluation follows CLIP's preprocessing (resize the short side to S with bicubic antialiased interpolation,
centre-crop S x S, scale to [0, 1], normalise with the model's mean and std). Training draws one random
resized crop and one horizontal flip per video and applies them to every frame, so motion stays coherent.
A batch (B, T, H, W, 3) is transformed in one call, each video with its own random crop in training mode.

Memory does not grow with a frame's aspect ratio. Resizing the short side first makes a thin frame huge
(2 x 4096 becomes 224 x 458752, 300 MB a frame, before the crop keeps 224 x 224), so a frame whose resized
size would pass ``CROP_FIRST_ABOVE`` times S x S is resampled only where the crop reads: the same
antialiased filter weights torch uses, for the S output rows and columns kept, applied to the band of source
pixels they touch (:func:`resize_centre_crop`). Other frames take torchvision's resize and crop unchanged.
Training's random resized crop already crops first, so it never made a large intermediate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass
class VideoTransform:
    """Callable: frames uint8 (T, H, W, 3) or (B, T, H, W, 3) -> float (T, 3, S, S) or (B, T, 3, S, S)."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]
    train: bool = False
    scale: tuple[float, float] = (0.5, 1.0)  # random-resized-crop area range (training)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    interpolation: InterpolationMode = InterpolationMode.BICUBIC

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
            got = frames.dtype if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(
                f"frames must be a torch.uint8 tensor (T, H, W, 3) as load_video returns, got {got}"
            )
        if frames.ndim == 5:
            return torch.stack([self(video, generator) for video in frames])
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"frames must have shape (T, H, W, 3) or (B, T, H, W, 3), got {tuple(frames.shape)}"
            )
        video = frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
        if self.train:
            video = self._random_crop_flip(video, generator)
        else:
            video = resize_centre_crop(video, self.size, self.interpolation)
        return self._normalise(video)

    def _random_crop_flip(self, video: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        top, left, height, width = random_resized_crop_box(
            video.shape[-2:], self.scale, self.ratio, generator
        )
        video = TF.resized_crop(
            video,
            top,
            left,
            height,
            width,
            [self.size, self.size],
            interpolation=self.interpolation,
            antialias=True,
        )
        if torch.rand((), generator=generator).item() < self.flip_prob:
            video = video.flip(-1)
        return video

    def _normalise(self, video: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=video.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=video.device).view(1, 3, 1, 1)
        return (video.float() / 255.0 - mean) / std  # (T, 3, S, S)


CROP_FIRST_ABOVE = 16  # resized frames larger than this many S x S (aspect beyond 16:1) are cropped first
_FILTERS = {  # torch's antialiased kernels: (support at scale 1, weight of a distance); bicubic's a = -0.5
    InterpolationMode.BICUBIC: (
        2.0,
        lambda x: torch.where(
            x < 1, (1.5 * x - 2.5) * x * x + 1, torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * -0.5, 0.0)
        ),
    ),
    InterpolationMode.BILINEAR: (1.0, lambda x: (1 - x).clamp(min=0)),
}


def resize_centre_crop(
    video: torch.Tensor, size: int, interpolation: InterpolationMode = InterpolationMode.BICUBIC
) -> torch.Tensor:
    """CLIP's eval geometry: uint8 (T, 3, H, W) -> uint8 (T, 3, S, S), the short side resized to ``size`` with
    antialiasing, then the centre ``size`` x ``size`` kept (torchvision's rounding of sizes and offsets).

    A frame whose resized size would pass ``CROP_FIRST_ABOVE`` x S x S computes only the kept pixels (see the
    module's docstring), in torch's order (horizontal pass rounded to uint8, then vertical): within two grey
    levels of torchvision's result (whose uint8 kernel rounds its weights to fixed point), with memory of the
    source band it reads (about the short side squared), never S times the long side.
    """
    height, width = video.shape[-2:]
    short, long = sorted((height, width))
    resized = (size, int(size * long / short))  # torchvision's rule for the long side
    new_height, new_width = resized if height <= width else resized[::-1]
    if new_height * new_width <= CROP_FIRST_ABOVE * size * size or interpolation not in _FILTERS:
        video = TF.resize(video, [size], interpolation=interpolation, antialias=True)
        return TF.center_crop(video, [size, size])
    top, rows = resize_weights(height, new_height, int(round((new_height - size) / 2.0)), size, interpolation)
    left, cols = resize_weights(width, new_width, int(round((new_width - size) / 2.0)), size, interpolation)
    band = video[..., top : top + rows.shape[1], left : left + cols.shape[1]]  # the source pixels read
    rows, cols = rows.to(video.device, torch.float32), cols.to(video.device, torch.float32)
    # torch's order: the horizontal pass, rounded to uint8 (bicubic overshoots are clipped there), then the vertical
    across = (band.float() @ cols.T).round_().clamp_(0, 255)  # (T, 3, rows read, S)
    return (rows @ across).round_().clamp_(0, 255).to(torch.uint8)  # (T, 3, S, S)


def resize_weights(
    in_size: int, out_size: int, first: int, count: int, interpolation: InterpolationMode
) -> tuple[int, torch.Tensor]:
    """Outputs ``first .. first + count`` of torch's antialiased resize of one axis from ``in_size`` to
    ``out_size`` (align_corners=False) as ``(start, weights)``: float64 (count, n) weights over the inputs
    ``start .. start + n`` they read, each row normalised to 1 as torch does at the borders."""
    support, kernel = _FILTERS[interpolation]
    scale = in_size / out_size
    support, step = support * max(scale, 1.0), 1.0 / max(scale, 1.0)
    centres = scale * (torch.arange(first, first + count, dtype=torch.float64) + 0.5)  # (count,)
    low = (centres - support + 0.5).long().clamp(min=0)  # torch truncates to int64 the same way
    high = (centres + support + 0.5).long().clamp(max=in_size)
    start, stop = int(low.min()), int(high.max())
    inputs = torch.arange(start, stop, dtype=torch.float64)  # (n,)
    weights = kernel(((inputs[None] - centres[:, None] + 0.5) * step).abs())  # (count, n)
    weights = weights * ((inputs[None] >= low[:, None]) & (inputs[None] < high[:, None]))
    return start, weights / weights.sum(1, keepdim=True)


def random_resized_crop_box(
    image_size: Sequence[int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, height, width), drawn from ``generator``."""
    height, width = int(image_size[0]), int(image_size[1])
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item())
        aspect = math.exp(
            log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand((), generator=generator).item()
        )
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    # Fallback: the largest centred crop within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def get_video_transform(model, train: bool = False) -> VideoTransform:
    """The transform matching ``model``'s image size and normalisation (a VideoCLIP or an open_clip model)."""
    clip = getattr(model, "clip", model)
    cfg = getattr(clip.visual, "preprocess_cfg", {})
    size = cfg.get("size", clip.visual.image_size)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(
        cfg.get("mean", getattr(clip.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    )
    std = tuple(
        cfg.get("std", getattr(clip.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
    )
    return VideoTransform(size=size, mean=mean, std=std, train=train)
