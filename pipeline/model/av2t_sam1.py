"""AV2T-SAM on SAM 1 (EVF-SAM1: ViT-H + BEiT-3-L), as bok-bok/AV2T-SAM's `--evf_version evf_sam` branch.

The projections, fusion, pseudo-tokens, BEiT-3 prompt and `text_hidden_fcs` are those of `AV2TSAM`; the SAM
steps are SAM 1's (segment-anything's classes):
- image features: the cached (256, S/16, S/16) image embedding; with adapters, the ViT from block k on the
  cached block input, block i's input getting `shared_mlp(lightweight_mlp_i(fused))` added, then the neck;
- decoding: the mask decoder with one image embedding per prompt row (the reference's batched decoder; the
  package's own `predict_masks` repeats every image for every prompt), the dense prompt `no_mask_embed`,
  multimask output;
- the mask with the highest predicted IoU, through `Sam.postprocess_masks` (bilinear to S x S, crop to the
  input size, bilinear to mask_size), input size S x S as the reference passes it.
SAM 1 has no memory, no high-res features and no `no_mem_embed`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pipeline.encoders.sam1_image import run_vit_blocks, vit_embed
from pipeline.encoders.sam_common import IMAGE_EMBED, TRUNK_IN
from pipeline.model.adapters import SharedAdapterBank
from pipeline.model.av2t_sam import AV2TSAM, decoded

# Our key prefix -> the reference's (AVTSAM with EvfSamModel: segment-anything's module names).
REFERENCE_PREFIXES_SAM1 = {
    "projector.": "projector.",
    "audio_prompt_generator.": "audio_prompt_generator.",
    "text_hidden_fcs.": "model.text_hidden_fcs.",
    "sam_mask_decoder.": "model.visual_model.mask_decoder.",
    "no_mask_embed.": "model.visual_model.prompt_encoder.no_mask_embed.",
}


def decode_paired(
    decoder: nn.Module,
    embed: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's MaskDecoder on row i's image with row i's prompts: multimask (B, 3, h, w), IoU (B, 3).

    The steps of `MaskDecoder.predict_masks` with `src = embed` instead of every image repeated per prompt.
    """
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
    src = embed + dense
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, image_pe, tokens)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    masks = (hyper @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[2:])
    iou = decoder.iou_prediction_head(hs[:, 0])
    return masks[:, 1:], iou[:, 1:]  # the multimask outputs (output 0 is the single-mask one)


class AV2TSAM1(AV2TSAM):
    """AV2T-SAM over a frozen SAM 1 (`sam1_image` in the SAM slot) and BEiT-3."""

    backbone = "sam1"
    reference_prefixes = REFERENCE_PREFIXES_SAM1

    def block_widths(self) -> dict[int, int]:
        """Every ViT block reads the ViT's width."""
        return {i: blk.norm1.normalized_shape[0] for i, blk in enumerate(self.sam2.sam.image_encoder.blocks)}

    def sam_decoder_parts(self) -> tuple[nn.Module, nn.Module]:
        """segment-anything's `mask_decoder` and `prompt_encoder`."""
        return self.sam2.sam.mask_decoder, self.sam2.sam.prompt_encoder

    def make_adapters(self, widths: dict[int, int]) -> nn.Module:
        """Per-block MLPs into one shared projection to the ViT's width (the reference's SAM 1 generator)."""
        (width,) = set(widths.values())
        return SharedAdapterBank(self.cfg.d_shared, self.cfg.adapter_hidden, sorted(widths), width)

    def _sam_fields(self) -> list[str]:
        """The image embedding, or with adapters the ViT's input at the first adapted block."""
        return [TRUNK_IN] if self.cfg.adapters else [IMAGE_EMBED]

    def _image_features_cached(
        self, x: Mapping[str, torch.Tensor], fused: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The cached embedding, or the adapted ViT from the cached block input."""
        if self.cfg.adapters:
            return self._vit_from_block(x[TRUNK_IN].permute(0, 2, 3, 1), fused), []
        return x[IMAGE_EMBED], []

    def _image_features_raw(
        self, image: torch.Tensor, fused: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The ViT and neck on preprocessed images, adapted from block k."""
        vit = self.sam2.sam.image_encoder
        if not self.cfg.adapters:
            with torch.no_grad():
                return vit(image), []
        with torch.no_grad():
            xk = run_vit_blocks(vit, vit_embed(vit, image), 0, self.cfg.adapter_start_block)
        return self._vit_from_block(xk, fused), []

    def _vit_from_block(self, xk: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """ViT blocks k.. on channels-last xk with the adapters, then the neck: (B, 256, S/16, S/16)."""
        vit = self.sam2.sam.image_encoder
        prompts = self.audio_prompt_generator(fused)
        x = run_vit_blocks(vit, xk, self.cfg.adapter_start_block, prompts=prompts)
        return vit.neck(x.permute(0, 3, 1, 2))

    def _decode(
        self, embed: torch.Tensor, high_res: list[torch.Tensor], prompt: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Mask decoder with the text prompt (multimask), the best mask by predicted IoU, postprocessed."""
        sam = self.sam2.sam
        h, w = sam.prompt_encoder.image_embedding_size
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(embed.shape[0], -1, h, w)
        pe = sam.prompt_encoder.get_dense_pe()
        low_res, iou_all = decode_paired(self.sam_mask_decoder, embed, pe, prompt, dense)
        s, m = self.sam2.cfg.image_size, self.cfg.mask_size
        return decoded(low_res, iou_all, lambda x: sam.postprocess_masks(x.float(), (s, s), (m, m)))
