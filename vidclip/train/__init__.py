"""Training (``vidclip train``): train a VideoCLIP for retrieval or classification with Accelerate.

The loop follows Accelerate's examples: seed, build, prepare once, accumulate, backward, step,
gather_for_metrics, checkpoint and resume, trackers. One process, several GPUs (``accelerate launch -m vidclip
train ...``, ``torchrun -m vidclip train ...``) and several nodes run the same code: ``train.batch_size`` is the
global batch of one optimizer step, so changing the number of processes changes nothing else.

Modules: :mod:`~vidclip.train.trainer` (building and preparing the run; the command line is :mod:`vidclip.commands.train`),
:mod:`~vidclip.train.loop` (the step and the loop), :mod:`~vidclip.train.state` (checkpoints and resume),
:mod:`~vidclip.train.evaluation` (validation during training).

Run directory (``output_dir``)::

    config.yaml                          the resolved config (rebuilds the run)
    checkpoints/step_XXXXXXXX/           every train.save_every steps, at the end, and on Ctrl-C:
        model.safetensors                  weights + model spec (vidclip.load_checkpoint reads it)
        optimizer.safetensors              the optimizer's tensors, its param groups as JSON metadata
        scheduler.json                     the learning-rate schedule's position
        train_state.json                   step, gradient-accumulation counter, videos that failed to decode
        rng_state_{rank}.json              each process's Python, NumPy, torch (and CUDA) generator states
        scaler.json                        the fp16 GradScaler (train.precision=fp16 only)
        config.yaml
    model.safetensors                    the final weights (vidclip.load_checkpoint(output_dir))
    metrics.jsonl                        training and validation scalars, one JSON line per log
    failed_videos.txt                    videos skipped because they could not be decoded (if any)

Nothing read back from a run folder can run code: checkpoints hold no pickle (Accelerate's save_state files
are pickles, so vidclip writes its own), and a file that is not what vidclip wrote is refused, naming it.
A checkpoint of another model (a changed head, say) stops ``--resume`` with the keys that changed.

``--resume`` continues from the latest step checkpoint and ends where the uninterrupted run would have: the
data order, frame sampling and augmentation are functions of (seed, epoch, index), and the position in the
epoch follows from the step count. Ctrl-C (or SIGTERM from a job scheduler) finishes the current step, saves a
checkpoint and exits with code 130; a second Ctrl-C quits at once without saving.

Videos that cannot be decoded keep their slot in the batch, marked invalid, and the loss leaves them out:
every process keeps the same batch size (the loss's all-gather needs it) and N processes compute what one
process computes. They are warned about, counted, and listed in ``failed_videos.txt``.
"""

from vidclip.train.trainer import EXIT_INTERRUPTED, train

__all__ = ["EXIT_INTERRUPTED", "train"]
