"""Record CLIP4Clip's own similarities on seeded random ViT-B/32 weights, for ``tests/test_convert.py``.

    git -C /path/to/CLIP4Clip archive HEAD | tar -x -C /tmp/clip4clip       # ArrowLuo/CLIP4Clip, any checkout
    python tools/make_clip4clip_parity_fixture.py /tmp/clip4clip [--out tests/fixtures/clip4clip_parity.pt]

CLIP4Clip's modules are imported from the checkout (none of its code is copied into vidclip). For each of its
``sim_header``s meanP, seqTransf and seqLSTM the tool builds its ``CLIP4Clip`` model, loads one state dict made
from a seed by ``random_state_dict`` (so the fixture stores key names, shapes and dtypes, not 600 MB of weights),
runs CLIP4Clip's evaluation path (``get_sequence_output``, ``get_visual_output``, ``get_similarity_logits``, as
its ``eval_epoch`` does) on seeded inputs and saves what came out.

CLIP4Clip keeps CLIP's linear weights in fp16 (``convert_weights``) and its checkpoints store them so; the state
dict here has those tensors in fp16 too, but both sides compute in fp32 (CPU), so the comparison measures
formulas, not half-precision rounding.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
import zlib
from pathlib import Path

import torch

SEED = 0
SIM_HEADERS = ("meanP", "seqTransf", "seqLSTM")
NUM_VIDEOS, NUM_FRAMES, IMAGE_SIZE, MAX_WORDS = 3, 4, 224, 32
VIDEO_MASK = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]  # real frames first, as CLIP4Clip's loaders pad
CAPTION_LENGTHS = (5, 12, 30)  # BPE tokens between start and end of text
START_OF_TEXT, END_OF_TEXT = 49406, 49407
VIT_B_32 = dict(  # OpenAI CLIP ViT-B/32, in module_clip.CLIP's argument order
    embed_dim=512,
    image_resolution=224,
    vision_layers=12,
    vision_width=768,
    vision_patch_size=32,
    context_length=77,
    vocab_size=49408,
    transformer_width=512,
    transformer_heads=8,
    transformer_layers=12,
)


# -- the seeded weights (also imported by tests/test_convert.py) -----------------------------------------------
def random_state_dict(shapes: dict[str, tuple[list[int], str]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """key -> (shape, dtype name) to a state dict of random tensors, each drawn from its own seeded generator.

    Scales keep activations in CLIP's range (unit-variance residual streams, attention logits of order 1, no
    saturated softmax) so similarities are informative: weights N(0, 1/fan_in), LayerNorm gains 1 + N(0, 0.1),
    biases N(0, 0.02), embeddings as CLIP initialises them, logit scale log(1/0.07).
    """
    state = {}
    for key, (shape, dtype) in sorted(shapes.items()):
        generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(key.encode()))
        tensor = torch.randn(shape, generator=generator) * _std(key, shape) + _mean(key)
        state[key] = tensor.to(getattr(torch, dtype))
    if "clip.logit_scale" in state:
        state["clip.logit_scale"].fill_(math.log(1 / 0.07))
    return state


def _std(key: str, shape: list[int]) -> float:
    if key == "frame_position_embeddings.weight":
        return 0.5  # big enough that a lost or misplaced position table shows in the similarities
    if key in ("clip.visual.class_embedding", "clip.visual.positional_embedding"):
        return shape[-1] ** -0.5  # CLIP's init
    if key in ("clip.token_embedding.weight", "clip.positional_embedding"):
        return 0.02 if "token" in key else 0.01  # CLIP's init
    if _is_layer_norm(key) and key.endswith(".weight"):
        return 0.1
    if len(shape) <= 1:
        return 0.02  # biases (and the logit scale, set afterwards)
    if key in ("clip.visual.proj", "clip.text_projection"):
        return shape[0] ** -0.5  # stored (in, out): features @ proj
    return math.prod(shape[1:]) ** -0.5  # (out, in, ...) weights: Linear, conv, attention, LSTM


def _mean(key: str) -> float:
    return 1.0 if _is_layer_norm(key) and key.endswith(".weight") else 0.0


def _is_layer_norm(key: str) -> bool:
    return key.split(".")[-2].startswith("ln_")


# -- CLIP4Clip, imported from its checkout ---------------------------------------------------------------------
def import_clip4clip(checkout: Path) -> types.SimpleNamespace:
    """CLIP4Clip's modules, importable without its download helpers' dependencies (boto3, requests)."""
    _stub_if_missing("boto3")
    _stub_if_missing("botocore")
    _stub_if_missing("botocore.exceptions", ClientError=type("ClientError", (Exception,), {}))
    _stub_if_missing("requests")
    sys.path.insert(0, str(checkout))
    from modules import modeling, module_clip, module_cross

    return types.SimpleNamespace(modeling=modeling, module_clip=module_clip, module_cross=module_cross)


def _stub_if_missing(name: str, **attributes) -> None:
    try:
        __import__(name)
    except ImportError:
        sys.modules[name] = types.ModuleType(name)
        vars(sys.modules[name]).update(attributes)


def build_clip4clip(c4c: types.SimpleNamespace, sim_header: str) -> torch.nn.Module:
    """CLIP4Clip's model as its main_task_retrieval builds it for MSR-VTT (loose type, 4 temporal layers)."""
    task_config = types.SimpleNamespace(
        local_rank=0,
        max_words=MAX_WORDS,
        max_frames=NUM_FRAMES,
        loose_type=True,
        linear_patch="2d",
        sim_header=sim_header,
        cross_num_hidden_layers=4,
        pretrained_clip_name="ViT-B/32",
    )
    cross_config, _ = c4c.module_cross.CrossConfig.get_config(
        "cross-base", None, 2, None, task_config=task_config
    )
    template = c4c.module_clip.CLIP(
        *VIT_B_32.values()
    )  # its constructor reads CLIP's shapes off a state dict
    return c4c.modeling.CLIP4Clip(cross_config, template.state_dict(), task_config)


