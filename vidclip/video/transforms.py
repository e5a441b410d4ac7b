"""Frame transforms: uint8 frames (T, H, W, 3) -> normalised float (T, 3, S, S), on CPU or GPU tensors.

Evaluation follows CLIP's preprocessing (resize the short side to S with bicubic antialiased interpolation,
centre-crop S x S, scale to [0, 1], normalise with the model's mean and std). Training draws one random
resized crop and one horizontal flip per video and applies them to every frame, so motion stays coherent.
A batch (B, T, H, W, 3) is transformed in one call, each video with its own random crop in training mode.
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
            video = TF.resize(video, [self.size], interpolation=self.interpolation, antialias=True)
            video = TF.center_crop(video, [self.size, self.size])
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
