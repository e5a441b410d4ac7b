"""Record M2-CLIP's own video and text features on seeded random weights, for ``tests/test_convert_m2clip.py``.

    git -C /path/to/m2clip archive HEAD | tar -x -C /tmp/m2clip          # sallymmx/m2clip, any checkout
    pip install --target /tmp/m2deps --no-deps transformers               # its models_adapter imports BERT
    PYTHONPATH=/tmp/m2deps python tools/make_m2clip_parity_fixture.py /tmp/m2clip

M2-CLIP's modules are imported from the checkout (none of its code is copied into vidclip). Its ``CLIP``
constructor takes every size, so the tool builds it as ``clip_vit_base_patch16_multimodal_adapter12x384`` does
but small (ViT 2 x 64 wide on 32 px, text 13 x 64 wide: its ``Transformer.forward`` runs blocks ``i < 12``, so
13 text blocks keep the 13th idle as in the real model), loads a backbone drawn from a seed by
``random_state_dict`` and random "trained" adapters, applies its trainable rule (names with ``adapter``) and
saves the adapters with its own ``utils.save_model``. It writes, under ``tests/fixtures/``:

- ``m2clip_parity.pth``: the checkpoint exactly as M2-CLIP's saver wrote it (adapters only);
- ``m2clip_parity.pt``: the seed and shapes that regenerate the backbone, the inputs, M2-CLIP's outputs
  (``encode_image``'s adapted frame features and video features, ``encode_text``'s features, fp32 on CPU),
  what it checked about its text blocks, and the keys and trainable count of a real ViT-B/16 12x384 checkpoint
  (its constructor run on the meta device);
- ``m2clip_parity.json``: the open_clip config of the same small CLIP, for vidclip's side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import types
import zlib
from pathlib import Path

import torch

SEED = 0
NUM_VIDEOS, NUM_FRAMES, IMAGE_SIZE, CONTEXT = 2, 4, 32, 77
CAPTION_LENGTHS = (5, 12, 30)  # BPE tokens between start and end of text
START_OF_TEXT, END_OF_TEXT = 49406, 49407
ADAPTER_SCALE = 0.5  # "trained" adapters: well off their init, small enough to keep activations in range
SMALL = dict(  # M2-CLIP's CLIP arguments: multimodal_adapter12x384's, shrunk
    embed_dim=64,
    image_resolution=IMAGE_SIZE,
    vision_layers=2,
    vision_width=64,  # M2-CLIP uses width // 64 heads: 1
    vision_patch_size=8,
    vision_adapter_width=32,
    vision_adapter_layers=2,
    vision_adapter_kernel_size=(3, 1, 1),
    vision_adapter_pre_attn=False,
    vision_adapter_pre_mlp=True,
    context_length=CONTEXT,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=2,
    transformer_layers=13,
    text_adapter_width=32,
    text_adapter_layers=2,
    text_adapter_kernel_size=(3, 1, 1),
    text_adapter_pre_attn=False,
    text_adapter_pre_mlp=True,
    num_classes=5,
    num_frames=NUM_FRAMES,
    mlm_head_len=10,
)
VIT_B16_12X384 = dict(  # clip_vit_base_patch16_multimodal_adapter12x384's arguments, Kinetics-400 as its main
    SMALL,
    embed_dim=512,
    image_resolution=224,
    vision_layers=12,
    vision_width=768,
    vision_patch_size=16,
    vision_adapter_width=384,
    vision_adapter_layers=12,
    transformer_width=512,
    transformer_heads=8,
    text_adapter_width=384,
    num_classes=400,
    num_frames=8,
)
OPEN_CLIP_CONFIG = {  # the same small CLIP as an open_clip config (the text tower: CLIP's 12 blocks)
    "embed_dim": SMALL["embed_dim"],
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 12},
}


# -- the seeded weights (also imported by tests/test_convert_m2clip.py) -----------------------------------------
def random_state_dict(shapes: dict[str, list[int]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """key -> shape to a state dict of fp32 random tensors, each drawn from its own seeded generator.

    CLIP-like scales (as tools/make_clip4clip_parity_fixture.py): weights N(0, 1/fan_in), LayerNorm gains
    1 + N(0, 0.1), biases N(0, 0.02), embeddings as CLIP initialises them, logit scale log(1/0.07); adapter
    parameters get the same rule times ``ADAPTER_SCALE``.
    """
    state = {}
    for key, shape in sorted(shapes.items()):
        generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(key.encode()))
        scale = ADAPTER_SCALE if "adapter" in key else 1.0
        state[key] = torch.randn(shape, generator=generator) * _std(key, shape) * scale + _mean(key)
    if "logit_scale" in state:
        state["logit_scale"].fill_(math.log(1 / 0.07))
    return state


def _std(key: str, shape: list[int]) -> float:
    if key in ("visual.class_embedding", "visual.positional_embedding"):
        return shape[-1] ** -0.5  # CLIP's init
    if key in ("token_embedding.weight", "positional_embedding"):
        return 0.02 if "token" in key else 0.01  # CLIP's init
    if _is_layer_norm(key) and key.endswith(".weight"):
        return 0.1
    if len(shape) <= 1:
        return 0.02  # biases (and the logit scale, set afterwards)
    if key in ("visual.proj", "text_projection"):
        return shape[0] ** -0.5  # stored (in, out): features @ proj
    return math.prod(shape[1:]) ** -0.5  # (out, in, ...) weights: Linear, conv, attention


def _mean(key: str) -> float:
    return 1.0 if _is_layer_norm(key) and key.endswith(".weight") else 0.0


def _is_layer_norm(key: str) -> bool:
    return key.rpartition(".")[0].rpartition(".")[2].startswith("ln_")  # ...ln_1.weight, ln_final.bias


def make_inputs(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Seeded inputs: videos (B, T, 3, 32, 32) in vidclip's layout, caption token ids (N, 77)."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(NUM_VIDEOS, NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    tokens = torch.zeros(len(CAPTION_LENGTHS), CONTEXT, dtype=torch.long)
    for row, length in enumerate(CAPTION_LENGTHS):
        words = torch.randint(1, START_OF_TEXT, (length,), generator=generator)
        tokens[row, : length + 2] = torch.cat(
            [torch.tensor([START_OF_TEXT]), words, torch.tensor([END_OF_TEXT])]
        )
    return {"video": video, "tokens": tokens}


# -- M2-CLIP, imported from its checkout ------------------------------------------------------------------------
def import_m2clip(checkout: Path) -> types.SimpleNamespace:
    """M2-CLIP's ``models_adapter`` and ``utils``. Its ``simple_tokenizer`` loads a BPE file from a hard-coded
    path at import; it is replaced by open_clip's (OpenAI's) tokenizer class, which nothing here calls."""
    import open_clip.tokenizer

    sys.modules["simple_tokenizer"] = types.ModuleType("simple_tokenizer")
    sys.modules["simple_tokenizer"].SimpleTokenizer = open_clip.tokenizer.SimpleTokenizer
    sys.path.insert(0, str(checkout))
    import models_adapter
    import utils

    return types.SimpleNamespace(models_adapter=models_adapter, utils=utils)


def set_trainable(model: torch.nn.Module) -> None:
    """M2-CLIP's main: parameters whose name contains ``adapter`` train (fp32), every other one is frozen."""
    for name, param in model.named_parameters():
        param.requires_grad_("adapter" in name)


