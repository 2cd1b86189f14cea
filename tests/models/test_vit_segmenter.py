"""ViT-Tiny + Segmenter decoders: the encoder is timm's ViT-Tiny/16, block features are its token
outputs without the class token, decoders follow Segmenter, input resizing and pretrained weights."""
from __future__ import annotations

import pytest
import timm
import torch

import timm.models._hub as timm_hub
from okd.models.common import PretrainedWeightsUnavailable
from okd.models.vit import MaskTransformer, RegressionTransformer, ViTSegmenter
from okd.tasks import build_tasks

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
ALL = ["segmentation", "depth", "normal"]


def test_default_encoder_is_vit_tiny_16_at_384():
    model = ViTSegmenter(build_tasks(ALL, 13))
    enc = model.encoder
    assert (enc.embed_dim, len(enc.blocks), enc.blocks[0].attn.num_heads) == (192, 12, 3)
    assert enc.blocks[0].mlp.fc1.out_features == 4 * 192
    assert enc.patch_embed.grid_size == (24, 24) and enc.num_prefix_tokens == 1
    assert enc.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # drop-path 0.1, linear schedule
    # by hand: patch embedding, class token, 577 position embeddings, 12 blocks, final LayerNorm
    # (timm's ViT-Tiny/16-384 lists 5.79M with its 193k-parameter ImageNet classifier)
    block = 2 * 384 + (192 * 576 + 576) + (192 * 192 + 192) + (192 * 768 + 768) + (768 * 192 + 192)
    expected = (16 * 16 * 3 * 192 + 192) + 192 + 577 * 192 + 12 * block + 384
    assert sum(p.numel() for p in enc.parameters()) == expected == 5_790_376 - 193_000
    for name, decoder in model.heads.items():
        assert len(decoder.decoder.blocks) == 2, name
    assert model.heads["segmentation"].decoder.queries.shape == (1, 13, 192)  # one query per class
    assert model.feature_names == tuple(f"block{i}" for i in range(1, 13))


def test_block_features_are_token_maps_without_the_class_token():
    torch.manual_seed(0)
    model = ViTSegmenter(build_tasks(["depth"]), **TINY).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        enc = model.encoder
        tokens = enc._pos_embed(enc.patch_embed(x))
        for i, block in enumerate(enc.blocks):
            tokens = block(tokens)
            patches = tokens[:, 1:]  # class token removed
            grid = patches.reshape(2, 4, 4, 32).permute(0, 3, 1, 2)  # row-major patch grid
            torch.testing.assert_close(out.features[f"block{i + 1}"], grid)
        torch.testing.assert_close(out.features["encoder"], enc.norm(tokens)[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2))


def test_mask_transformer_scores_are_cosines_of_patches_and_class_embeddings():
    torch.manual_seed(0)
    decoder = MaskTransformer(in_dim=16, num_classes=5, dim=16, depth=2, num_heads=2).eval()
    tokens = torch.randn(3, 6, 16)
    with torch.no_grad():
        scores = decoder.decoder(tokens)
        assert scores.shape == (3, 6, 5)
        assert scores.abs().max() <= 1.0 + 1e-6  # unit patch . unit class embedding
        masks = decoder(tokens)
    # then LayerNorm over the classes (initial affine = identity)
    mean, var = scores.mean(-1, keepdim=True), scores.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(masks, (scores - mean) / torch.sqrt(var + 1e-5))


def test_regression_decoder_maps_query_scores_through_the_mlp():
    decoder = RegressionTransformer(in_dim=16, out_channels=3, dim=16, depth=2, num_heads=2, activation="tanh")
    assert decoder.decoder.queries.shape == (1, 16, 16)  # as many queries as the width (the release)
    assert [m.__class__.__name__ for m in decoder.mlp] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert decoder.mlp[0].in_features == 16 and decoder.mlp[-1].out_features == 3
    assert decoder(torch.randn(2, 6, 16)).shape == (2, 6, 3)
    with pytest.raises(ValueError, match="activation"):
        RegressionTransformer(16, 1, 16, activation="swish")


@pytest.mark.parametrize("resize, size, grid", [("nearest", (24, 40), (4, 4)), ("bilinear", (40, 24), (4, 4)),
                                               ("none", (32, 48), (4, 6))])
def test_input_resizing(resize, size, grid):
    model = ViTSegmenter(build_tasks(ALL, 7), resize=resize, **TINY).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size))
    assert out.features["block1"].shape[-2:] == grid
    assert {k: tuple(v.shape[-2:]) for k, v in out.predictions.items()} == {k: size for k in ALL}


def test_resize_none_needs_patch_multiples_and_bad_options_fail_early():
    model = ViTSegmenter(build_tasks(["depth"]), resize="none", **TINY)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(torch.rand(2, 3, 30, 32))
    with pytest.raises(ValueError, match="resize must be one of"):
        ViTSegmenter(build_tasks(["depth"]), **{**TINY, "resize": "area"})
    with pytest.raises(ValueError, match="multiples of patch_size"):
        ViTSegmenter(build_tasks(["depth"]), **{**TINY, "img_size": 36})


# ---------------------------------------------------------------------------------------------
# Pretrained weights (never from the network in tests)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def offline_hf(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("offline: no connection to huggingface.co")

    monkeypatch.setattr(timm_hub, "hf_hub_download", no_network)


def test_pretrained_offline_explains_where_to_put_the_weights(offline_hf):
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        ViTSegmenter(build_tasks(["depth"]), img_size=32, pretrained=True)
    message = str(info.value)
    assert "models--timm--vit_tiny_patch16_384.augreg_in21k_ft_in1k" in message  # the HF cache folder
    assert "backbone.weights_file=" in message
    assert "no connection to huggingface.co" in message  # it failed at the (patched) hub download


def test_pretrained_from_a_local_file_resamples_position_embeddings(offline_hf, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_384", num_classes=1000)
    path = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), path)
    model = ViTSegmenter(build_tasks(["depth"]), img_size=64, pretrained=True, weights_file=str(path))
    torch.testing.assert_close(model.encoder.patch_embed.proj.weight, source.patch_embed.proj.weight)
    torch.testing.assert_close(model.encoder.blocks[11].mlp.fc2.weight, source.blocks[11].mlp.fc2.weight)
    assert model.encoder.pos_embed.shape == (1, 1 + 4 * 4, 192)  # 24x24 grid resampled to 4x4
    with pytest.raises(FileNotFoundError, match="no such file"):
        ViTSegmenter(build_tasks(["depth"]), img_size=64, pretrained=True, weights_file=str(tmp_path / "nope.pth"))
