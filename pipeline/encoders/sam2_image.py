"""SAM 2 image features per frame, as EVF-SAM2 / AV2T-SAM compute them (frames independent, no video memory).

The model is the sam2 package's own `SAM2Base` (Hiera trunk, FPN neck, prompt encoder, mask decoder, memory
modules), instantiated from the package's YAML (`configs/sam2/sam2_hiera_l.yaml` = the SAM 2.0 Hiera-L that
EVF-SAM2 uses) with hydra's `instantiate` on an OmegaConf-loaded config, so no Hydra global state is used. The
whole `SAM2Base` is kept as `encoder.sam` because the training stage needs its prompt encoder and mask decoder.

Per frame: `forward_image` -> `_prepare_backbone_features` -> `no_mem_embed` added to the lowest-resolution
level (`directly_add_no_mem_embed`) -> (C, H, W) maps. Outputs (S = image_size):
- `image_embed` (256, S/16, S/16);
- highres="after_conv": `high_res_0` (32, S/4, S/4), `high_res_1` (64, S/8, S/8), i.e. after the mask
  decoder's conv_s0/conv_s1, exactly what `sam_mask_decoder(high_res_features=...)` takes;
- highres="before_conv": `high_res_0_pre_conv` (256, S/4, S/4), `high_res_1_pre_conv` (256, S/8, S/8), the
  FPN levels before those convs, so a head can train them (`decoder_high_res` applies them).
- trunk_block=k (optional, for adapters on Hiera blocks k..end): also `trunk_in`, the trunk activation at
  block k's input (before any adapter is added), and `stage_out_{j}` for every trunk stage j that ends before
  block k. All are channels first, (C, H, W), like every other output (Hiera works channels last: permute).
  With k=0, `trunk_in` is the patch embedding plus the position embedding. `run_trunk_blocks` and
  `neck_levels` run the rest of the image encoder from them.

Weights: an EVF-SAM2 checkpoint (`visual_model.*` of `YxZhang/evf-sam2-multitask`'s model.safetensors) or
Meta's `{"model": state_dict}` .pt (`sam2_hiera_large.pt`), both loaded strictly into the whole SAM2Base.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field
from sam2.modeling.sam2_base import SAM2Base
from torch import nn

from pipeline.checkpoints import (
    CheckpointError,
    read_evf_sam2,
    read_state_dict,
)
from pipeline.encoders.base import Encoder, frames_tensor, seeded
from pipeline.encoders.sam_common import (
    IMAGE_EMBED,
    MEAN,
    STD,
    TRUNK_IN,
    normalize_frames_sam1,
    parameters_on_meta,
    random_or_loaded,
    resize_frames_sam1,
)

HIGH_RES = {
    "after_conv": ("high_res_0", "high_res_1"),
    "before_conv": ("high_res_0_pre_conv", "high_res_1_pre_conv"),
}
# What sam2.build_sam.build_sam2 adds by default (apply_postprocessing=True); EVF-SAM2 builds with it.
POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
WEIGHTS_SOURCES = {
    "evf-sam2": "the Hugging Face repo YxZhang/evf-sam2-multitask (its model.safetensors)",
    "sam2": "Meta's SAM 2 release, e.g. sam2_hiera_large.pt from the Hugging Face repo facebook/sam2-hiera-large",
}
# EVF-SAM2's vendored CXBlock names its layer scale `weight` where sam2 says `gamma`.
_EVF_FUSER_SCALE = re.compile(r"^(memory_encoder\.fuser\.layers\.\d+)\.weight$")
_SAM2_FUSER_SCALE = re.compile(r"^(memory_encoder\.fuser\.layers\.\d+)\.gamma$")


def evf_to_sam2_key(key: str) -> str:
    """An EVF-SAM2 `visual_model.*` key (prefix removed) in sam2's own naming."""
    return _EVF_FUSER_SCALE.sub(r"\1.gamma", key)


