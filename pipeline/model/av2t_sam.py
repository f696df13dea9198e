"""AV2T-SAM: CLIP x CLAP -> pseudo-tokens -> frozen BEiT-3 -> SAM 2 prompt -> mask (bok-bok/AV2T-SAM).

Per frame (B frames at once):
1. fused = Projector(clip, clap): L2-normalise, project to d_shared, fuse (mul = element-wise product);
2. tokens = to_text_space(fused) as n_tokens rows of BEiT-3's width, placed after the vision tokens;
3. BEiT-3 (frozen) -> output token 0 -> `text_hidden_fcs` (D -> D -> 256) = ONE sparse prompt token; the dense
   prompt is `no_mask_embed` (EVF's vendored SAM 2 prompt encoder with `text_embeds`);
4. SAM 2 image features: without adapters straight from the cache; with adapters on Hiera blocks k..end,
   block i's input gets `lightweight_mlp_i(fused)` added (broadcast over H x W); the trunk from block k, the
   frozen FPN neck, conv_s0/conv_s1 and `no_mem_embed` run in the step (gradients flow through them);
5. the mask decoder (multimask): of the 3 masks, the one with the highest predicted IoU, upsampled bilinearly
   to mask_size (224).

`forward_cached` reads store arrays; `forward_raw` starts from uint8 frames with the encoders' own
preprocessing. Both share every step after the features, so for the same weights they give the same logits.

Trainable, as in AV2T: the projector and MLP, the adapters, `text_hidden_fcs`, the whole SAM 2 mask decoder
and `no_mask_embed`; the head keeps its own copies of the last two, so the encoders it is built from stay
untouched (their weights digests stay valid). Frozen: BEiT-3, the Hiera trunk, the FPN neck, the rest of the
prompt encoder, the memory modules. One exception, forced by the cache layout: a cache of the high-res levels
*after* conv_s0/conv_s1 (sam2 highres="after_conv") without adapters freezes those two convs.

The same head on SAM 1 (EVF-SAM1) is `AV2TSAM1` (pipeline.model.av2t_sam1), which overrides the SAM steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoints import CheckpointError, load_strict
from pipeline.encoders import sam2_image as S
from pipeline.encoders.base import seeded
from pipeline.encoders.beit3 import OUTPUT as BEIT3_PATCHES
from pipeline.encoders.beit3 import Beit3Encoder
from pipeline.model.adapters import AdapterBank
from pipeline.model.config import HeadConfig
from pipeline.model.projector import Projector

# The clip / clap encoders' output names (their modules' OUTPUT; not imported here: open_clip and
# laion_clap take seconds to import and training from the cache never needs them).
CLIP, CLAP = "clip", "clap"
# Top-level modules of the head: exactly what trainable_state_dict holds.
HEAD_MODULES = (
    "projector",
    "audio_prompt_generator",
    "text_hidden_fcs",
    "sam_mask_decoder",
    "no_mask_embed",
    "text_gate",
)
# Batch fields of the expression's text tokens (Ref-AVS heads, cfg.text != "none").
TEXT_IDS, TEXT_LENGTH = "text_ids", "text_length"
# Our key prefix -> the prefix of the same tensor in the reference's `{name}_best.pth` (AVTSAM.state_dict()).
REFERENCE_PREFIXES = {
    "projector.": "projector.",
    "audio_prompt_generator.": "audio_prompt_generator.",
    "text_hidden_fcs.": "model.text_hidden_fcs.",
    "sam_mask_decoder.": "model.visual_model.sam_mask_decoder.",
    "no_mask_embed.": "model.visual_model.sam_prompt_encoder.no_mask_embed.",
}
FCS_PREFIX = "text_hidden_fcs."
TEXT_FCS_SOURCE = "the EVF-SAM2 checkpoint, HF YxZhang/evf-sam2-multitask (model.safetensors)"


def text_hidden_fcs(width: int, prompt_dim: int) -> nn.ModuleList:
    """EVF's projection of BEiT-3's output token to the SAM prompt: [Linear(D, D), ReLU, Linear(D, 256)]."""
    return nn.ModuleList([nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, prompt_dim))])


def upsample_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """(B, M, h, w) -> (B, M, size, size), bilinear, align_corners=False (EVF's postprocess_masks)."""
    return F.interpolate(masks.float(), (size, size), mode="bilinear", align_corners=False)


def select_best(masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mask with the highest predicted IoU per row: (masks (B, h, w), its IoU (B,), its index (B,))."""
    choice = iou.argmax(dim=1)
    rows = torch.arange(masks.shape[0], device=masks.device)
    return masks[rows, choice], iou[rows, choice], choice


def decoded(
    low_res: torch.Tensor, iou_all: torch.Tensor, upsample: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The head's outputs from the decoder's multimask output (B, 3, h, w) and IoUs (B, 3): the best mask by
    predicted IoU upsampled by the backbone's rule to `logits`, its IoU and index, and all masks and IoUs."""
    best, iou_pred, choice = select_best(low_res, iou_all)
    return {
        "logits": upsample(best[:, None])[:, 0],
        "iou_pred": iou_pred,
        "low_res_masks": low_res,
        "iou_preds": iou_all,
        "choice": choice,
    }


class AV2TSAM(nn.Module):
    """The AV2T-SAM model over frozen SAM 2 and BEiT-3 encoders; trains from cached features or raw frames.

    The SAM-specific steps are methods a backbone overrides (`AV2TSAM1` for SAM 1): the block widths and the
    adapters, the cached fields, the image features from the cache or from images, and the decoding.
    """

    backbone = "sam2"
    # Our head key prefix -> the reference checkpoint's (see pipeline.official).
    reference_prefixes = REFERENCE_PREFIXES

    def __init__(
        self,
        cfg: HeadConfig,
        sam2: S.Sam2ImageEncoder,
        beit3: Beit3Encoder,
        d_clip: int,
        d_clap: int,
        text_fcs: Mapping[str, torch.Tensor] | None = None,
        text_fcs_source: str | Path = "text_hidden_fcs",
    ):
        super().__init__()
        self.cfg = cfg
        self.sam2 = sam2.eval().requires_grad_(False)
        self.beit3 = beit3.eval().requires_grad_(False)
        widths = self.block_widths()
        n_blocks = len(widths)
        if cfg.adapters and cfg.adapter_start_block >= n_blocks:
            raise ValueError(
                f"adapter_start_block {cfg.adapter_start_block}: the image encoder has blocks 0..{n_blocks - 1}"
            )
        if cfg.n_tokens > beit3.max_text_tokens:
            raise ValueError(f"n_tokens {cfg.n_tokens} > BEiT-3's {beit3.max_text_tokens} text positions")
        decoder, prompt_encoder = self.sam_decoder_parts()
        width, prompt_dim = beit3.cfg.embed_dim, prompt_encoder.embed_dim
        self.d_clip, self.d_clap = d_clip, d_clap
        with seeded(cfg.seed):
            self.projector = Projector(cfg, d_clip, d_clap, width)
            if cfg.adapters:
                adapted = {i: c for i, c in widths.items() if i >= cfg.adapter_start_block}
                self.audio_prompt_generator = self.make_adapters(adapted)
            self.text_hidden_fcs = text_hidden_fcs(width, prompt_dim)
            if cfg.text == "gated":
                self.text_gate = nn.Linear(width, cfg.n_tokens)
                nn.init.zeros_(self.text_gate.weight)
                nn.init.constant_(self.text_gate.bias, 2.0)  # starts near open (0.88): AV tokens pass
        if text_fcs is not None:
            load_strict(self.text_hidden_fcs, text_fcs, text_fcs_source)
        # Own copies: training must not change the encoders' weights (conv_s0/conv_s1 make after_conv caches).
        self.sam_mask_decoder = copy.deepcopy(decoder).requires_grad_(True)
        self.no_mask_embed = copy.deepcopy(prompt_encoder.no_mask_embed).requires_grad_(True)
        self.convs_frozen = self.backbone == "sam2" and self.highres == "after_conv" and not cfg.adapters
        if self.convs_frozen:
            self.sam_mask_decoder.conv_s0.requires_grad_(False)
            self.sam_mask_decoder.conv_s1.requires_grad_(False)
        self.train()

    # ------------------------------------------------------------ the backbone's parts

    def block_widths(self) -> dict[int, int]:
        """Input width of every block of the image encoder's trunk, by block index."""
        return {i: blk.dim for i, blk in enumerate(self.sam2.sam.image_encoder.trunk.blocks)}

    def sam_decoder_parts(self) -> tuple[nn.Module, nn.Module]:
        """The SAM's mask decoder and prompt encoder (the head copies the decoder and `no_mask_embed`)."""
        return self.sam2.sam.sam_mask_decoder, self.sam2.sam.sam_prompt_encoder

    def make_adapters(self, widths: dict[int, int]) -> nn.Module:
        """The adapter bank for the adapted blocks (index -> input width)."""
        return AdapterBank(self.cfg.d_shared, self.cfg.adapter_hidden, widths)

    # ------------------------------------------------------------ description

    @property
    def highres(self) -> str:
        """How the cache holds the two high-res levels (the SAM 2 encoder's setting)."""
        return self.sam2.cfg.highres

    def cached_fields(self) -> dict[str, list[str]]:
        """The store arrays forward_cached needs, per encoder name."""
        return {"clip": [CLIP], "clap": [CLAP], "beit3": [BEIT3_PATCHES], "sam2": self._sam_fields()}

    def _sam_fields(self) -> list[str]:
        """The SAM encoder's cached arrays this head reads."""
        if self.cfg.adapters:
            k = self.cfg.adapter_start_block
            ends = S.emitting_blocks(self.sam2.sam.image_encoder.trunk)
            return [S.TRUNK_IN] + [S.stage_out_name(j) for j, e in enumerate(ends) if e < k]
        return [S.IMAGE_EMBED, *S.HIGH_RES[self.highres]]

    def head_modules(self) -> dict[str, nn.Module]:
        """The modules this model trains (and saves), by name."""
        return {n: getattr(self, n) for n in HEAD_MODULES if hasattr(self, n)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's state (everything not in the frozen encoders), detached."""
        return {
            f"{name}.{k}": v.detach().clone()
            for name, m in self.head_modules().items()
            for k, v in m.state_dict().items()
        }

    def load_trainable_state_dict(self, sd: Mapping[str, torch.Tensor], source: str | Path = "state") -> None:
        """Load a trainable_state_dict strictly (missing, extra or mis-shaped keys raise CheckpointError)."""
        head = nn.ModuleDict(self.head_modules())  # same keys as trainable_state_dict, shares the tensors
        if self.convs_frozen:
            self._check_frozen_convs(sd, source)
        load_strict(head, sd, source)

    def _check_frozen_convs(self, sd: Mapping[str, torch.Tensor], source: str | Path) -> None:
        """An after_conv cache was made with the SAM 2 weights' conv_s0/conv_s1: a state must keep them."""
        ref = self.sam2.sam.sam_mask_decoder
        for conv in ("conv_s0", "conv_s1"):
            for k, v in getattr(ref, conv).state_dict().items():
                key = f"sam_mask_decoder.{conv}.{k}"
                if key in sd and not torch.equal(sd[key].to(v), v):
                    raise CheckpointError(
                        f"{source}: {key} differs from the SAM 2 weights, but high-res features cached after "
                        "conv_s0/conv_s1 (highres='after_conv') fix those convs; use highres='before_conv'"
                    )

    def frozen_fingerprints(self) -> dict[str, str]:
        """Weights digests of the frozen encoders this head depends on."""
        return {"sam2": self.sam2.weights_digest(), "beit3": self.beit3.weights_digest()}

    def param_counts(self) -> dict[str, int]:
        """Parameter counts: trainable, frozen, and per head module."""
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in self.head_modules().items()}
        counts["trainable"] = sum(p.numel() for p in self.trainable_parameters())
        counts["frozen"] = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return counts

    def train(self, mode: bool = True) -> AV2TSAM:
        """Train mode for the head; the frozen encoders stay in eval mode."""
        super().train(mode)
        self.sam2.eval()
        self.beit3.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return self.no_mask_embed.weight.device

    # ------------------------------------------------------------ forward

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """forward_cached."""
        return self.forward_cached(batch)

    def forward_cached(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Store arrays (see cached_fields) -> logits (B, S, S), iou_pred (B,) and the per-mask outputs."""
        need = [n for names in self.cached_fields().values() for n in names]
        missing = [n for n in need if n not in batch]
        if missing:
            hint = (
                f" (extract sam2 with trunk_block={self.cfg.adapter_start_block})"
                if self.cfg.adapters and any(n.startswith(("trunk_in", "stage_out_")) for n in missing)
                else ""
            )
            raise KeyError(f"batch lacks {missing}{hint}; it has {sorted(batch)}")
        x = {n: self._as_input(batch[n]) for n in need}
        fused = self.projector(x[CLIP], x[CLAP])
        prompt = self._prompt(x[BEIT3_PATCHES], fused, *self._text_of(batch))
        return self._decode(*self._image_features_cached(x, fused), prompt)

    def _image_features_cached(
        self, x: Mapping[str, torch.Tensor], fused: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The decoder's image embedding and high-res features from the cached arrays."""
        if self.cfg.adapters:
            early = [x[n] for n in self.cached_fields()["sam2"][1:]]
            embed, high_res = self._sam_from_block(x[S.TRUNK_IN].permute(0, 2, 3, 1), early, fused)
        elif self.highres == "after_conv":
            embed, high_res = x[S.IMAGE_EMBED], [x[n] for n in S.HIGH_RES["after_conv"]]
        else:
            s0, s1 = (x[n] for n in S.HIGH_RES["before_conv"])
            dec = self.sam_mask_decoder
            embed, high_res = x[S.IMAGE_EMBED], [dec.conv_s0(s0), dec.conv_s1(s1)]
        return embed, high_res

    def forward_raw(
        self, frames: np.ndarray | torch.Tensor, clip: torch.Tensor, clap: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """End to end: uint8 RGB frames (B, H, W, 3) + their CLIP and CLAP embeddings -> as forward_cached."""
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu().numpy()
        return self.forward_images(self.sam2.preprocess(frames), self.beit3.preprocess(frames), clip, clap)

    def forward_images(
        self,
        images_sam: torch.Tensor,
        images_beit: torch.Tensor,
        clip: torch.Tensor,
        clap: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Preprocessed images (B, 3, S, S) for SAM 2 and (B, 3, 224, 224) for BEiT-3 + embeddings -> outputs."""
        fused = self.projector(self._as_input(clip), self._as_input(clap))
        with torch.no_grad():  # frozen and upstream of anything trained
            patches = self.beit3.beit3.vision_embed(self._as_input(images_beit))
            image = self._as_input(images_sam)
        prompt = self._prompt(patches, fused)
        return self._decode(*self._image_features_raw(image, fused), prompt)

    def _image_features_raw(
        self, image: torch.Tensor, fused: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The decoder's image embedding and high-res features from preprocessed images."""
        image_encoder = self.sam2.sam.image_encoder
        if self.cfg.adapters:
            k = self.cfg.adapter_start_block
            with torch.no_grad():
                xk, early = S.run_trunk_blocks(
                    image_encoder.trunk, S.trunk_embed(image_encoder.trunk, image), 0, k
                )
            embed, high_res = self._sam_from_block(xk, early, fused)
        else:
            with torch.no_grad():
                feats, _ = S.neck_levels(image_encoder, image_encoder.trunk(image))
            embed, high_res = self._levels(feats)
        return embed, high_res

    @torch.no_grad()
    def predict(
        self,
        images_sam: torch.Tensor,
        images_beit: torch.Tensor,
        clip_embeddings: torch.Tensor,
        clap_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (B, T, 224, 224) for inputs shaped as the reference data loader gives them.

        images_sam (B, T, 3, S, S), images_beit (B, T, 3, 224, 224), clip_embeddings (B, T, d_clip),
        clap_embeddings (B, T, d_clap); the images preprocessed as the reference does (pipeline.official).
        """
        b, t = images_sam.shape[:2]
        want = {
            "images_sam": (images_sam, 5, self.sam2.cfg.image_size),
            "images_beit": (images_beit, 5, self.beit3.cfg.img_size),
            "clip_embeddings": (clip_embeddings, 3, self.d_clip),
            "clap_embeddings": (clap_embeddings, 3, self.d_clap),
        }
        for name, (x, ndim, last) in want.items():
            if x.ndim != ndim or tuple(x.shape[:2]) != (b, t) or x.shape[-1] != last:
                raise ValueError(
                    f"{name}: shape {tuple(x.shape)}, expected {ndim} dims starting ({b}, {t}) "
                    f"and ending in {last}"
                )

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b * t, *x.shape[2:])

        logits = self.forward_images(
            flat(images_sam), flat(images_beit), flat(clip_embeddings), flat(clap_embeddings)
        )["logits"]
        return logits.reshape(b, t, *logits.shape[1:])

    # ------------------------------------------------------------ steps

    def _as_input(self, t: torch.Tensor | np.ndarray) -> torch.Tensor:
        """A batch array as a float tensor on the model's device and dtype (float16 caches are upcast)."""
        p = self.no_mask_embed.weight
        return torch.as_tensor(t).to(device=p.device, dtype=p.dtype)

    def _text_of(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The expression's token ids (B, L) and lengths (B,) when the head reads text (else (None, None))."""
        if self.cfg.text == "none":
            return None, None
        if TEXT_IDS not in batch or TEXT_LENGTH not in batch:
            raise KeyError(
                f"head text={self.cfg.text!r} needs {TEXT_IDS!r} and {TEXT_LENGTH!r}; batch has {sorted(batch)}"
            )
        return batch[TEXT_IDS], batch[TEXT_LENGTH]

    def _text_tokens(
        self, fused: torch.Tensor, ids: torch.Tensor | None, length: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text stream per cfg.text: (B, T, D) tokens and their padding mask (B, T) (None: nothing padded)."""
        mode = self.cfg.text
        if mode == "none":
            return self.projector.tokens(fused), None
        if ids is None or length is None:
            raise ValueError(f"head text={mode!r} needs the expression's token ids and lengths")
        p = self.no_mask_embed.weight
        words = self.beit3.embed_text(ids).to(p.dtype)  # (B, L, D), frozen table
        length = torch.as_tensor(length).to(device=words.device)
        pad = torch.arange(words.shape[1], device=words.device)[None, :] >= length[:, None]  # (B, L)
        if mode == "only":
            return words, pad
        av = self.projector.tokens(fused)  # (B, n_tokens, D)
        if mode == "gated":
            keep = (~pad).to(words.dtype)[..., None]
            pooled = (words * keep).sum(1) / keep.sum(1).clamp_min(1.0)
            av = av * torch.sigmoid(self.text_gate(pooled))[..., None]
        none = torch.zeros(av.shape[:2], dtype=torch.bool, device=av.device)
        return torch.cat([words, av], dim=1), torch.cat([pad, none], dim=1)

    def _prompt(
        self,
        patches: torch.Tensor,
        fused: torch.Tensor,
        ids: torch.Tensor | None = None,
        length: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """BEiT-3 on the vision patches + the text stream (pseudo-tokens, the expression's tokens or both, per
        cfg.text) -> output token 0 -> text_hidden_fcs: (B, 1, 256)."""
        tokens, pad = self._text_tokens(fused, ids, length)
        cls = self.beit3.forward_tokens(patches, tokens, pad)
        return self.text_hidden_fcs[0](cls[:, None, :])

    def _sam_from_block(
        self, xk: torch.Tensor, early: list[torch.Tensor], fused: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Trunk from block k (channels-last xk) with the adapters, then the neck, the convs, no_mem_embed."""
        trunk = self.sam2.sam.image_encoder.trunk
        prompts = self.audio_prompt_generator(fused)
        _, late = S.run_trunk_blocks(trunk, xk, self.cfg.adapter_start_block, prompts=prompts)
        feats, _ = S.neck_levels(self.sam2.sam.image_encoder, [*early, *late])
        return self._levels(feats)

    def _levels(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """FPN levels (S/4, S/8, S/16) -> the decoder's image embedding and high-res features.

        As SAM2Base.forward_image + _prepare_backbone_features + EVF: conv_s0/conv_s1 on the two high-res
        levels, no_mem_embed added to the S/16 level.
        """
        sam = self.sam2.sam
        if len(feats) != 3:
            raise ValueError(f"expected 3 FPN levels after the scalp, got {len(feats)}")
        embed = feats[2]
        if sam.directly_add_no_mem_embed:
            embed = embed + sam.no_mem_embed.view(1, -1, 1, 1)
        dec = self.sam_mask_decoder
        return embed, [dec.conv_s0(feats[0]), dec.conv_s1(feats[1])]

    def _decode(
        self, embed: torch.Tensor, high_res: list[torch.Tensor], prompt: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Mask decoder with the text prompt (multimask), the best mask by predicted IoU, upsampled."""
        pe = self.sam2.sam.sam_prompt_encoder
        h, w = pe.image_embedding_size
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(embed.shape[0], -1, h, w)
        low_res, iou_all, _, _ = self.sam_mask_decoder(
            image_embeddings=embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=prompt,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=False,
            high_res_features=high_res,
        )
        return decoded(low_res, iou_all, lambda m: upsample_masks(m, self.cfg.mask_size))
