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

__all__ = [
    "DEFAULT_EVALUATORS",
    "EVALUATORS",
    "Evaluation",
    "Evaluator",
    "ScoreRow",
    "VideoOutput",
    "build_evaluators",
    "register",
    "summarize",
    "variants_of",
]