def sam2_to_evf_key(key: str) -> str:
    """A sam2 SAM2Base key in EVF-SAM2's naming (the inverse of evf_to_sam2_key)."""
    return _SAM2_FUSER_SCALE.sub(r"\1.weight", key)


class TrunkConfig(BaseModel):
    """Hiera sizes replacing those of the base YAML (tiny presets)."""

    model_config = ConfigDict(extra="forbid")

    embed_dim: int
    num_heads: int
    stages: list[int]
    global_att_blocks: list[int]
    window_spec: list[int]
    window_pos_embed_bkg_spatial_size: list[int]


class Config(BaseModel):
    """A preset's sam2.json."""

    model_config = ConfigDict(extra="forbid")

    base_config: str = "configs/sam2/sam2_hiera_l.yaml"
    """Model YAML inside the sam2 package (SAM 2.0 Hiera-L, as EVF-SAM2 / AV2T-SAM use)."""
    trunk: TrunkConfig | None = None
    """Hiera sizes replacing the YAML's; None = the YAML's own (the official architecture)."""
    image_size: int = 1024
    """Frames are resized to image_size x image_size; features are S/16, S/4 and S/8 on a side."""
    resize: Literal["sam2", "sam1"] = "sam2"
    """sam2: SAM2Transforms (float bilinear resize to S x S after /255). sam1: what bok-bok/AV2T-SAM's data
    loader does: SAM-1's ResizeLongestSide (PIL bilinear on uint8, rounded), mean/std on the 0-255 scale,
    zero padding to S x S at the bottom/right (a no-op for AVSBench's square frames)."""
    highres: Literal["after_conv", "before_conv"] = "after_conv"
    """Cache the two high-res levels after the mask decoder's conv_s0/conv_s1 (8 MiB/frame fp16 at 1024) or
    before them (42 MiB/frame), so that a head can train those convs."""
    weights: str | None = None
    """Checkpoint path relative to the weights folder; None = random weights from `seed`."""
    weights_format: Literal["evf-sam2", "sam2"] = "evf-sam2"
    """evf-sam2: an EVF-SAM2 model.safetensors (its visual_model.*); sam2: Meta's {"model": state_dict}."""
    trunk_block: int | None = Field(None, ge=0)
    """Also output the trunk activation at this Hiera block's input (`trunk_in`) and the outputs of the
    stages that end before it (`stage_out_{j}`): what adapters starting at this block train from."""
    seed: int = 0


