"""The AV2T-SAM model: fusion head, pseudo-token MLP, adapters, mask decoder, and its loss."""

from pipeline.model.av2t_sam import AV2TSAM, build_model
from pipeline.model.config import HeadConfig, head_config
from pipeline.model.loss import segmentation_loss

__all__ = ["AV2TSAM", "HeadConfig", "build_model", "head_config", "segmentation_loss"]