def save_like_m2clip(m2: types.SimpleNamespace, model: torch.nn.Module, out: Path) -> None:
    """Write ``model``'s checkpoint with M2-CLIP's ``utils.save_model`` (single-process gloo group: it asks
    the rank), with an optimizer, scheduler and loss scaler as its main builds them."""
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss_scaler = torch.amp.GradScaler("cuda", enabled=False)  # CPU: its state is empty either way
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/group", rank=0, world_size=1)
        try:
            args = argparse.Namespace(save_dir=tmp, save_freq=1, epochs=1, dataset="k400", auto_remove=False)
            m2.utils.save_model(args, 0, model, optimizer, lr_sched, loss_scaler)
        finally:
            dist.destroy_process_group()
        out.write_bytes((Path(tmp) / "checkpoint-0.pth").read_bytes())


@torch.no_grad()
def run_m2clip(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """M2-CLIP's evaluation calls: ``encode_image`` on (B, 3, T, H, W), ``encode_text`` on token ids."""
    video, adapted_frames, _ = model.encode_image(
        inputs["video"].permute(0, 2, 1, 3, 4)
    )  # its (B, C, T, H, W)
    text, _ = model.encode_text(inputs["tokens"])
    return {"video_features": video, "frame_features": adapted_frames, "text_features": text}


@torch.no_grad()
def check_text_blocks(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, bool]:
    """What M2-CLIP's ``encode_text`` does with its 13 text blocks: block 12 (weights and adapter) changes
    nothing, block 11's adapter changes the features."""
    before = model.encode_text(tokens)[0]
    blocks = model.transformer.resblocks
    saved = {k: v.clone() for k, v in blocks[12].state_dict().items()}
    for param in blocks[12].parameters():
        param.add_(1.0)
    block_12_idle = torch.equal(model.encode_text(tokens)[0], before)
    blocks[12].load_state_dict(saved)
    fc2 = blocks[11].adapter_pre_mlp.textad_fc2
    saved_fc2 = fc2.weight.clone()
    fc2.weight.zero_()
    block_11_adapter_acts = not torch.allclose(model.encode_text(tokens)[0], before, atol=1e-3)
    fc2.weight.copy_(saved_fc2)
    return {"block_12_idle": block_12_idle, "block_11_adapter_acts": block_11_adapter_acts}


def vit_b16_facts(m2: types.SimpleNamespace, checkout: Path) -> dict:
    """The keys and shapes of a real ViT-B/16 12x384 Kinetics-400 checkpoint, and its trainable count."""
    mlm_labels = m2.utils.load_word_index_mapping(str(checkout / "k400_mlm_lables.txt"))
    with torch.device("meta"):
        model = m2.models_adapter.CLIP(**dict(VIT_B16_12X384, mlm_head_len=len(mlm_labels)))
    set_trainable(model)
    trainable = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    return {"checkpoint_shapes": trainable, "trainable": sum(math.prod(s) for s in trainable.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkout", type=Path, help="an M2-CLIP source tree (sallymmx/m2clip)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parents[1] / "tests/fixtures")
    args = parser.parse_args(argv)
    m2 = import_m2clip(args.checkout)
    torch.manual_seed(SEED)  # its constructor draws its own init (all overwritten below)
    model = m2.models_adapter.CLIP(**SMALL)
    set_trainable(model)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    state = random_state_dict(shapes)
    model.load_state_dict(state, strict=True)
    model.eval()
    inputs = make_inputs()
    outputs = run_m2clip(model, inputs)
    facts = check_text_blocks(model, inputs["tokens"])
    torch.testing.assert_close(run_m2clip(model, inputs), outputs, rtol=0, atol=0)  # the checks restored it
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_like_m2clip(m2, model, args.out_dir / "m2clip_parity.pth")
    frozen = {k: s for k, s in shapes.items() if "adapter" not in k}
    fixture = {
        "seed": SEED,
        "backbone_shapes": frozen,
        **inputs,
        **outputs,
        "text_blocks": facts,
        "vit_b16": vit_b16_facts(m2, args.checkout),
    }
    torch.save(fixture, args.out_dir / "m2clip_parity.pt")
    (args.out_dir / "m2clip_parity.json").write_text(json.dumps(OPEN_CLIP_CONFIG, indent=4) + "\n")
    print(f"text blocks: {facts}; ViT-B/16 trainable: {fixture['vit_b16']['trainable']:,}")
    for name in ("pth", "pt", "json"):
        path = args.out_dir / f"m2clip_parity.{name}"
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
