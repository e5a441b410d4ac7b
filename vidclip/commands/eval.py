"""``vidclip eval``: text-video retrieval metrics of a model on a dataset split, exactly as CLIP4Clip reports them.

The scoring is :mod:`vidclip.inference.retrieval`'s (every video encoded once by the shared pipeline, failed
videos dropped with their captions, named and counted). ``--dsl`` adds dual-softmax re-scored metrics under
``dsl/`` beside the plain ones (never instead): DSL uses the whole query set as a prior, an inference trick the
CLIP4Clip forks (CAMoE, EMCL) report separately.

``--plot DIR`` draws what the numbers summarise (:mod:`vidclip.viz`): recall@K curves, and the best and worst
ranked captions with the videos they retrieved, decoded again (with the evaluation's sampling) only for those.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from vidclip.commands.common import (
    COMMAND_ERRORS,
    add_encoding_arguments,
    add_model_arguments,
    check_encoding,
    check_writable,
    encode_options,
    fail,
    model_from_args,
    setup_logging,
)
from vidclip.fileio import write_text_atomic
from vidclip.inference.retrieval import COUNT_KEYS, RetrievalScores, retrieval_report, score_retrieval
from vidclip.viz import require_plotting


def write_json(values: dict, path: str | os.PathLike) -> None:
    """Write ``values`` as indented JSON, atomically (a crash never leaves half a file)."""
    write_text_atomic(path, json.dumps(values, indent=2) + "\n")


def format_table(metrics: dict[str, float], title: str) -> str:
    """The metrics as a small table: one row per direction (t2v, v2t, dsl/t2v, dsl/v2t)."""
    columns = ("R@1", "R@5", "R@10", "MdR", "MnR")
    directions = [d for d in ("t2v", "v2t", "dsl/t2v", "dsl/v2t") if f"{d}/R@1" in metrics]
    counts = ", ".join(f"{metrics[k]:g} {k.removeprefix('num_')}" for k in COUNT_KEYS if k in metrics)
    lines = [f"{title} ({counts})", f"{'':8}" + "".join(f"{c:>8}" for c in columns)]
    for direction in directions:
        lines.append(f"{direction:8}" + "".join(f"{metrics[f'{direction}/{c}']:>8.1f}" for c in columns))
    return "\n".join(lines)


def write_plots(
    scores: RetrievalScores,
    folder: str | os.PathLike,
    *,
    num_frames: int,
    sampling: str = "uniform",
    fps: float | None = None,
    decoder: str = "auto",
    title: str | None = None,
) -> list[Path]:
    """``folder/recall_at_k.png`` (both directions' recall@K) and ``folder/queries.png`` (the 3 best and 3 worst
    ranked captions with their top-5 videos); only the videos the second figure shows are decoded."""
    from vidclip import viz
    from vidclip.video import load_video

    def frames(index: int) -> torch.Tensor:  # the frames the model saw (seeded, should sampling be random)
        return load_video(scores.paths[index], num_frames, sampling, fps=fps, decoder=decoder, seed=0)

    folder = Path(folder)
    sim, text_to_video = scores.similarity.cpu(), scores.text_to_video
    recall = viz.recall_at_k_figure(sim, text_to_video=text_to_video, title=title)
    queries = viz.query_grid(
        sim,
        scores.captions,
        frames,
        k=5,
        n_best=3,
        n_worst=3,
        text_to_video=text_to_video,
        video_names=scores.videos,
    )
    return [
        viz.save_figure(recall, folder / "recall_at_k.png"),
        viz.save_figure(queries, folder / "queries.png"),
    ]


# -- command line ---------------------------------------------------------------------------------------------
EPILOG = """examples:
  vidclip eval --config configs/retrieval/msrvtt_meanp.yaml --checkpoint runs/msrvtt-meanp --output metrics.json
  vidclip eval --config configs/retrieval/msrvtt_zeroshot.yaml              # pretrained CLIP, no training
  vidclip eval --config configs/retrieval/msrvtt_zeroshot.yaml --model ViT-B-16 --pretrained openai --num-frames 16
  vidclip eval --config configs/retrieval/msrvtt_meanp.yaml --checkpoint runs/x data.test=data/msrvtt/test_full.txt --dsl
  vidclip eval --config configs/retrieval/msrvtt_meanp.yaml --checkpoint runs/msrvtt-meanp --plot plots/

--plot DIR writes DIR/recall_at_k.png (recall@K curves, both directions) and DIR/queries.png (the 3 best and
3 worst ranked captions, each with its top-5 videos; the true video framed in green, or added at the end).
It needs matplotlib: pip install "vidclip[viz]". Classification datasets are scored by vidclip zeroshot.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vidclip eval",
        description="Text-video retrieval metrics (R@1/5/10, MdR, MnR both ways) of a model on a dataset split.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", action="append", required=True, help="YAML config; repeat to merge several"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides as key.sub=value")
    parser.add_argument("--split", choices=["train", "val", "test"], default="test", help="default test")
    parser.add_argument("--output", help="write the metrics and counts as JSON here")
    parser.add_argument("--dsl", action="store_true", help="also report dual-softmax metrics (dsl/...)")
    parser.add_argument("--chunk-size", type=int, default=256, help="texts scored at once (text-conditioned)")
    parser.add_argument(
        "--plot", metavar="DIR", help="write recall_at_k.png and queries.png into DIR (needs matplotlib)"
    )
    add_model_arguments(parser)
    add_encoding_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip eval`` command: 0 when done, 2 for a bad config, data setting or model choice."""
    from vidclip.config import ConfigError, load_config
    from vidclip.data import read_annotations

    args = parse_args(argv)
    setup_logging()
    try:  # every refusal happens here, before any video is decoded
        if args.plot:
            require_plotting("--plot")
        if args.output:
            check_writable(args.output)
        config = load_config(args.config, args.overrides)
        if config.task != "retrieval":
            raise ConfigError(
                f"vidclip eval scores retrieval; task is {config.task!r} (use vidclip zeroshot)"
            )
        annotations = read_annotations(config.data, "retrieval", args.split)
        options = check_encoding(encode_options(args, config.data))
        model = model_from_args(args, config.model, options.device)
        scores = score_retrieval(
            model, annotations, options, max_words=config.data.max_words, chunk_size=args.chunk_size
        )
    except COMMAND_ERRORS as err:
        return fail("eval", err)
    metrics = retrieval_report(scores, dsl=args.dsl)
    title = f"{config.data.format} {args.split}"
    print(format_table(metrics, title))
    if args.output:
        try:
            write_json(metrics, args.output)
        except COMMAND_ERRORS as err:  # e.g. the disk filled during the run: the table above still stands
            return fail("eval", err)
        print(f"wrote {args.output}")
    if args.plot:
        frames = options.num_frames or model.num_frames
        data = config.data
        written = write_plots(
            scores,
            args.plot,
            num_frames=frames,
            title=title,
            sampling=data.eval_sampling,
            fps=data.fps,
            decoder=options.decoder,
        )
        print(f"wrote {', '.join(map(str, written))}")
    return 0