class Sam2ImageEncoder(Encoder):
    """SAM 2 image encoder: uint8 RGB frames -> the 64x64 embedding (+ no_mem_embed) and two high-res levels."""

    name = "sam2"
    input = "frames"

    def __init__(self, sam: SAM2Base, cfg: Config):
        super().__init__()
        n_blocks = len(sam.image_encoder.trunk.blocks)
        if cfg.trunk_block is not None and cfg.trunk_block >= n_blocks:
            raise ValueError(f"trunk_block {cfg.trunk_block}: the trunk has blocks 0..{n_blocks - 1}")
        self.sam = sam
        self.cfg = cfg
        self.model_cfg: dict[str, Any] = OmegaConf.to_container(model_config(cfg), resolve=True)
        self.high_res_names = HIGH_RES[cfg.highres]

    def host_input(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 frames as they are (sam1: resized on the host, with PIL as the reference does)."""
        if self.cfg.resize == "sam1":
            return resize_frames_sam1(batch, self.cfg.image_size)
        return frames_tensor(batch)

    def device_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB frames -> float32 (B, 3, S, S), as sam2's SAM2Transforms (or SAM-1's)."""
        if self.cfg.resize == "sam1":
            return normalize_frames_sam1(x, self.cfg.image_size)
        return preprocess_frames(x, self.cfg.image_size)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame features: image_embed plus the two high-res levels (after or before conv_s0/conv_s1)."""
        p = next(self.sam.parameters())
        x = x.to(p.device, p.dtype)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.trunk_block is None:
            backbone_out = self.sam.image_encoder(x)
        else:
            backbone_out, out = self._encode_via_trunk_block(x, self.cfg.trunk_block)
        if self.cfg.highres == "after_conv":  # what SAM2Base.forward_image does to levels 0 and 1
            fpn = backbone_out["backbone_fpn"]
            fpn[0] = self.sam.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam.sam_mask_decoder.conv_s1(fpn[1])
        _, feats, _, sizes = self.sam._prepare_backbone_features(backbone_out)
        if self.sam.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.sam.no_mem_embed
        # (HW, B, C) -> (B, C, H, W), sizes read off the tensors (sam2 hard-codes 1024 px elsewhere)
        maps = [
            f.permute(1, 2, 0).reshape(x.shape[0], -1, h, w).contiguous()
            for f, (h, w) in zip(feats, sizes, strict=True)
        ]
        return {IMAGE_EMBED: maps[2], self.high_res_names[0]: maps[0], self.high_res_names[1]: maps[1], **out}

    def _encode_via_trunk_block(
        self, x: torch.Tensor, k: int
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The image encoder's output, computed in two halves around block k, plus the activations there."""
        trunk = self.sam.image_encoder.trunk
        xk, early = run_trunk_blocks(trunk, trunk_embed(trunk, x), 0, k)
        _, late = run_trunk_blocks(trunk, xk, k)
        feats, pos = neck_levels(self.sam.image_encoder, [*early, *late])
        backbone_out = {"vision_features": feats[-1], "vision_pos_enc": pos, "backbone_fpn": feats}
        out = {TRUNK_IN: xk.permute(0, 3, 1, 2).contiguous()}
        out.update({stage_out_name(j): f.contiguous() for j, f in enumerate(early)})
        return backbone_out, out

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-frame shapes, from the image size and the built model's widths."""
        s = self.cfg.image_size
        d = int(self.sam.hidden_dim)
        dec = self.sam.sam_mask_decoder
        c0, c1 = (
            (dec.conv_s0.out_channels, dec.conv_s1.out_channels)
            if self.cfg.highres == "after_conv"
            else (d, d)
        )
        n0, n1 = self.high_res_names
        shapes = {IMAGE_EMBED: (d, s // 16, s // 16), n0: (c0, s // 4, s // 4), n1: (c1, s // 8, s // 8)}
        k = self.cfg.trunk_block
        if k is not None:
            block_in, stage_out = trunk_shapes(self.sam.image_encoder.trunk, s)
            shapes[TRUNK_IN] = block_in[k]
            ends = emitting_blocks(self.sam.image_encoder.trunk)
            shapes.update({stage_out_name(j): stage_out[j] for j, e in enumerate(ends) if e < k})
        return shapes

    def config_dict(self) -> dict[str, Any]:
        """The image encoder's resolved config, the image size and which high-res levels are output."""
        return {
            "base_config": self.cfg.base_config,
            "image_size": self.cfg.image_size,
            "image_encoder": self.model_cfg["image_encoder"],
            "directly_add_no_mem_embed": bool(self.sam.directly_add_no_mem_embed),
            "highres": self.cfg.highres,
            "outputs": list(self.output_shapes()),
            # only when set, so that the stores extracted before the option existed keep their fingerprint
            **({"trunk_block": self.cfg.trunk_block} if self.cfg.trunk_block is not None else {}),
        }

    def preprocessing_dict(self) -> dict[str, Any]:
        """Plain square resize, /255, ImageNet mean/std (sam2's SAM2Transforms), or SAM-1's (sam1)."""
        if self.cfg.resize == "sam1":
            return {
                "input": "uint8 RGB",
                "size": [self.cfg.image_size, self.cfg.image_size],
                "resize": "SAM-1 ResizeLongestSide: PIL bilinear on uint8, longest side to size, rounded",
                "mean": [255 * m for m in MEAN],
                "std": [255 * s for s in STD],
                "pad": "zeros, bottom/right, after normalisation",
            }
        return {
            "input": "uint8 RGB",
            "size": [self.cfg.image_size, self.cfg.image_size],
            "resize": "bilinear, antialias, align_corners=False, no aspect preservation (float, after /255)",
            "scale": 1 / 255,
            "mean": list(MEAN),
            "std": list(STD),
        }


def decoder_high_res(features: Mapping[str, torch.Tensor], mask_decoder: nn.Module) -> list[torch.Tensor]:
    """The mask decoder's `high_res_features` from either cached layout (applies conv_s0/conv_s1 if needed)."""
    if HIGH_RES["after_conv"][0] in features:
        return [features[n] for n in HIGH_RES["after_conv"]]
    s0, s1 = (features[n] for n in HIGH_RES["before_conv"])
    return [mask_decoder.conv_s0(s0), mask_decoder.conv_s1(s1)]


# ---------------------------------------------------------------- the image encoder in parts


def stage_out_name(j: int) -> str:
    """Name of the cached output of trunk stage j."""
    return f"stage_out_{j}"


def emitting_blocks(trunk: nn.Module) -> list[int]:
    """The blocks whose outputs the trunk returns (its stage ends), in order: stage j ends at entry j."""
    ends = list(trunk.stage_ends)
    return ends if trunk.return_interm_layers else ends[-1:]


def trunk_embed(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hiera's input to block 0: patch embedding plus the windowed position embedding (B, H, W, C)."""
    x = trunk.patch_embed(x)
    return x + trunk._get_pos_embed(x.shape[1:3])


def run_trunk_blocks(
    trunk: nn.Module,
    x: torch.Tensor,
    start: int,
    stop: int | None = None,
    prompts: Mapping[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Hiera blocks start..stop-1 on channels-last x, as Hiera.forward runs them.

    prompts[i] (B, C_i), when given, is added to block i's input, broadcast over H and W (AV2T's adapters).
    Returns the activation after the last block run and the channels-first outputs of the stages that end
    in the range, in order.
    """
    stop = len(trunk.blocks) if stop is None else stop
    ends = set(emitting_blocks(trunk))
    outs = []
    for i in range(start, stop):
        if prompts is not None and i in prompts:
            x = x + prompts[i][:, None, None, :]
        x = trunk.blocks[i](x)
        if i in ends:
            outs.append(x.permute(0, 3, 1, 2))
    return x, outs


def neck_levels(image_encoder: nn.Module, stages: list[torch.Tensor]) -> tuple[list, list]:
    """FPN levels and position encodings from the trunk's stage outputs, as ImageEncoder.forward (scalp)."""
    feats, pos = image_encoder.neck(stages)
    if image_encoder.scalp > 0:
        feats, pos = feats[: -image_encoder.scalp], pos[: -image_encoder.scalp]
    return feats, pos


def trunk_shapes(trunk: nn.Module, image_size: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(C, H, W) of every block's input, and of every stage output, for a square image_size input."""
    h = image_size // trunk.patch_embed.proj.stride[0]
    ends = set(emitting_blocks(trunk))
    block_in, stage_out = [], []
    for i, blk in enumerate(trunk.blocks):
        block_in.append((blk.dim, h, h))
        if blk.pool is not None:  # query pooling: MaxPool2d(q_stride), floor
            h //= blk.q_stride[0]
        if i in ends:
            stage_out.append((blk.dim_out, h, h))
    return block_in, stage_out


# ---------------------------------------------------------------- preprocessing


def preprocess_frames(frames: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """ToTensor (/255), Resize((S, S)) bilinear antialiased, Normalize(ImageNet): SAM2Transforms, batched
    (on the frames' device)."""
    x = frames_tensor(frames).permute(0, 3, 1, 2)
    if x.shape[-2:] != (image_size, image_size):
        # Resized from the channels-last float tensor, as always: the resize kernel differs by layout.
        x = F.interpolate(
            x.float().div(255),
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    else:  # NCHW made while still uint8 (a quarter of the bytes to move)
        x = x.contiguous().float().div_(255)
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous()  # in place: the same values, no new buffers


# ---------------------------------------------------------------- model config


def _package_yaml(rel: str) -> DictConfig:
    """A config YAML shipped inside the sam2 package, loaded with plain OmegaConf."""
    path = files("sam2").joinpath(rel)
    if not path.is_file():
        raise ValueError(f"sam2 package has no config {rel!r} (look under sam2/configs/)")
    return OmegaConf.load(str(path))


def model_config(cfg: Config) -> DictConfig:
    """The base YAML's `model` with this preset's image size and trunk applied."""
    model = _package_yaml(cfg.base_config).model
    s = cfg.image_size
    model.image_size = s
    for att in ("self_attention", "cross_attention"):
        model.memory_attention.layer[att].feat_sizes = [s // 16, s // 16]  # RoPE grid = the S/16 level
    if cfg.trunk is not None:
        t = cfg.trunk
        model.image_encoder.trunk.update(t.model_dump())
        # Hiera doubles the width at every stage (dim_mul=2); the neck lists them from the deepest.
        model.image_encoder.neck.backbone_channel_list = [
            t.embed_dim * 2**i for i in reversed(range(len(t.stages)))
        ]
    model.sam_mask_decoder_extra_args = dict(POSTPROCESSING)
    _check_sizes(model, s)
    return model


def _check_sizes(model: DictConfig, s: int) -> None:
    """Reject image sizes that Hiera's windows or the FPN's 2x top-down upsampling cannot tile."""
    window0 = model.image_encoder.trunk.get("window_spec", [8])[0]
    if s % 32 or (s // 4) % window0:
        raise ValueError(f"image_size {s} must be a multiple of 32 and of 4 x window_spec[0] ({4 * window0})")


# ---------------------------------------------------------------- building


def build_sam(cfg: Config, empty: bool = False) -> SAM2Base:
    """SAM2Base from the config: seeded random weights, or (empty=True) parameters on meta, uninitialised.

    The meta parameters take no memory; `to_empty` then a strict load gives them real values.
    """
    mcfg = model_config(cfg)
    if empty:
        with parameters_on_meta():
            return instantiate(mcfg, _convert_="all")
    with seeded(cfg.seed):
        return instantiate(mcfg, _convert_="all")


def read_sam_state(path: Path, weights_format: str) -> dict[str, torch.Tensor]:
    """The SAM2Base state dict of an EVF-SAM2 or a Meta SAM 2 checkpoint, with sam2's own key names."""
    if weights_format == "evf-sam2":
        sd = read_evf_sam2(path)["visual_model."]
        if not sd:
            raise CheckpointError(f"{path}: EVF-SAM2 checkpoint holds no visual_model.* keys")
        return {evf_to_sam2_key(k): v for k, v in sd.items()}
    obj = read_state_dict(path)
    if not isinstance(obj.get("model"), Mapping):
        raise CheckpointError(f"{path}: expected Meta's {{'model': state_dict}}, got keys {sorted(obj)[:5]}")
    return dict(obj["model"])


def build(cfg: Config, weights_dir: str | Path | None = None) -> Sam2ImageEncoder:
    """The encoder of a preset: seeded random SAM 2, or the official file loaded strictly."""
    sam = random_or_loaded(cfg, weights_dir, "SAM 2", WEIGHTS_SOURCES, build_sam, read_sam_state)
    return Sam2ImageEncoder(sam, cfg).eval().requires_grad_(False)


def build_empty(cfg: Config) -> Sam2ImageEncoder:
    """The encoder with every tensor on meta, uninitialised (a checkpoint's tensors are assigned into it)."""
    return Sam2ImageEncoder(build_sam(cfg, empty=True), cfg)
