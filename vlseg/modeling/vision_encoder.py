"""Vision encoder: an open_clip visual tower that returns a 4-level feature pyramid.

Supported towers (whatever ``open_clip.create_model`` builds as ``model.visual``):

- ``open_clip.transformer.VisionTransformer`` (OpenAI CLIP, DermLIP): the last block's patch grid
  feeds a ViTDet-style simple feature pyramid; the positional embedding is interpolated for
  input sizes other than the native one.
- ``open_clip.timm_model.TimmModel`` with a multi-scale trunk (resnet, convnext, ...): the trunk's
  own stride 4/8/16/32 stages; with a plain timm ViT trunk (BiomedCLIP) the last block's grid
  goes through the same simple pyramid as above.
- ``open_clip.modified_resnet.ModifiedResNet`` (RN50 family): its four residual stages.

Every tower runs once per forward: the pyramid and the CLIP image embedding come from one pass.

Prompt learners (VPT, MaPLe) pass ``prompt``: either B x n x C tokens inserted right after the
class token of an open_clip ViT (with ``deep_prompt`` replacing them at later blocks; they are
dropped again before pooling and the patch grid), or a (B or 1) x 3 x H x W pixel-space prompt
added to the normalised image (the "padding prompt" of Bahng et al. 2022, any tower).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn

from .prompt_hooks import check_prompt, deep_prompts, stage_prompts

PYRAMID_STRIDES = (4, 8, 16, 32)
TRAINABLE_MODES = ("full", "frozen")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a BxCxHxW map."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _log2_exact(ratio: float) -> int | None:
    """log2(ratio) if ratio is an exact power of two, else None."""
    if ratio <= 0:
        return None
    k = round(math.log2(ratio))
    return k if 2.0**k == ratio else None


class SimpleFeaturePyramid(nn.Module):
    """ViTDet-style pyramid from one feature grid (Li et al. 2022, "simple feature pyramid").

    Finer levels use stride-2 transposed convolutions (halving channels each time), coarser levels
    use max-pooling, and every level ends in a 1x1 projection + LayerNorm2d. Ratios that are not a
    power of two (e.g. patch 14) fall back to bilinear resizing to the exact target size.

    Args:
        in_dim: channels C of the input grid.
        in_stride: stride of the input grid w.r.t. the image (the patch size).
        out_dim: channels of every output level; None keeps the resampled channels.
        strides: output strides.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        in_stride: int,
        out_dim: int | None,
        strides: tuple[int, ...] = PYRAMID_STRIDES,
    ) -> None:
        super().__init__()
        self.strides = strides
        self.in_stride = in_stride
        self.levels = nn.ModuleList()
        self.resize = []  # per level: True if resampled with F.interpolate in forward
        self.out_channels: list[int] = []
        for s in strides:
            layers: list[nn.Module] = []
            dim = in_dim
            k = _log2_exact(in_stride / s)
            if k is not None and k > 0:  # finer than the grid: k deconvs
                for i in range(k):
                    new = max(dim // 2, 1)
                    layers.append(nn.ConvTranspose2d(dim, new, kernel_size=2, stride=2))
                    if i < k - 1:
                        layers += [LayerNorm2d(new), nn.GELU()]
                    dim = new
            elif k is not None and k < 0:  # coarser: one max-pool
                layers.append(nn.MaxPool2d(kernel_size=2**-k, stride=2**-k))
            self.resize.append(k is None)
            if out_dim is not None:
                layers += [nn.Conv2d(dim, out_dim, kernel_size=1, bias=False), LayerNorm2d(out_dim)]
                dim = out_dim
            self.levels.append(nn.Sequential(*layers))
            self.out_channels.append(dim)

    def forward(self, grid: torch.Tensor, image_hw: tuple[int, int]) -> list[torch.Tensor]:
        """BxCxhxw grid -> list of B x C_i x H/s_i x W/s_i maps."""
        outs = []
        for s, level, resize in zip(self.strides, self.levels, self.resize, strict=True):
            x = grid
            if resize:
                x = F.interpolate(x, size=(image_hw[0] // s, image_hw[1] // s), mode="bilinear")
            outs.append(level(x))
        return outs


class _PerLevelProjection(nn.Module):
    """1x1 conv + LayerNorm2d per level of a native multi-scale backbone (identity if dim None)."""

    def __init__(self, *, in_channels: list[int], out_dim: int | None) -> None:
        super().__init__()
        if out_dim is None:
            self.levels = nn.ModuleList(nn.Identity() for _ in in_channels)
            self.out_channels = list(in_channels)
        else:
            self.levels = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(c, out_dim, kernel_size=1, bias=False), LayerNorm2d(out_dim)
                )
                for c in in_channels
            )
            self.out_channels = [out_dim] * len(in_channels)

    def forward(self, feats: list[torch.Tensor], image_hw: tuple[int, int]) -> list[torch.Tensor]:
        return [level(f) for level, f in zip(self.levels, feats, strict=True)]


class VisionEncoder(nn.Module):
    """open_clip visual tower + feature pyramid.

    Args:
        visual: ``model.visual`` of an open_clip CLIP/CustomTextCLIP.
        embed_dim: E, the CLIP joint embedding size.
        mean: per-channel normalisation mean the tower was trained with (RGB, 0..1 scale).
        std: per-channel normalisation std.
        pyramid_dim: channels of every pyramid level; None keeps the tower's own channels.
        trainable: "full" (tower trains) or "frozen" (tower weights fixed, BatchNorm statistics
            frozen; the pyramid always trains). See ``set_trainable``.

    Attributes:
        out_channels: channels C_i of the 4 maps at strides 4, 8, 16, 32.
        image_size: native (H, W) of the tower.
        mean, std: preprocessing constants (tuples of 3 floats).
        tower_kind: "vit", "timm_vit", "timm_cnn" or "modified_resnet".
    """

    def __init__(
        self,
        *,
        visual: nn.Module,
        embed_dim: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        pyramid_dim: int | None = 256,
        trainable: str = "full",
    ) -> None:
        super().__init__()
        self.visual = visual
        self.embed_dim = embed_dim
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        size = getattr(visual, "image_size", 224)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self._indices: list[int] | None = None  # timm trunk feature indices for strides 4..32

        if isinstance(visual, VisionTransformer):
            self.tower_kind = "vit"
            ph, pw = visual.patch_size
            if ph != pw:
                raise NotImplementedError(f"non-square patches {visual.patch_size} not supported")
            self.neck = SimpleFeaturePyramid(
                in_dim=visual.transformer.width, in_stride=ph, out_dim=pyramid_dim
            )
        elif isinstance(visual, TimmModel):
            info = visual.trunk.feature_info
            reductions = [f["reduction"] for f in info]
            if all(s in reductions for s in PYRAMID_STRIDES) and len(set(reductions)) > 1:
                self.tower_kind = "timm_cnn"
                # last feature of each stride (timm may list several blocks per stride)
                self._indices = [
                    max(i for i, r in enumerate(reductions) if r == s) for s in PYRAMID_STRIDES
                ]
                self.neck = _PerLevelProjection(
                    in_channels=[info[i]["num_chs"] for i in self._indices], out_dim=pyramid_dim
                )
            elif len(set(reductions)) == 1:
                self.tower_kind = "timm_vit"
                self.neck = SimpleFeaturePyramid(
                    in_dim=info[-1]["num_chs"], in_stride=reductions[-1], out_dim=pyramid_dim
                )
            else:
                raise NotImplementedError(
                    f"timm trunk {type(visual.trunk).__name__} has feature reductions "
                    f"{reductions}; need stages at strides 4, 8, 16, 32 (CNN) or a single-stride "
                    "grid (ViT)."
                )
        elif isinstance(visual, ModifiedResNet):
            self.tower_kind = "modified_resnet"
            chans = [getattr(visual, f"layer{i}")[-1].conv3.out_channels for i in range(1, 5)]
            self.neck = _PerLevelProjection(in_channels=chans, out_dim=pyramid_dim)
        else:
            raise NotImplementedError(
                f"unsupported open_clip visual tower {type(visual).__name__}. Supported: "
                "VisionTransformer, TimmModel (CNN or ViT trunk), ModifiedResNet."
            )
        self.out_channels: list[int] = list(self.neck.out_channels)
        self.set_trainable(trainable)

    # ------------------------------------------------------------------ training mode
    def set_trainable(self, mode: str) -> None:
        """Choose what trains: "full" = tower + pyramid, "frozen" = pyramid only.

        LoRA / prompt tuning are applied on top of a "frozen" tower by their own modules.
        """
        if mode not in TRAINABLE_MODES:
            raise ValueError(f"trainable={mode!r}; choose one of {TRAINABLE_MODES}")
        self.trainable = mode
        for p in self.visual.parameters():
            p.requires_grad = mode == "full"
        self.train(self.training)

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        if getattr(self, "trainable", "full") == "frozen":
            # frozen towers keep their BatchNorm statistics (and no dropout)
            self.visual.eval()
        return self

    # ------------------------------------------------------------------ forward
    @property
    def tower_stride(self) -> int:
        """Stride of the coarsest map the tower itself produces (the patch size for ViTs)."""
        if self.tower_kind in ("vit", "timm_vit"):
            return self.neck.in_stride
        return 32

    @property
    def prompt_kinds(self) -> tuple[str, ...]:
        """Visual prompt forms this tower takes: "tokens" (open_clip ViT), "pixels" (any tower),
        "features" (CNN towers: a shift added to a stage's output)."""
        if self.tower_kind == "vit":
            return ("tokens", "pixels")
        if self.tower_kind in ("timm_cnn", "modified_resnet"):
            return ("pixels", "features")
        return ("pixels",)

    def _stages(self) -> list[nn.Module]:
        """The CNN tower's stage modules whose outputs are the maps at strides 4, 8, 16, 32."""
        if self.tower_kind == "timm_cnn":
            trunk, info = self.visual.trunk, self.visual.trunk.feature_info
            return [trunk.get_submodule(info[i]["module"]) for i in self._indices]
        if self.tower_kind == "modified_resnet":
            return [getattr(self.visual, f"layer{i}") for i in range(1, 5)]
        raise ValueError(
            f"feature prompts need a CNN tower (timm CNN or ModifiedResNet); this one is "
            f"{self.tower_kind}: use token or pixel prompts"
        )

    @property
    def stage_channels(self) -> list[int]:
        """Channels of the CNN tower's own stage outputs at strides 4..32 (before the pyramid
        projection): the widths of feature prompts."""
        if self.tower_kind == "timm_cnn":
            info = self.visual.trunk.feature_info
            return [int(info[i]["num_chs"]) for i in self._indices]
        return [int(m[-1].conv3.out_channels) for m in self._stages()]

    @property
    def token_width(self) -> int:
        """C of the ViT tokens (the width of token prompts)."""
        if self.tower_kind != "vit":
            raise ValueError(f"a {self.tower_kind} tower has no tokens; use pixel prompts")
        return int(self.visual.transformer.width)

    @property
    def layers(self) -> nn.ModuleList:
        """The ViT's blocks in order (deep prompts enter at their inputs)."""
        if self.tower_kind != "vit":
            raise ValueError(f"a {self.tower_kind} tower has no token blocks; use pixel prompts")
        return self.visual.transformer.resblocks

    def forward(
        self,
        images: torch.Tensor,
        prompt: torch.Tensor | None = None,
        deep_prompt: list[torch.Tensor] | None = None,
        feature_prompt: dict[int, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Encode normalised images.

        Args:
            images: Bx3xHxW float, normalised with ``self.mean``/``self.std``; H and W must be
                multiples of 32 and of the patch size.
            prompt: optional visual prompt: (B or 1) x n x C tokens (open_clip ViT only; C =
                ``token_width``), or a (B or 1) x 3 x h x w pixel prompt added to the images
                (bilinearly resized to H x W if h x w differs).
            deep_prompt: optional list of (B or 1) x n x C token prompts, one per block after
                the first, replacing the prompt tokens at that block's input.
            feature_prompt: optional {level: (B or 1) x C_l x h x w} (CNN towers; level 0..3 =
                stride 4..32, C_l = ``stage_channels[level]``, h x w = 1 x 1 or the stage's
                map size) added to that stage's output, so later stages, the embedding head
                and the decoder see it; backward stops at that stage.

        Returns:
            "features": 4 maps B x C_i x H/s x W/s for s = 4, 8, 16, 32 (C_i = out_channels[i]).
            "embedding": BxE projected CLIP image embedding (not normalised), equal to
                ``model.encode_image(images)`` in eval mode.
            "head_input": (timm towers) what the tower's embedding head pooled, for a second
                head on the same features.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be Bx3xHxW, got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        step = math.lcm(32, self.tower_stride)
        if h % step or w % step:
            raise ValueError(f"image size {h}x{w} must be a multiple of {step} for this tower")
        if prompt is not None and prompt.ndim == 4:
            if deep_prompt:
                raise ValueError("deep_prompt goes with token prompts, not a pixel prompt")
            images = images + _fit_pixels(prompt, images.shape[0], (h, w)).to(images.dtype)
            prompt = None
        if prompt is not None:
            if self.tower_kind != "vit":
                raise ValueError(
                    f"token prompts need an open_clip VisionTransformer tower; this one is "
                    f"{self.tower_kind}: use a pixel prompt (B x 3 x H x W) instead"
                )
            check_prompt(prompt, images.shape[0], self.token_width, "prompt")
            for i, d in enumerate(deep_prompt or []):
                check_prompt(d, images.shape[0], self.token_width, f"deep_prompt[{i}]")
        elif deep_prompt:
            raise ValueError("deep_prompt needs prompt (the first block's tokens) as well")
        if feature_prompt:
            self._check_feature_prompt(feature_prompt, images.shape[0])
            with stage_prompts(self._stages(), feature_prompt):
                return self._forward(images, prompt, deep_prompt, h, w)
        return self._forward(images, prompt, deep_prompt, h, w)

    def _check_feature_prompt(self, prompts: dict[int, torch.Tensor], batch: int) -> None:
        chans = self.stage_channels
        for level, p in prompts.items():
            if level not in range(len(chans)):
                raise ValueError(f"feature prompt level {level!r}; use 0..3 (stride 4..32)")
            if not torch.is_tensor(p) or p.ndim != 4 or p.shape[1] != chans[level]:
                shape = tuple(p.shape) if torch.is_tensor(p) else type(p).__name__
                raise ValueError(
                    f"feature prompt for level {level} must be (B or 1) x {chans[level]} x h x w, "
                    f"got {shape}"
                )
            if p.shape[0] not in (1, batch):
                raise ValueError(f"feature prompt batch {p.shape[0]}; use 1 or {batch}")

    def _forward(self, images, prompt, deep_prompt, h: int, w: int) -> dict:
        """The tower pass proper (inputs checked, feature-prompt hooks in place)."""
        if self.tower_kind == "vit":
            grid, embedding = self._vit_forward(images, prompt, deep_prompt)
            feats = self.neck(grid, (h, w))
        elif self.tower_kind in ("timm_vit", "timm_cnn"):
            # open_clip's TimmModel.forward_intermediates, step by step, so that the embedding
            # head's input is at hand for a second head (``VLSegModel.zeroshot_head``)
            vit = self.tower_kind == "timm_vit"
            trunk = self.visual.trunk
            final, inter = trunk.forward_intermediates(
                images,
                indices=1 if vit else self._indices,
                intermediates_only=False,
                norm=vit,
                stop_early=False,
                output_fmt="NCHW",
            )
            feats = self.neck(inter[-1] if vit else inter, (h, w))
            head_input = trunk.forward_head(final)
            embedding = self.visual.head(head_input)
            return {"features": feats, "embedding": embedding, "head_input": head_input}
        else:  # modified_resnet: stages 1..4 of (stem, layer1..layer4)
            out = self.visual.forward_intermediates(images, indices=[1, 2, 3, 4])
            feats = self.neck(out["image_intermediates"], (h, w))
            embedding = out["image_features"]
        return {"features": feats, "embedding": embedding}

    def _vit_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """(1 + gh*gw) x C positional embedding, bicubic-resized from the native grid if needed."""
        pos = self.visual.positional_embedding
        nh, nw = self.visual.grid_size
        if (gh, gw) == (nh, nw):
            return pos
        cls_pos, grid_pos = pos[:1], pos[1:]
        grid_pos = grid_pos.reshape(1, nh, nw, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(gh * gw, -1)
        return torch.cat([cls_pos, grid_pos], dim=0)

    def _vit_forward(
        self,
        images: torch.Tensor,
        prompt: torch.Tensor | None = None,
        deep_prompt: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of an open_clip VisionTransformer -> (BxCxhxw grid, BxE embedding).

        Mirrors ``VisionTransformer.forward`` but resizes the positional embedding for non-native
        sizes (open_clip 3.3 has no dynamic size for its own ViT) and skips patch dropout, which
        would break the patch grid. Prompt tokens (VPT) go after the class token, without a
        positional embedding, and are removed before pooling.
        """
        v = self.visual
        x = v.conv1(images)  # (B, C, h, w)
        b, c, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1) + self._vit_pos_embed(gh, gw).to(x.dtype)
        n = 0 if prompt is None else prompt.shape[1]
        if n:
            x = torch.cat([x[:, :1], prompt.to(x.dtype).expand(b, -1, -1), x[:, 1:]], dim=1)
        x = v.ln_pre(x)
        batch_first = getattr(v.transformer, "batch_first", True)
        with deep_prompts(self.layers, deep_prompt, start=1, batch_first=batch_first):
            x = v.transformer(x)  # (B, 1 + n + h*w, C)
        if n:
            x = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)  # (B, 1 + h*w, C)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        grid = x[:, 1:]
        if v.attn_pool is None:  # ln_post has the token width: use it as the final norm
            grid = v.ln_post(grid)
        grid = grid.transpose(1, 2).reshape(b, c, gh, gw)  # (B, C, h, w)
        return grid, pooled


def _fit_pixels(prompt: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """Validate a (B or 1) x 3 x h x w pixel prompt and resize it to ``size``."""
    if prompt.shape[0] not in (1, batch) or prompt.shape[1] != 3:
        raise ValueError(f"pixel prompt must be (B or 1) x 3 x H x W, got {tuple(prompt.shape)}")
    if tuple(prompt.shape[-2:]) != tuple(size):
        prompt = F.interpolate(prompt, size=size, mode="bilinear", align_corners=False)
    return prompt
