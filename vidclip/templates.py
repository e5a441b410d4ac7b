"""Prompt templates for zero-shot classification (class names are made readable by the data readers).

A template is a sentence with ``{}`` where the class name goes. Named sets:

==========  ====================================================================================
vifi        ``a photo of a {}.`` — ViFi-CLIP's single prompt (zero-shot UCF101 / HMDB51 / K600)
video       ``a video of a {}.`` — vidclip's training default (``data.templates``)
kinetics    the 28 templates OpenAI CLIP used for Kinetics-700 (CLIP's ``data/prompts.md``)
ucf101      the 48 templates OpenAI CLIP used for UCF101 (same source)
==========  ====================================================================================

open_clip's ``zero_shot_metadata`` carries only ImageNet's templates, so the two video sets are built here;
``tests/test_zeroshot.py`` pins their contents. Several templates are ensembled the CLIP way: each
template's text embedding is normalised, the embeddings of a class are averaged and the mean renormalised.
"""

from __future__ import annotations

from collections.abc import Sequence

_KINDS = ("photo", "video", "example", "demonstration")
_VERBS = ("using", "doing", "during", "performing", "practicing")


def _clip_kinetics_templates() -> tuple[str, ...]:
    """CLIP's Kinetics-700 list, in its order: per kind, 'of {}' then 'of a person [verb] {}'."""
    tails = ("{}", "a person {}", *(f"a person {verb} {{}}" for verb in _VERBS))
    return tuple(f"a {kind} of {tail}." for kind in _KINDS for tail in tails)


def _clip_ucf101_templates() -> tuple[str, ...]:
    """CLIP's UCF101 list, in its order: per verb, per article (a, the), per kind."""
    verbs = ("", *(f"{verb} " for verb in _VERBS))
    return tuple(
        f"a {kind} of {article} person {verb}{{}}."
        for verb in verbs
        for article in ("a", "the")
        for kind in _KINDS
    )


TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "vifi": ("a photo of a {}.",),
    "video": ("a video of a {}.",),
    "kinetics": _clip_kinetics_templates(),
    "ucf101": _clip_ucf101_templates(),
}


def get_templates(names_or_templates: Sequence[str]) -> list[str]:
    """Expand set names (``vifi``, ``kinetics``...) and keep literal templates; every result holds one ``{}``.

    ``get_templates(["kinetics", "a clip of {}."])`` gives CLIP's 28 Kinetics templates and one more.
    """
    templates: list[str] = []
    for item in names_or_templates:
        if item in TEMPLATE_SETS:
            templates.extend(TEMPLATE_SETS[item])
        elif item.count("{}") == 1:
            templates.append(item)
        else:
            raise ValueError(
                f"template {item!r} is neither a named set ({', '.join(TEMPLATE_SETS)}) nor a sentence "
                "with exactly one '{}' for the class name"
            )
    if not templates:
        raise ValueError("at least one template is needed")
    return list(dict.fromkeys(templates))  # duplicates would weigh twice in the ensemble


def build_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class name, class-major: C x K prompts (what the ensemble expects)."""
    return [template.format(name) for name in class_names for template in templates]
