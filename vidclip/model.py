"""``VideoCLIP``: an open_clip model plus a temporal head, and ``create_model`` to build one.

Shapes used throughout: B videos, T frames, N texts, D embedding width, S image size.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidclip.heads import InstalledModule, TemporalHead, VideoLayout, create_head

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_configs_registered = False


def register_model_configs() -> None:
    """Add vidclip's own open_clip configs (``tiny``) to open_clip's registry, once, on first use."""
    global _configs_registered
    if not _configs_registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _configs_registered = True


@dataclass
class VideoFeatures:
    """What ``encode_video`` returns and ``similarity`` accepts.

    frames: (B, T, D) per-frame CLIP features, unnormalised; mask: (B, T) bool, True = real frame;
    pooled: (B, D) L2-normalised video embedding for text-independent heads, else None.
    """

    frames: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> VideoFeatures:
        pooled = None if self.pooled is None else self.pooled[index]
        return VideoFeatures(self.frames[index], self.mask[index], pooled)

    def to(self, device: str | torch.device) -> VideoFeatures:
        pooled = None if self.pooled is None else self.pooled.to(device)
        return VideoFeatures(self.frames.to(device), self.mask.to(device), pooled)

    @staticmethod
    def cat(parts: list[VideoFeatures]) -> VideoFeatures:
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return VideoFeatures(torch.cat([p.frames for p in parts]), torch.cat([p.mask for p in parts]), pooled)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a VideoCLIP (saved inside every checkpoint)."""

    model_name: str
    pretrained: str | None = None
    head: str = "mean"
    num_frames: int = 12
    head_options: dict[str, Any] = field(default_factory=dict)
    freeze_backbone: bool | None = None
    quick_gelu: bool | None = None  # filled in at build time from what the pretrained tag implies
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    # The open_clip config (embed_dim, vision_cfg, text_cfg, ...) of a model no open_clip name describes, e.g.
    # a converted HF CLIP; build_model registers it under model_name.
    model_cfg: dict[str, Any] | None = None


