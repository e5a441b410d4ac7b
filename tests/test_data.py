"""Annotation readers (csv, registry) and the decoding dataset: reproducible samples, broken videos kept as
invalid slots, worker-count independence."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vidclip.config import DataConfig
from vidclip.data import (
    FORMATS,
    AnnotationReader,
    EpochSampler,
    VideoDataset,
    collate,
    create_caption_tokenizer,
    list_formats,
    read_annotations,
    register_format,
)
from vidclip.synthetic import write_video
from vidclip.video import get_video_transform


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four short 64 px videos of distinct colours and a file that is not a video."""
    root = tmp_path_factory.mktemp("videos")
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        frames = np.zeros((10, 64, 64, 3), dtype=np.uint8)
        frames[...] = colour
        frames[:, :, : 6 * (i + 1)] = 255  # a white band whose width tells the videos apart
        write_video(root / f"v{i}.mp4", frames, fps=10)
    (root / "broken.mp4").write_bytes(b"not a video at all")
    return root


def write_csv(path, header, rows):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_csv_retrieval_groups_captions_by_video(tmp_path):
    csv = write_csv(tmp_path / "c.csv", "video,caption", ["a.mp4,one", "b.mp4,two", "a.mp4,three"])
    ann = read_annotations(DataConfig(train=csv), "retrieval", "train")
    assert [v.path for v in ann.videos] == ["a.mp4", "b.mp4"]
    assert ann.captions == ["one", "two", "three"] and ann.caption_video == [0, 1, 0]
    assert ann.video_paths() == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]  # root = the csv's folder


def test_csv_classification_label_names_come_sorted_from_the_train_split(tmp_path):
    train = write_csv(tmp_path / "train.csv", "video,label", ["a.mp4,walk", "b.mp4,run", "c.mp4,jump"])
    val = write_csv(tmp_path / "val.csv", "video,label", ["d.mp4,run"])
    config = DataConfig(train=train, val=val, video_root="/data")
    ann = read_annotations(config, "classification", "val")
    assert ann.class_names == ["jump", "run", "walk"] and ann.labels == [1]
    assert ann.video_paths() == ["/data/d.mp4"]


def test_csv_integer_labels_need_and_index_class_names(tmp_path):
    train = write_csv(tmp_path / "t.csv", "video,label", ["a.mp4,1", "b.mp4,0"])
    with pytest.raises(ValueError, match="data.class_names"):
        read_annotations(DataConfig(train=train), "classification", "train")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    ann = read_annotations(DataConfig(train=train, class_names=str(names)), "classification", "train")
    assert ann.labels == [1, 0] and ann.class_names == ["cat", "dog"]


def test_csv_errors_name_the_problem(tmp_path):
    bad = write_csv(tmp_path / "b.csv", "path,caption", ["a.mp4,x"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['video'\]"):
        read_annotations(DataConfig(train=bad), "retrieval", "train")
    with pytest.raises(ValueError, match="data.val is not set"):
        read_annotations(DataConfig(train=bad), "retrieval", "val")
    with pytest.raises(ValueError, match="unknown format 'msrvt'"):
        read_annotations(DataConfig(format="msrvt", train=bad), "retrieval", "train")


def test_a_new_format_plugs_in_by_registering_a_reader():
    @register_format("test_only_format")
    class Reader(AnnotationReader):
        def read_classification(self, split):
            from vidclip.data import ClassificationAnnotations, VideoRecord

            return ClassificationAnnotations(
                [VideoRecord("x.mp4", "x")], [0], ["a"], root=__import__("pathlib").Path("/r")
            )

    try:
        assert "test_only_format" in list_formats()
        config = DataConfig(format="test_only_format")
        assert read_annotations(config, "classification", "test").video_paths() == ["/r/x.mp4"]
        with pytest.raises(ValueError, match="cannot be used for task=retrieval"):
            read_annotations(config, "retrieval", "test")
    finally:
        FORMATS.pop("test_only_format")


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochSampler(10, seed=3, multiple=4)
    first = list(sampler)
    assert len(first) == len(sampler) == 8 and all(epoch == 0 for epoch, _ in first)
    assert first == list(EpochSampler(10, seed=3, multiple=4))
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for _, i in second] != [i for _, i in first] and all(epoch == 1 for epoch, _ in second)
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        EpochSampler(3, seed=0, multiple=4)


def make_dataset(videos, **overrides):
    import vidclip

    model = vidclip.create_model("tiny", num_frames=3)
    tokenizer = create_caption_tokenizer("tiny", 32, max_words=8)
    paths = [str(videos / f"v{i}.mp4") for i in range(4)] + [str(videos / "broken.mp4")]
    options = dict(
        num_frames=3,
        sampling="random",
        transform=get_video_transform(model, train=True),
        image_size=model.image_size,
        seed=7,
        texts=[f"caption {i}" for i in range(5)],
        tokenizer=tokenizer,
    )
    return VideoDataset(paths, **{**options, **overrides})


def test_items_are_reproducible_and_change_with_the_epoch(videos):
    dataset = make_dataset(videos)
    a, b, c = dataset[(0, 1)], dataset[(0, 1)], dataset[(1, 1)]
    assert a["valid"] and a["video"].shape == (3, 3, 32, 32) and a["mask"].all()
    assert torch.equal(a["video"], b["video"])
    assert not torch.equal(a["video"], c["video"])  # another epoch: another crop / frames
    assert a["tokens"].shape == (32,) and (a["tokens"][8:] == 0).all()  # cut at max_words, padded to 32


def test_a_broken_video_keeps_its_slot_marked_invalid(videos):
    item = make_dataset(videos)[(0, 4)]
    assert not item["valid"] and not item["mask"].any() and item["video"].abs().sum() == 0
    path, reason = item["error"]
    assert path.endswith("broken.mp4") and reason
    batch = collate([make_dataset(videos)[(0, i)] for i in (3, 4)])
    assert batch["video"].shape == (2, 3, 3, 32, 32) and batch["valid"].tolist() == [True, False]
    assert [p for p, _ in batch["errors"]] == [path]


def test_batches_do_not_depend_on_the_number_of_workers(videos):
    dataset = make_dataset(videos)
    sampler = EpochSampler(len(dataset), seed=1)

    def first_batch(workers):
        loader = DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=workers, collate_fn=collate)
        return next(iter(loader))

    zero, two = first_batch(0), first_batch(2)
    assert torch.equal(zero["index"], two["index"]) and torch.equal(zero["video"], two["video"])


def test_max_words_cannot_exceed_the_context():
    with pytest.raises(ValueError, match="exceeds the model's text context length"):
        create_caption_tokenizer("tiny", 32, max_words=40)
