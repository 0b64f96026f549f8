"""Model behaviour of our own: shapes, init, backbone, fixes over transformers (checked against timm), errors."""

from functools import partial

import pytest
import torch

from bigtransfer import BitBackbone, BitConfig, BitForImageClassification, BitModel
from bigtransfer.checkpoints.timm import config_from_timm_state_dict, timm_to_bit_state_dict
from helpers import TINY, import_timm, max_abs_diff, randomize_norms


def tiny_model(cls=BitForImageClassification, **overrides):
    torch.manual_seed(0)
    return randomize_norms(cls(BitConfig(**{**TINY, **overrides}))).eval()


def test_default_shapes_at_224():
    with torch.device("meta"):
        outputs = BitModel(BitConfig())(torch.empty(2, 3, 224, 224), output_hidden_states=True)
    assert [tuple(h.shape) for h in outputs.hidden_states] == [
        (2, 64, 56, 56), (2, 256, 56, 56), (2, 512, 28, 28), (2, 1024, 14, 14), (2, 2048, 7, 7),
    ]  # fmt: skip
    assert outputs.last_hidden_state.shape == (2, 2048, 7, 7)
    assert outputs.pooler_output.shape == (2, 2048, 1, 1)


def test_hidden_states_end_before_the_final_norm():
    model = tiny_model(BitModel)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), output_hidden_states=True)
    assert not torch.allclose(out.hidden_states[-1], out.last_hidden_state)
    assert torch.allclose(model.norm(out.hidden_states[-1]), out.last_hidden_state)


def test_weight_init_is_kaiming_fan_out_and_identity_norms():
    torch.manual_seed(0)
    model = BitModel(BitConfig())
    conv = model.encoder.stages[3].layers[1].conv2.weight  # 512 out × 3 × 3 → fan_out 4608
    assert abs(conv.std().item() - (2 / 4608) ** 0.5) < 1e-3
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)


def test_outputs_support_attributes_keys_indices_and_tuples():
    model = tiny_model()
    out = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    assert out[0] is out.loss is out["loss"] and out[1] is out.logits
    assert out.keys() == ["loss", "logits"] and len(out.to_tuple()) == 2
    with pytest.raises(KeyError, match="hidden_states"):
        out["hidden_states"]


def test_config_flags_are_the_defaults_for_forward():
    model = tiny_model(output_hidden_states=True, return_dict=False)
    logits, hidden_states = model(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 3) and len(hidden_states) == 5


def test_batch_rows_equal_single_image_runs():
    model, x = tiny_model(), torch.randn(4, 3, 40, 40)
    with torch.no_grad():
        batched = model(x).logits
        single = torch.cat([model(x[i : i + 1]).logits for i in range(4)])
    assert max_abs_diff(batched, single) < 1e-5


def test_no_head_gives_pooled_features():
    model = tiny_model(num_labels=0)
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 64)


def test_backbone_channels_and_attributes():
    backbone = tiny_model(BitBackbone, out_features=["stage2", "stage3", "stage4"])
    assert backbone.channels == [16, 32, 64]
    assert backbone.out_feature_channels == {"stem": 16, "stage1": 8, "stage2": 16, "stage3": 32, "stage4": 64}
    maps = backbone(torch.randn(3, 3, 32, 32)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(3, 16, 4, 4), (3, 32, 2, 2), (3, 64, 1, 1)]
    backbone.out_features = None
    assert backbone.channels == [64] and backbone.out_indices == [4]


def test_backbone_hidden_states_only_when_asked():
    backbone = tiny_model(BitBackbone)
    out = backbone(torch.randn(1, 3, 32, 32))
    assert out.hidden_states is None and out.attentions is None
    assert len(backbone(torch.randn(1, 3, 32, 32), output_hidden_states=True).hidden_states) == 5


def test_backbone_does_not_run_stages_it_does_not_return(monkeypatch):
    backbone = tiny_model(BitBackbone, out_features=["stage1"])

    def fail(*args):
        raise AssertionError("stage 4 should not run")

    monkeypatch.setattr(backbone.bit.encoder.stages[3], "forward", fail)
    assert backbone(torch.randn(1, 3, 32, 32)).feature_maps[0].shape == (1, 8, 8, 8)


def test_drop_path_is_seeded_in_training_and_off_in_eval():
    model = tiny_model(drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(3)
    first = model(x).logits
    torch.manual_seed(3)
    assert torch.equal(first, model(x).logits)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)


def test_gradients_reach_every_parameter():
    model = tiny_model().train()
    model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2])).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_cached_standardised_weights_follow_parameter_updates():
    model = tiny_model()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x).logits
        model.bit.embedder.convolution.weight.mul_(-1.0)
        after = model(x).logits
    fresh = BitForImageClassification(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(before, after)
        assert torch.equal(after, fresh(x).logits)


def test_a_model_built_under_inference_mode_runs():
    with torch.inference_mode():
        model = tiny_model()
        assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


def test_a_frozen_model_gives_input_gradients_after_predicting_under_inference_mode():
    model = tiny_model().requires_grad_(False)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x).logits
    pixels = x.clone().requires_grad_(True)
    logits = model(pixels).logits
    logits[0, 0].backward()
    assert torch.equal(logits.detach(), expected) and pixels.grad.abs().sum() > 0


