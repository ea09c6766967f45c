"""Use cases: the canonical ids, their aliases and the trainer family each belongs to.

Pure: no torch, no I/O. Every alias is matched after normalisation (lower case; ``-``, spaces and
``_`` are the same), so ``Image-Classification``, ``image classification`` and
``image_classification`` are one name. Sparsify stored some aliases as a single comma-joined
string, so ``qa`` never matched; here every alias is its own entry and a test walks them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparsify.errors import UseCaseError, did_you_mean


@dataclass(frozen=True)
class UseCase:
    """One supported use case.

    Attributes:
        id: canonical snake_case id (``image_classification``).
        sparsify_name: the name in Sparsify's documentation (``cv-classification``).
        domain: ``cv`` or ``nlp``.
        family: catalog family and trainer (``image_classification``, ``detection``,
            ``segmentation``, ``text_classification``, ``token_classification``,
            ``question_answering``).
        catalog_family: key of the model catalog (NLP use cases share one).
        extra: the pip extra that the trainer needs.
        metrics: metrics that can rank checkpoints; the first is the default.
        aliases: names a user may type (normalised form).
    """

    id: str
    sparsify_name: str
    domain: str
    family: str
    catalog_family: str
    extra: str
    metrics: tuple[str, ...]
    aliases: tuple[str, ...]
    description: str


USE_CASES: tuple[UseCase, ...] = (
    UseCase(
        "image_classification", "cv-classification", "cv", "image_classification",
        "image_classification", "vision", ("top1", "top5", "loss"),
        ("cv_classification", "image_classification", "ic", "classification",
         "img_classification", "image_classifier", "imageclassification", "cv_image_classification"),
        "classify images (torchvision ImageFolder data)",
    ),
    UseCase(
        "object_detection", "cv-detection", "cv", "detection", "detection", "detection",
        ("map50_95", "map50"),
        ("cv_detection", "object_detection", "detection", "od", "yolo", "objectdetection",
         "obj_detection", "yolov8", "cv_object_detection"),
        "detect objects with Ultralytics YOLO (YOLO-format data)",
    ),
    UseCase(
        "segmentation", "cv-segmentation", "cv", "segmentation", "segmentation", "detection",
        ("map50_95", "map50", "mask_map50_95", "mask_map50"),
        ("cv_segmentation", "segmentation", "image_segmentation", "instance_segmentation",
         "seg", "yolo_seg", "yolo_segmentation", "cv_image_segmentation"),
        "instance segmentation with Ultralytics YOLO -seg models",
    ),
    UseCase(
        "question_answering", "nlp-question_answering", "nlp", "question_answering", "nlp", "nlp",
        ("f1", "exact_match"),
        ("nlp_question_answering", "question_answering", "qa", "squad", "extractive_qa",
         "questionanswering"),
        "extractive question answering (SQuAD layout)",
    ),
    UseCase(
        "text_classification", "nlp-text_classification", "nlp", "text_classification", "nlp",
        "nlp", ("accuracy", "f1"),
        ("nlp_text_classification", "text_classification", "glue", "textclassification",
         "sequence_classification", "nli", "topic_classification"),
        "classify texts or text pairs (CSV/JSON/GLUE)",
    ),
    UseCase(
        "sentiment_analysis", "nlp-sentiment_analysis", "nlp", "text_classification", "nlp",
        "nlp", ("accuracy", "f1"),
        ("nlp_sentiment_analysis", "sentiment_analysis", "sentiment", "sentimentanalysis",
         "sa", "sentiment_classification"),
        "sentiment of texts (a text classification with sentiment labels)",
    ),
    UseCase(
        "token_classification", "nlp-token_classification", "nlp", "token_classification", "nlp",
        "nlp", ("f1", "precision", "recall", "accuracy"),
        ("nlp_token_classification", "token_classification", "tokenclassification", "pos",
         "pos_tagging", "chunking"),
        "label every word of a text (tokens + tags)",
    ),
    UseCase(
        "named_entity_recognition", "nlp-named_entity_recognition", "nlp",
        "token_classification", "nlp", "nlp", ("f1", "precision", "recall", "accuracy"),
        ("nlp_named_entity_recognition", "named_entity_recognition", "ner",
         "entity_recognition", "namedentityrecognition", "nlp_ner"),
        "find named entities (a token classification with entity tags)",
    ),
)

_BY_ID = {uc.id: uc for uc in USE_CASES}


def normalize_name(name: str) -> str:
    """Lower-case ``name`` and fold ``-``, spaces and repeated ``_`` into one ``_``."""
    return re.sub(r"[\s\-_]+", "_", name.strip().lower()).strip("_")


def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for uc in USE_CASES:
        for alias in (uc.id, uc.sparsify_name, *uc.aliases):
            key = normalize_name(alias)
            owner = table.setdefault(key, uc.id)
            # Two use cases claiming one alias would make resolution depend on order.
            assert owner == uc.id, f"alias {alias!r} claimed by {owner} and {uc.id}"
    return table


ALIASES: dict[str, str] = _alias_table()


def resolve_use_case(name: str) -> UseCase:
    """Return the use case that ``name`` (an id, Sparsify name or alias, in any case) denotes.

    Raises:
        UseCaseError: the name matches no use case; the message suggests the closest one.
    """
    key = normalize_name(name or "")
    if key in ALIASES:
        return _BY_ID[ALIASES[key]]
    valid = ", ".join(uc.id for uc in USE_CASES)
    suggestion = did_you_mean(key, ALIASES.keys())
    if suggestion:
        target = ALIASES[suggestion.split("'")[1]]
        suggestion = f" Did you mean '{target}'?"
    raise UseCaseError(
        f"Unknown use case '{name}'.{suggestion} Valid: {valid}.",
        hint="Aliases such as 'ic', 'qa', 'ner', 'yolo', 'sentiment' also work; "
        "run 'sparsify.run use-cases' for the full list.",
    )