class VideoCLIP(nn.Module):
    """An open_clip CLIP whose image tower sees videos, and a temporal head that pools or scores its frames."""

    def __init__(self, clip: nn.Module, head: TemporalHead, spec: ModelSpec):
        super().__init__()
        self.clip = clip
        self.head = head
        self.spec = spec
        self.num_frames = spec.num_frames
        head.attach(clip, num_frames=spec.num_frames)
        freeze = head.parameter_efficient if spec.freeze_backbone is None else spec.freeze_backbone
        self.set_backbone_frozen(freeze)

    # -- towers ----------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    def encode_video(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> VideoFeatures:
        """video: float (B, T, 3, S, S) or one video (T, 3, S, S); mask: bool (B, T), True = real frame."""
        video, mask = self._check_video(video, mask)
        batch, frames = video.shape[:2]
        layout = VideoLayout(batch_size=batch, num_frames=frames, mask=mask)
        with self.head.video_context(layout):
            features = self.clip.encode_image(rearrange(video, "b t c h w -> (b t) c h w"))  # (B*T, D)
        features = rearrange(features, "(b t) d -> b t d", b=batch)  # (B, T, D)
        pooled = None if self.head.text_conditioned else self.head.pool(features, mask)
        return VideoFeatures(features, mask, pooled)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """tokens: int (N, L) from ``get_tokenizer`` -> text features (N, D)."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int32, torch.int64):
            got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor (N, L) from vidclip.get_tokenizer, got {got}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (N, L), got {tuple(tokens.shape)}")
        return self.clip.encode_text(tokens, normalize=normalize)

    def similarity(self, text: torch.Tensor, video: VideoFeatures, chunk_size: int = 1024) -> torch.Tensor:
        """Cosine similarities (N_text, N_video) between text features (N, D) and ``encode_video``'s output.

        Text-conditioned heads score in blocks of ``chunk_size`` texts so memory stays bounded; they get the
        text L2-normalised unless they declare ``raw_text`` (X-Pool normalises its own way).
        """
        if not isinstance(video, VideoFeatures):
            raise ValueError(
                f"video must be the VideoFeatures returned by encode_video, got {type(video).__name__}"
            )
        if text.ndim != 2 or text.shape[1] != video.frames.shape[-1]:
            raise ValueError(f"text must have shape (N, {video.frames.shape[-1]}), got {tuple(text.shape)}")
        if not self.head.text_conditioned:
            return F.normalize(text, dim=-1) @ video.pooled.to(text.dtype).T
        if not self.head.raw_text:
            text = F.normalize(text, dim=-1)
        rows = [self.head.score(part, video.frames, video.mask) for part in text.split(chunk_size)]
        return torch.cat(rows)

    def forward(
        self, video: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, VideoFeatures]:
        """Encode both sides: (text features (N, D), VideoFeatures). Losses live outside the model."""
        return self.encode_text(tokens), self.encode_video(video, mask)

    # -- parameters ------------------------------------------------------------------------------------------
    def new_modules(self) -> list[nn.Module]:
        """The head and every module it installed in the towers: what is not CLIP's pretrained weights."""
        installed = [m for m in self.clip.modules() if isinstance(m, InstalledModule)]
        return [self.head, *installed]

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable named parameters split into ``backbone`` (CLIP's own) and ``new`` (head, adapters, prompts)."""
        new_ids = {id(p) for module in self.new_modules() for p in module.parameters()}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"backbone": [], "new": []}
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups["new" if id(param) in new_ids else "backbone"].append((name, param))
        return groups

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) all of CLIP; the head and its installed modules always stay trainable."""
        self.clip.requires_grad_(not frozen)
        for module in self.new_modules():
            module.requires_grad_(True)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- validation ------------------------------------------------------------------------------------------
    def _check_video(
        self, video: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(video, torch.Tensor):
            raise ValueError(f"video must be a torch.Tensor, got {type(video).__name__}")
        if not video.is_floating_point():
            raise ValueError(
                f"video must be a float tensor from get_video_transform, got {video.dtype} "
                "(raw uint8 frames need the transform first)"
            )
        if video.ndim == 4:
            video = video[None]
            mask = None if mask is None else mask.reshape(1, -1)
        size = self.image_size
        if video.ndim != 5 or video.shape[2] != 3 or tuple(video.shape[3:]) != (size, size):
            raise ValueError(
                f"video must have shape (B, T, 3, {size}, {size}) or (T, 3, {size}, {size}), got {tuple(video.shape)}"
            )
        batch, frames = video.shape[:2]
        if mask is None:
            return video, torch.ones(batch, frames, dtype=torch.bool, device=video.device)
        if not isinstance(mask, torch.Tensor) or mask.shape != (batch, frames):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a bool tensor of shape ({batch}, {frames}), got {shape}")
        return video, mask.to(device=video.device, dtype=torch.bool)


def create_model(
    model_name: str = "ViT-B-32",
    pretrained: str | None = None,
    head: str = "mean",
    num_frames: int = 12,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    freeze_backbone: bool | None = None,
    **head_options: Any,
) -> VideoCLIP:
    """Build a VideoCLIP from any open_clip model name and pretrained tag (or local weights file).

    ``create_model("tiny")`` gives the tiny random model shipped with vidclip. ``freeze_backbone`` defaults to
    the head's choice (True for prompt/adapter heads). Extra keyword arguments are the head's options.
    """
    if pretrained and os.path.sep in pretrained and not os.path.exists(pretrained):
        raise FileNotFoundError(f"pretrained weights file not found: {pretrained}")
    spec = ModelSpec(model_name, pretrained, head, num_frames, dict(head_options), freeze_backbone)
    return build_model(spec, load_pretrained=True, device=device, precision=precision)


def build_model(
    spec: ModelSpec, *, load_pretrained: bool, device: str | torch.device = "cpu", precision: str = "fp32"
) -> VideoCLIP:
    """Build the model ``spec`` describes; without ``load_pretrained`` the weights are left for a checkpoint."""
    import open_clip

    register_model_configs()
    if spec.model_cfg is not None:
        _register_spec_config(spec.model_name, spec.model_cfg)
    if spec.model_name not in open_clip.list_models() and not spec.model_name.startswith(
        ("hf-hub:", "local-dir:")
    ):
        raise ValueError(
            f"unknown open_clip model {spec.model_name!r}; see open_clip.list_models() (vidclip adds 'tiny')"
        )
    if not isinstance(spec.num_frames, int) or spec.num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {spec.num_frames!r}")
    head = create_head(spec.head, **spec.head_options)  # fail on a bad head before loading weights
    pretrained = spec.pretrained if load_pretrained else None
    if (
        pretrained
        and not os.path.exists(pretrained)
        and not spec.model_name.startswith(("hf-hub:", "local-dir:"))
    ):
        tags = open_clip.list_pretrained_tags_by_model(spec.model_name)
        if pretrained not in tags:
            raise ValueError(
                f"model {spec.model_name!r} has no pretrained tag {pretrained!r}; its tags: {tags or 'none'} "
                "(or pass a local weights file, or pretrained=None for random weights)"
            )
    if spec.quick_gelu is None:
        spec.quick_gelu = _tag_uses_quick_gelu(spec.model_name, spec.pretrained)
    try:
        with _quiet_random_init(pretrained):
            clip = open_clip.create_model(
                spec.model_name,
                pretrained=pretrained or None,
                precision=precision,
                device=device,
                force_quick_gelu=bool(spec.quick_gelu),
                force_preprocess_cfg=spec.preprocess_cfg or None,
            )
    except (
        RuntimeError,
        OSError,
    ) as err:  # open_clip 3 wraps download failures in RuntimeError, 2.x does not
        if pretrained and any(
            word in str(err).lower() for word in ("download", "connect", "resolve", "offline", "cache")
        ):
            raise WeightsDownloadError(_download_advice(spec.model_name, pretrained)) from err
        raise
    # Record what the pretrained tag implied, so a checkpoint rebuilds the same network without downloading.
    spec.quick_gelu = any(type(m).__name__ == "QuickGELU" for m in clip.modules())
    spec.preprocess_cfg = _plain(getattr(clip.visual, "preprocess_cfg", {}))
    return VideoCLIP(clip, head, spec).to(device)


def _register_spec_config(model_name: str, model_cfg: dict[str, Any]) -> None:
    """Add a spec's own open_clip config to open_clip's registry (``get_tokenizer`` reads it there too)."""
    from open_clip import factory

    known = factory.get_model_config(model_name)
    if known is not None and known != model_cfg:
        raise ValueError(f"model_cfg of {model_name!r} differs from the open_clip config of that name")
    factory._MODEL_CONFIGS[model_name] = copy.deepcopy(model_cfg)  # open_clip has no public dict-config API


class WeightsDownloadError(RuntimeError):
    """Pretrained weights that had to be downloaded could not be (offline, or the hub unreachable)."""


def _download_advice(model_name: str, pretrained: str) -> str:
    """What failed and the two ways out: download once online, or point at a local weights file."""
    offline = (
        " (HF_HUB_OFFLINE=1 is set)"
        if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        else ""
    )
    return (
        f"could not download the pretrained weights {pretrained!r} of model {model_name!r}: no network or hub "
        f"access{offline}. Run once where the hub is reachable (open_clip caches the weights for later offline "
        "runs), or pass a local weights file: --pretrained /path/to/weights.bin on the command line, "
        "pretrained='/path/to/weights.bin' in create_model or model.pretrained in a config"
    )


@contextlib.contextmanager
def _quiet_random_init(pretrained: str | None) -> Iterator[None]:
    """Drop open_clip's root-logger warning "No pretrained weights loaded" when no weights were asked for."""

    def keep(record: logging.LogRecord) -> bool:
        return pretrained is not None or "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()  # open_clip logs with logging.warning(...), i.e. on the root logger
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _tag_uses_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """open_clip 3 only warns when a QuickGELU-trained tag (OpenAI's among them) meets a GELU config; we obey it."""
    import open_clip

    if not pretrained or os.path.exists(pretrained):
        return False
    return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))


def _plain(cfg: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in cfg.items()}


def get_tokenizer(model_name: str = "ViT-B-32", context_length: int | None = None):
    """open_clip's tokenizer for ``model_name``: list of strings -> int tokens (N, context_length)."""
    import open_clip

    register_model_configs()
    return open_clip.get_tokenizer(model_name, context_length=context_length)