def test_torch_export_matches_eager():
    model = tiny_model(global_padding="same", layer_type="bottleneck", embedding_dynamic_padding=True)
    x = torch.randn(2, 3, 40, 40)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert max_abs_diff(exported.module()(x).logits, model(x).logits) < 1e-5
        assert torch.isfinite(model(x).logits).all()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 0.05), (torch.bfloat16, 0.3)])
def test_half_precision_standardises_in_float32(dtype, tolerance):
    model = tiny_model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x).logits
        model.bit.encoder.stages[0].layers[0].conv2.weight.fill_(0.5)  # zero variance: 1/sqrt(1e-8) in fp32
        reference = model(x).logits
        half = model.to(dtype)(x.to(dtype)).logits
    assert torch.isfinite(half).all()
    assert max_abs_diff(half, reference) < tolerance * reference.abs().max().item()


def test_valid_padding_runs_and_only_shrinks_the_stem():
    model = tiny_model(BitModel, global_padding="valid")
    out = model(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert out.hidden_states[0].shape[-1] == 15  # conv 7/2 without padding: 29, +1px border, pool 3/2: 15
    assert out.last_hidden_state.shape == (1, 64, 2, 2)


def test_wrong_channel_count_is_explained():
    with pytest.raises(ValueError, match="channel dimension.*num_channels=3"):
        tiny_model()(torch.randn(1, 32, 32, 3))


def test_missing_batch_axis_is_explained():
    with pytest.raises(ValueError, match=r"4-D.*pixel_values\[None\]"):
        tiny_model()(torch.randn(3, 32, 32))


def test_groups_that_do_not_divide_a_width_are_explained():
    with pytest.raises(ValueError, match="num_groups=3"):
        BitModel(BitConfig(**{**TINY, "num_groups": 3}))


# -- the transformers defects we fix, checked against timm ----------------------------------------


def timm_resnetv2(width_factor=1, output_stride=32, num_groups=1):
    timm = import_timm()
    from timm.layers import GroupNormAct, StdConv2d
    from timm.models.resnetv2 import ResNetV2

    torch.manual_seed(0)
    model = ResNetV2(
        layers=TINY["depths"], channels=tuple(TINY["hidden_sizes"]), num_classes=5, width_factor=width_factor,
        stem_chs=TINY["embedding_size"], stem_type="fixed", output_stride=output_stride,
        conv_layer=partial(StdConv2d, eps=1e-8), norm_layer=partial(GroupNormAct, num_groups=num_groups),
    )  # fmt: skip
    assert timm is not None
    return randomize_norms(model).eval()


def ours_from_timm(timm_model, **config):
    ours = BitForImageClassification(BitConfig(**{**TINY, "num_labels": 5, **config})).eval()
    ours.load_state_dict(timm_to_bit_state_dict(timm_model.state_dict()))
    return ours


@pytest.mark.parametrize("output_stride", [16, 8])
def test_preactivation_dilation_matches_timm(output_stride):
    theirs = timm_resnetv2(output_stride=output_stride)
    ours = ours_from_timm(theirs, output_stride=output_stride)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(theirs(x), ours(x).logits) < 1e-5
        assert ours.bit(x).last_hidden_state.shape[-1] == 64 // output_stride


def test_width_factor_matches_timm():
    theirs = timm_resnetv2(width_factor=2)
    ours = ours_from_timm(theirs, width_factor=2)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert max_abs_diff(theirs(x), ours(x).logits) < 1e-5


@pytest.mark.parametrize(
    "name", ["resnetv2_50x3_bit", "resnetv2_101x3_bit", "resnetv2_152x2_bit", "resnetv2_152x4_bit"]
)
def test_real_wide_layouts_have_timm_shapes(name):
    timm = import_timm()
    with torch.device("meta"):
        reference = timm_to_bit_state_dict(timm.create_model(name, pretrained=False).state_dict())
        config = BitConfig(**config_from_timm_state_dict(timm.create_model(name, pretrained=False).state_dict()))
        ours = BitForImageClassification(config).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


@pytest.mark.slow
def test_r50x3_forward_matches_timm():
    timm = import_timm()
    torch.manual_seed(0)
    theirs = randomize_norms(timm.create_model("resnetv2_50x3_bit", pretrained=False)).eval()
    state = theirs.state_dict()
    ours = BitForImageClassification(BitConfig(**config_from_timm_state_dict(state))).eval()
    ours.load_state_dict(timm_to_bit_state_dict(state))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert max_abs_diff(theirs(x), ours(x).logits) < 1e-4
