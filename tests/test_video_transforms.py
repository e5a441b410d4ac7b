"""Frame transforms: CLIP's preprocessing on tensors, batched, with per-video (not per-frame) augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

import vidclip


@pytest.fixture(scope="module")
def model():
    return vidclip.create_model("tiny", num_frames=4)


def frames_like_a_video(t=4, h=48, w=80, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)  # smooth-ish
    return torch.from_numpy(np.stack([np.roll(base, 2 * i, axis=1) for i in range(t)]))


def open_clip_reference(frames: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's own eval preprocessing (PIL resize + centre crop + normalise), one frame at a time."""
    import open_clip

    preprocess = open_clip.image_transform(size, is_train=False)
    return torch.stack([preprocess(Image.fromarray(f.numpy())) for f in frames])


def test_eval_transform_matches_open_clip_preprocessing(model):
    frames = frames_like_a_video()
    ours = vidclip.get_video_transform(model, train=False)(frames)
    assert ours.shape == (4, 3, 32, 32) and ours.dtype == torch.float32
    reference = open_clip_reference(frames, 32)
    # PIL and torch antialiased bicubic differ by about a grey level at a few pixels (measured: mean 6e-5, max 0.03).
    assert (ours - reference).abs().mean() < 1e-3
    assert (ours - reference).abs().max() < 0.05


def test_eval_transform_normalises_with_the_model_statistics(model):
    grey = torch.full((2, 40, 40, 3), 128, dtype=torch.uint8)
    out = vidclip.get_video_transform(model)(grey)
    mean = torch.tensor(model.clip.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.clip.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    assert torch.allclose(out, ((128 / 255 - mean) / std).expand_as(out), atol=1e-5)


def test_short_side_is_resized_then_centre_cropped(model):
    # A 32x96 frame whose left and right thirds are black and middle third white: the centre crop keeps white.
    frame = torch.zeros(1, 32, 96, 3, dtype=torch.uint8)
    frame[:, :, 32:64] = 255
    out = vidclip.get_video_transform(model)(frame)
    std = torch.tensor(model.clip.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    mean = torch.tensor(model.clip.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    pixels = out * std + mean
    assert pixels[..., 4:28].min() > 0.95  # the white middle fills the crop (edges feel the bicubic kernel)


def test_batched_input_equals_per_video_calls(model):
    transform = vidclip.get_video_transform(model)
    batch = torch.stack([frames_like_a_video(seed=s) for s in range(3)])  # (B, T, H, W, 3)
    out = transform(batch)
    assert out.shape == (3, 4, 3, 32, 32)
    for b in range(3):
        assert torch.equal(out[b], transform(batch[b]))


def test_training_augmentation_is_shared_by_all_frames_of_a_video(model):
    transform = vidclip.get_video_transform(model, train=True)
    still = frames_like_a_video(t=1).expand(6, -1, -1, -1)  # six identical frames
    out = transform(still, torch.Generator().manual_seed(0))
    assert all(torch.equal(out[0], out[t]) for t in range(1, 6))


def test_training_augmentation_is_seeded_and_varies(model):
    transform = vidclip.get_video_transform(model, train=True)
    frames = frames_like_a_video()
    a = transform(frames, torch.Generator().manual_seed(1))
    assert torch.equal(a, transform(frames, torch.Generator().manual_seed(1)))
    outputs = [transform(frames, torch.Generator().manual_seed(s)) for s in range(8)]
    assert len({o.sum().item() for o in outputs}) > 4  # crops and flips differ between draws
    assert not torch.allclose(a, vidclip.get_video_transform(model, train=False)(frames))


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (torch.zeros(4, 32, 32, 3), "torch.uint8"),
        (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "shape"),
        (np.zeros((4, 32, 32, 3), dtype=np.uint8), "torch.uint8"),
    ],
)
def test_bad_frames_are_rejected_naming_the_argument(model, frames, match):
    with pytest.raises(ValueError, match=match):
        vidclip.get_video_transform(model)(frames)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_transform_runs_on_gpu_tensors_and_matches_cpu(model):
    frames = frames_like_a_video()
    transform = vidclip.get_video_transform(model)
    gpu = transform(frames.cuda())
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), transform(frames), atol=1e-4)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape", [(48, 80), (2, 400), (3, 1001), (700, 20), (64, 64), (37, 91), (1000, 240)])
def test_cropping_before_resizing_equals_resizing_then_cropping(shape, interpolation, monkeypatch):
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from vidclip.video import transforms

    mode = InterpolationMode(interpolation)
    video = torch.randint(
        0, 256, (2, 3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    reference = TF.center_crop(TF.resize(video, [32], interpolation=mode, antialias=True), [32, 32])
    monkeypatch.setattr(transforms, "CROP_FIRST_ABOVE", 0)  # every frame takes the crop-first path
    ours = transforms.resize_centre_crop(video, 32, mode)
    difference = (ours.int() - reference.int()).abs()  # noise: the worst case for bicubic's overshoots
    assert ours.dtype == torch.uint8 and difference.max() <= 2 and difference.float().mean() < 0.2


def test_a_thin_frame_is_cropped_first_and_still_matches_open_clip(model):
    frames = frames_like_a_video(h=16, w=1000)  # resized first it would be 32 x 2000: over 16 crops' worth
    ours = vidclip.get_video_transform(model)(frames)
    reference = open_clip_reference(frames, 32)
    assert (ours - reference).abs().mean() < 1e-3 and (ours - reference).abs().max() < 0.05
