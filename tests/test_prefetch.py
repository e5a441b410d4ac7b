"""Decoding ahead in a thread (for GPU decoders, which stay in the main process): same batches, same order,
errors where they happened, overlap with the consumer, and a clean stop."""

import itertools
import threading
import time

import pytest
import torch

from vidclip.inference.prefetch import BackgroundBatches, decode_ahead


def test_same_items_in_the_same_order_produced_off_the_main_thread():
    produced_in = []

    def batches():
        for i in range(20):
            produced_in.append(threading.current_thread().name)
            yield {"index": i}

    assert [b["index"] for b in BackgroundBatches(batches(), depth=3)] == list(range(20))
    assert set(produced_in) == {"vidclip-decode-ahead"}


def test_the_next_batch_is_produced_while_the_consumer_holds_this_one():
    second_made = threading.Event()

    def batches():
        yield 0
        yield 1
        second_made.set()
        yield 2

    iterator = iter(BackgroundBatches(batches(), depth=2))
    assert next(iterator) == 0
    # Plain iteration would make batch 1 only when asked: here it is made while batch 0 is in use.
    assert second_made.wait(timeout=10)
    assert list(iterator) == [1, 2]


def test_producer_runs_at_most_depth_batches_ahead():
    made = []

    def batches():
        for i in itertools.count():
            made.append(i)
            yield i

    prefetch = BackgroundBatches(batches(), depth=2)
    iterator = iter(prefetch)
    assert next(iterator) == 0
    time.sleep(0.5)  # give the thread time to run ahead as far as it may
    assert len(made) <= 1 + 2 + 1  # the one consumed, the queue (depth), the one waiting for room
    prefetch.close()
    assert not prefetch._thread.is_alive()  # an endless source stops when closed


def test_an_error_while_producing_is_raised_at_its_batch():
    def batches():
        yield 0
        yield 1
        raise OSError("disk vanished")

    got = []
    with pytest.raises(OSError, match="disk vanished"):
        for batch in BackgroundBatches(batches()):
            got.append(batch)
    assert got == [0, 1]


def test_leaving_early_stops_the_thread():
    prefetch = BackgroundBatches(itertools.count(), depth=1)
    for batch in prefetch:
        if batch == 3:
            break
    prefetch.close()
    assert not prefetch._thread.is_alive()


def test_only_gpu_decoders_are_decoded_ahead_in_a_thread():
    loader = [1, 2, 3]
    assert decode_ahead(loader, "pyav", None) is loader
    ahead = decode_ahead(loader, "nvdec", None)
    assert isinstance(ahead, BackgroundBatches) and list(ahead) == loader
    with pytest.raises(ValueError, match="depth"):
        BackgroundBatches(loader, depth=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_made_on_a_side_stream_are_complete_when_the_consumer_reads_them():
    device = torch.device("cuda", torch.cuda.current_device())

    def batches():
        for i in range(8):
            big = torch.full((2048, 2048), float(i), device=device)
            yield {"video": (big @ torch.eye(2048, device=device)).sum(dim=0)}  # slow enough to race

    for i, batch in enumerate(BackgroundBatches(batches(), device=device)):
        assert batch["video"].device == device
        assert torch.all(batch["video"] == 2048.0 * i)
