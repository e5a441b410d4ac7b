"""Losses: the symmetric InfoNCE and classification losses against hand computations, invalid slots, the
prompt ensemble, and the cross-process gather proven on two real gloo processes: N processes with B/N each,
gradients averaged as DDP does, equal one process with B."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import vidclip
from vidclip.losses import class_embeddings, classification_loss, contrastive_loss
from vidclip.model import VideoFeatures


def tiny(head="mean"):
    torch.manual_seed(0)
    return vidclip.create_model("tiny", head=head, num_frames=3)


def batch(size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(size, 3, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 400, (size, 32), generator=g)
    tokens[:, -1] = 49407  # end-of-text (the highest id, where CLIP pools)
    mask = torch.ones(size, 3, dtype=torch.bool)
    mask[2, 2] = False
    valid = torch.ones(size, dtype=torch.bool)
    valid[5] = False
    labels = torch.randint(0, 3, (size,), generator=g)
    return video, tokens, mask, valid, labels


def test_contrastive_loss_is_clip_symmetric_cross_entropy():
    text, pooled = F.normalize(torch.randn(6, 16), dim=-1), F.normalize(torch.randn(6, 16), dim=-1)
    video = VideoFeatures(pooled[:, None], torch.ones(6, 1, dtype=torch.bool), pooled)
    scale = torch.tensor(20.0)
    expected = (
        F.cross_entropy(scale * text @ pooled.T, torch.arange(6))
        + F.cross_entropy(scale * pooled @ text.T, torch.arange(6))
    ) / 2
    loss = contrastive_loss(lambda t, v: F.normalize(t, dim=-1) @ v.pooled.T, text, video, scale)
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("head", ["mean", "query_scored"])
def test_invalid_pairs_are_dropped_as_rows_and_columns(head):
    model = tiny(head)
    video, tokens, mask, valid, _ = batch()
    text, feats = model(video, tokens, mask)
    scale = model.logit_scale.exp()
    masked = contrastive_loss(model.similarity, text, feats, scale, valid)
    subset = contrastive_loss(model.similarity, text[valid], feats[valid], scale)
    assert torch.allclose(masked, subset, atol=1e-6)


def test_class_embeddings_average_unit_template_embeddings():
    text = torch.randn(3 * 2, 8)  # 3 classes x 2 templates, class-major
    text[1] *= 1000  # one template with a huge norm must not dominate its class
    out = class_embeddings(text, num_templates=2)
    units = F.normalize(text, dim=-1).view(3, 2, 8)
    assert torch.allclose(out, F.normalize(units.mean(1), dim=-1), atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="templates"):
        class_embeddings(torch.randn(5, 8), num_templates=2)


def test_classification_loss_is_cross_entropy_over_valid_videos():
    model = tiny()
    video, _, mask, valid, labels = batch()
    feats = model.encode_video(video, mask)
    classes = F.normalize(torch.randn(3, 64), dim=-1)
    loss = classification_loss(model.similarity, classes, feats, labels, torch.tensor(10.0), valid)
    logits = 10.0 * feats.pooled @ classes.T
    assert torch.allclose(loss, F.cross_entropy(logits[valid], labels[valid]), atol=1e-5)


def local_gradients(head, rank, world):
    """Loss and parameter gradients of ``rank``'s share of the batch (the whole batch when world == 1)."""
    model = tiny(head)
    video, tokens, mask, valid, labels = batch()
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    text, feats = model(video[rows], tokens[rows], mask[rows])
    scale = model.logit_scale.exp()
    loss = contrastive_loss(model.similarity, text, feats, scale, valid[rows])
    classes = class_embeddings(model.encode_text(tokens[:6]), num_templates=2)  # 3 "classes"
    loss = loss + classification_loss(model.similarity, classes, feats, labels[rows], scale, valid[rows])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _worker(rank, path):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    results = {}
    for head in ("mean", "query_scored"):
        loss, grads = local_gradients(head, rank, 2)
        for tensor in [loss, *grads.values()]:  # what DDP does: average over processes
            dist.all_reduce(tensor)
            tensor /= 2
        results[head] = (loss, grads)
    if rank == 0:
        torch.save(results, path + ".out")
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_processes_give_the_single_process_gradient(tmp_path):
    """Contrastive + classification losses, text-independent and text-conditioned heads, with an invalid
    pair: gradients averaged over 2 gloo processes equal the 1-process gradients of the whole batch."""
    path = str(tmp_path / "store")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(path,), nprocs=2)
    results = torch.load(path + ".out")
    for head, (loss2, grads2) in results.items():
        loss1, grads1 = local_gradients(head, 0, 1)
        assert torch.allclose(loss1, loss2, atol=1e-5), head
        for name, grad in grads1.items():
            assert torch.allclose(grad, grads2[name], rtol=1e-4, atol=1e-5 * grad.abs().max().item()), (
                head,
                name,
            )
