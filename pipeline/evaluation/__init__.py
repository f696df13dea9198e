"""Evaluation as library parts: evaluators (one class per score), prediction sources, the report writer."""

from pipeline.evaluation.evaluators import (
    DEFAULT_EVALUATORS,
    EVALUATORS,
    Evaluation,
    Evaluator,
    ScoreRow,
    VideoOutput,
    build_evaluators,
    register,
    summarize,
    variants_of,
)
from pipeline.evaluation.robustness import Robustness  # registers the robustness suite

__all__ = [
    "DEFAULT_EVALUATORS",
    "EVALUATORS",
    "Robustness",
    "Evaluation",
    "Evaluator",
    "ScoreRow",
    "VideoOutput",
    "build_evaluators",
    "register",
    "summarize",
    "variants_of",
]
