"""``vidclip train``: train a VideoCLIP for retrieval or classification with Accelerate.

The loop follows Accelerate's examples: seed, build, prepare once, accumulate, backward, step,
gather_for_metrics, save_state/load_state, trackers. One process, several GPUs (``accelerate launch -m vidclip
train ...``, ``torchrun -m vidclip train ...``) and several nodes run the same code: ``train.batch_size`` is the
global batch of one optimizer step, so changing the number of processes changes nothing else.

Modules: :mod:`~vidclip.train.command` (command line, building and preparing the run),
:mod:`~vidclip.train.loop` (the step and the loop), :mod:`~vidclip.train.state` (checkpoints and resume),
:mod:`~vidclip.train.evaluation` (validation during training).

Run directory (``output_dir``)::

    config.yaml                          the resolved config (rebuilds the run)
    checkpoints/step_XXXXXXXX/           every train.save_every steps, at the end, and on Ctrl-C:
        model.safetensors                  weights + model spec (vidclip.load_checkpoint reads it)
        optimizer.bin scheduler.bin ...    Accelerate's save_state: optimizer, schedule, RNG, loop state
        config.yaml
    model.safetensors                    the final weights (vidclip.load_checkpoint(output_dir))
    metrics.jsonl                        training and validation scalars, one JSON line per log
    failed_videos.txt                    videos skipped because they could not be decoded (if any)

``--resume`` continues from the latest step checkpoint and ends where the uninterrupted run would have: the
data order, frame sampling and augmentation are functions of (seed, epoch, index), and the position in the
epoch follows from the step count. Ctrl-C (or SIGTERM from a job scheduler) finishes the current step, saves a
checkpoint and exits with code 130; a second Ctrl-C quits at once without saving.

Videos that cannot be decoded keep their slot in the batch, marked invalid, and the loss leaves them out:
every process keeps the same batch size (the loss's all-gather needs it) and N processes compute what one
process computes. They are warned about, counted, and listed in ``failed_videos.txt``.
"""

from vidclip.train.command import EXIT_INTERRUPTED, main, train

__all__ = ["EXIT_INTERRUPTED", "main", "train"]
