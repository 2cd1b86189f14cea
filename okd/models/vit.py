"""ViT encoder + Segmenter-style decoders per task: the paper's transformer student (docs/okd.md#networks).

Encoder: timm's ``VisionTransformer`` (Dosovitskiy et al., ICLR 2021); the defaults are ViT-Tiny/16
(width 192, depth 12, 3 heads, MLP ratio 4, drop-path 0.1) at 384x384, with one class token.
Decoders (Strudel et al., "Segmenter", ICCV 2021, §3.2), one per task, each with ``decoder_depth``
(2) transformer blocks over the projected patch tokens and learned query tokens:

* segmentation, :class:`MaskTransformer`: one query per class; masks = L2-normalised projected
  patches . L2-normalised projected class embeddings, then LayerNorm over classes (Segmenter eq. 4);
* depth / normals, :class:`RegressionTransformer`: the OKD release's regression decoder -- the same
  patch/query dot product with ``num_queries`` learned queries gives a per-patch descriptor, an MLP
  (hidden 128, 64; ReLU for depth, Tanh for normals, as released) maps it to the task's channels.

Predictions are made on the patch grid and bilinearly upsampled to the input size.

Input size: position embeddings are made for ``img_size``. With ``resize: nearest`` (the paper
resized images and targets to 384x384 with nearest neighbour) or ``bilinear`` the model resizes
its input to ``img_size`` and upsamples its predictions straight to the *input's* size, so losses
and metrics are computed at the dataset's resolution; ``resize: none`` runs at the input's own size
(which must be a multiple of the patch size) with position embeddings resampled on the fly.

Features for distillation (one pass): ``block1`` .. ``block{depth}``, the token outputs of every
encoder block with the class token removed, as B x C x h x w maps on the patch grid; the decoders
read ``encoder`` (the final LayerNorm's output, same layout): the shared representation.
Deviation from the release: it prepended one learned token per task instead of a class token (both
are dropped before the decoders); a class token keeps the pretrained ViT weights usable as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import timm
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from okd.models.base import ModelOutput, MultiTaskModel
from okd.models.common import InputNormalization, PretrainedWeightsUnavailable, TaskModules, dense_predictions
from okd.tasks import Task

RESIZE_MODES = ("nearest", "bilinear", "none")
DEFAULT_WEIGHTS = "vit_tiny_patch16_384.augreg_in21k_ft_in1k"


def _init_linear(module: nn.Module) -> None:
    """Segmenter's initialisation: truncated normal (0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class QueryTransformer(nn.Module):
    """Blocks over [projected patch tokens; learned queries], then patch . query dot products.

    Returns B x N x Q: for each patch, its (projected) dot product with each (projected) query.
    """

    def __init__(self, in_dim: int, num_queries: int, dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, dropout: float, drop_path: float, normalize: bool) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"decoder_depth must be >= 1, got {depth}")
        self.normalize = normalize
        self.proj_dec = nn.Linear(in_dim, dim)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # linear, as in the encoder
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=dropout, drop_path=r) for r in rates)
        self.decoder_norm = nn.LayerNorm(dim)
        self.apply(_init_linear)
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        trunc_normal_(self.queries, std=0.02)
        scale = dim ** -0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(dim, dim))
        self.proj_queries = nn.Parameter(scale * torch.randn(dim, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        n = tokens.shape[1]
        x = torch.cat([self.proj_dec(tokens), self.queries.expand(tokens.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches, queries = x[:, :n] @ self.proj_patch, x[:, n:] @ self.proj_queries
        if self.normalize:
            patches, queries = F.normalize(patches, dim=-1), F.normalize(queries, dim=-1)
        return patches @ queries.transpose(1, 2)


class MaskTransformer(nn.Module):
    """Segmenter's mask transformer: class embeddings as queries, LayerNorm over the class scores."""

    def __init__(self, in_dim: int, num_classes: int, dim: int, depth: int = 2, num_heads: int = 3,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.decoder = QueryTransformer(in_dim, num_classes, dim, depth, num_heads, mlp_ratio, dropout,
                                        drop_path, normalize=True)
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.mask_norm(self.decoder(tokens))  # B x N x classes


class RegressionTransformer(nn.Module):
    """The release's depth/normal decoder: query dot products, then an MLP to the task's channels."""

    def __init__(self, in_dim: int, out_channels: int, dim: int, depth: int = 2, num_heads: int = 3,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, drop_path: float = 0.0,
                 num_queries: int | None = None, hidden: Sequence[int] = (128, 64),
                 activation: str = "relu") -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}.get(activation)
        if act is None:
            raise ValueError(f"regression decoder activation must be relu, tanh or gelu, got {activation!r}")
        num_queries = dim if num_queries is None else num_queries
        self.decoder = QueryTransformer(in_dim, num_queries, dim, depth, num_heads, mlp_ratio, dropout,
                                        drop_path, normalize=False)
        sizes = [num_queries, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(sizes[-1], out_channels))
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.mlp(self.decoder(tokens))  # B x N x channels


def hf_cache_dir(weights: str) -> Path:
    """Hugging Face hub cache folder of timm's weights ``weights`` (``architecture.tag``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--timm--{weights}"


def create_encoder(
    img_size: tuple[int, int], patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
    drop_path: float, dropout: float, dynamic: bool, pretrained: bool, weights: str, weights_file: str | None,
) -> VisionTransformer:
    """timm ViT without classifier; pretrained weights from ``weights_file`` or the HF hub (cache)."""
    arch = dict(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_ratio=mlp_ratio, num_classes=0, drop_path_rate=drop_path, proj_drop_rate=dropout,
                pos_drop_rate=dropout, dynamic_img_size=dynamic)
    if not pretrained:
        return VisionTransformer(**arch)
    overlay = None
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone.weights_file={weights_file!r}: no such file")
        # .npz is the original JAX checkpoint (timm's custom loader); anything else is a state dict.
        overlay = dict(file=str(path), custom_load=path.suffix == ".npz")
    try:
        return timm.create_model(weights, pretrained=True, pretrained_cfg_overlay=overlay, **arch)
    except Exception as err:  # noqa: BLE001 -- download, cache and shape errors all end here
        where = (f"the file {weights_file}" if weights_file is not None else
                 f"the Hugging Face hub (timm/{weights}; cache {hf_cache_dir(weights)})")
        # Not chained: okd.app reports the innermost cause, and this message is the useful one.
        raise PretrainedWeightsUnavailable(
            f"backbone.pretrained=true: could not load ViT weights {weights} from {where}: "
            f"{type(err).__name__}: {err}. Offline: download model.safetensors from "
            f"https://huggingface.co/timm/{weights} on a machine with internet access and pass "
            f"backbone.weights_file=/path/to/model.safetensors (a .pth state dict or the original .npz also "
            f"work), or copy that machine's {hf_cache_dir(weights).name} folder into the HF cache "
            f"{hf_cache_dir(weights).parent} (with HF_HUB_OFFLINE=1); the architecture options must match the "
            "weights (ViT-Tiny/16: embed_dim 192, depth 12, num_heads 3, patch_size 16); "
            "or set backbone.pretrained=false") from None


class ViTSegmenter(TaskModules, MultiTaskModel):
    """Hard parameter sharing on a ViT: shared encoder, one Segmenter-style decoder per task.

    Shared parameters: the encoder; task parameters: the decoders; last shared layer: the second
    linear layer of the last block's MLP (the last weight matrix before the final LayerNorm).

    Args:
        tasks: the task list (from the dataset).
        img_size: the encoder's input size (int or [H, W]); 384 in the paper.
        resize: ``nearest`` | ``bilinear`` (resize inputs to img_size) | ``none`` (run at the input size).
        patch_size, embed_dim, depth, num_heads, mlp_ratio, drop_path, dropout: the encoder (ViT-Tiny/16
            defaults; dropout 0 as in timm).
        decoder_depth, decoder_dropout, decoder_drop_path: Segmenter decoders (2, 0.1, 0.0).
        regression_queries: queries of the depth/normal decoders (null: embed_dim, as released).
        pretrained: load timm's ImageNet weights ``weights`` (ViT-Tiny/16 at 384: ImageNet-21k
            pre-training, ImageNet-1k fine-tuning); offline see ``weights_file``.
        weights_file: local checkpoint to load instead of downloading.
        normalize_input: standardise inputs with the weights' mean/std (0.5/0.5; off as released).
    """

    representation_key = "encoder"

    def __init__(
        self,
        tasks: Sequence[Task],
        img_size: int | Sequence[int] = 384,
        resize: str = "nearest",
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        dropout: float = 0.0,
        decoder_depth: int = 2,
        decoder_dropout: float = 0.1,
        decoder_drop_path: float = 0.0,
        regression_queries: int | None = None,
        pretrained: bool = False,
        weights: str = DEFAULT_WEIGHTS,
        weights_file: str | None = None,
        normalize_input: bool = False,
    ) -> None:
        super().__init__(tasks)
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(size) != 2 or any(s % patch_size for s in size):
            raise ValueError(f"ViT img_size must be one or two multiples of patch_size={patch_size}, got {img_size}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"ViT resize must be one of {RESIZE_MODES}, got {resize!r}")
        if embed_dim % num_heads:
            raise ValueError(f"ViT embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.img_size, self.resize, self.patch_size = size, resize, patch_size
        self.normalize = InputNormalization(*(((0.5,) * 3, (0.5,) * 3) if normalize_input else (None, None)))
        self.encoder = create_encoder(size, patch_size, embed_dim, depth, num_heads, mlp_ratio, drop_path, dropout,
                                      resize == "none", pretrained, weights, weights_file)
        self.feature_names = tuple(f"block{i + 1}" for i in range(depth))
        self.distillation_stages = self.feature_names  # every transformer block (the paper's transformer protocol)
        common = dict(dim=embed_dim, depth=decoder_depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                      dropout=decoder_dropout, drop_path=decoder_drop_path)
        for t in self.tasks:
            if t.name == "segmentation":
                self.heads[t.name] = MaskTransformer(embed_dim, t.channels, **common)
            else:
                self.heads[t.name] = RegressionTransformer(
                    embed_dim, t.channels, num_queries=regression_queries,
                    activation="tanh" if t.name == "normal" else "relu", **common)

    def _encoder_input(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        if self.resize == "none":
            if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
                raise ValueError(f"ViT with resize=none needs input sizes divisible by patch_size="
                                 f"{self.patch_size}, got {tuple(x.shape[-2:])}")
            return x
        if tuple(x.shape[-2:]) == self.img_size:
            return x
        kwargs = {"align_corners": False} if self.resize == "bilinear" else {}
        return F.interpolate(x, size=self.img_size, mode=self.resize, **kwargs)

    def trunk(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        final, blocks = self.encoder.forward_intermediates(self._encoder_input(x), output_fmt="NCHW")
        b, c, h, w = blocks[-1].shape
        tokens = final[:, self.encoder.num_prefix_tokens:]
        representation = tokens.transpose(1, 2).reshape(b, c, h, w)
        return representation, dict(zip(self.feature_names, blocks))

    def forward(self, x: Tensor) -> ModelOutput:
        representation, features = self.trunk(x)
        features[self.representation_key] = representation
        b, _, h, w = representation.shape
        tokens = representation.flatten(2).transpose(1, 2)
        raw = {t.name: self.heads[t.name](tokens).transpose(1, 2).reshape(b, -1, h, w) for t in self.tasks}
        return ModelOutput(dense_predictions(self.tasks, raw, x.shape[-2:]), features)

    def last_shared_layer(self) -> nn.Module:
        return self.encoder.blocks[-1].mlp.fc2
