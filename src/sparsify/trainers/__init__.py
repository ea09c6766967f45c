"""Domain trainers: thin adapters that map a framework's loop onto the lifecycle's events."""

from __future__ import annotations

#: use-case family -> "module:function" that runs the training stage for it.
TRAINERS: dict[str, str] = {
    "image_classification": "sparsify.trainers.image_classification:run_image_classification",
    "text_classification": "sparsify.trainers.nlp:run_nlp",
    "token_classification": "sparsify.trainers.nlp:run_nlp",
    "question_answering": "sparsify.trainers.nlp:run_nlp",
    "detection": "sparsify.trainers.detection:run_detection",
    "segmentation": "sparsify.trainers.detection:run_detection",
}