def make_inputs(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded inputs: videos (B, T, 3, 224, 224) (padded frames hold noise too), masks, caption token ids."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(NUM_VIDEOS, NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    tokens = torch.zeros(len(CAPTION_LENGTHS), MAX_WORDS, dtype=torch.long)
    for row, length in enumerate(CAPTION_LENGTHS):
        words = torch.randint(1, START_OF_TEXT, (length,), generator=generator)
        tokens[row, : length + 2] = torch.cat(
            [torch.tensor([START_OF_TEXT]), words, torch.tensor([END_OF_TEXT])]
        )
    return {"video": video, "video_mask": torch.tensor(VIDEO_MASK, dtype=torch.bool), "tokens": tokens}


@torch.no_grad()
def run_clip4clip(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP4Clip's eval path on (B, 1, T, 1, 3, H, W) videos and (N, 1, L) captions, as its dataloaders shape them."""
    tokens = inputs["tokens"][:, None]  # (N, 1, L)
    attention_mask, segment_ids = (tokens > 0).long(), torch.zeros_like(tokens)
    video = inputs["video"][:, None, :, None]  # (B, 1, T, 1, 3, H, W)
    video_mask = inputs["video_mask"].long()[:, None]  # (B, 1, T)
    text = model.get_sequence_output(tokens, segment_ids, attention_mask)  # (N, 1, D)
    frames = model.get_visual_output(video, video_mask)  # (B, T, D)
    logits, _ = model.get_similarity_logits(
        text, frames, attention_mask, video_mask, loose_type=model.loose_type
    )
    scale = model.clip.logit_scale.exp()
    outputs = {
        "similarity": logits / scale,
        "logits": logits,
        "text_features": text[:, 0],
        "frame_features": frames,
    }
    return {name: value.clone() for name, value in outputs.items()}  # views would save their whole storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkout", type=Path, help="a CLIP4Clip source tree (ArrowLuo/CLIP4Clip)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parents[1] / "tests/fixtures/clip4clip_parity.pt"
    )
    args = parser.parse_args(argv)
    c4c = import_clip4clip(args.checkout)
    # CLIP4Clip's constructors draw their own random init (overwritten below); seeded for a reproducible run
    torch.manual_seed(SEED)
    models = {header: build_clip4clip(c4c, header) for header in SIM_HEADERS}
    shapes = {
        k: (list(v.shape), str(v.dtype).removeprefix("torch."))
        for m in models.values()
        for k, v in m.state_dict().items()
    }
    state = random_state_dict(shapes)
    inputs = make_inputs()
    fixture = {
        "seed": SEED,
        "shapes": shapes,
        "tokens": inputs["tokens"],
        "video_mask": inputs["video_mask"],
        "models": {},
    }
    for header, model in models.items():
        model.float().eval()  # fp32 compute; the fp16-stored weights load exactly into fp32 parameters
        model.load_state_dict({key: state[key] for key in model.state_dict()}, strict=True)
        outputs = run_clip4clip(model, inputs)
        fixture["models"][header] = {"keys": sorted(model.state_dict()), **outputs}
        print(f"{header}: similarity\n{outputs['similarity']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
