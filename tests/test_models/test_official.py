"""wavevit_mm.models.official: the official key layout renamed to the
backbone's, and the arch read off weight shapes. The expected names are
written down beside each official key in tests/official_layout.py."""
import re

import pytest

from helpers import SEEDS, TINY, expected_backbone, official
from official_layout import ARCHS as OFFICIAL_ARCHS
from official_layout import (backbone_names, backbone_state_dict,
                             classifier_state_dict)
from wavevit_mm import WaveViT
from wavevit_mm.models import convert_official, describe_arch, infer_arch
from wavevit_mm.models.official import (convert_official_classifier,
                                        has_wavevit_weights, is_official)

ARCHS = ['s', 'b', 'l']


@pytest.mark.parametrize('arch', ARCHS)
def test_expected_names_are_exactly_the_backbone_weights(arch):
    """The oracle's names and shapes against the network itself."""
    expected = backbone_state_dict(arch)
    own = WaveViT(arch).state_dict()
    assert set(expected) == set(own)
    assert all(expected[k].shape == own[k].shape for k in own)


@pytest.mark.parametrize('arch', ARCHS)
def test_official_keys_are_renamed_to_the_backbone_names(arch):
    names = backbone_names(arch)
    converted, _ = convert_official(official(arch))
    # the same tensors, in the file's order, under the names written down
    assert list(converted) == [ours for ours in names.values() if ours]
    for key, value in official(arch).items():
        if names[key]:
            assert converted[names[key]] is value, key


@pytest.mark.parametrize('arch', ARCHS)
def test_what_the_backbone_does_not_use_is_dropped_by_reason(arch):
    _, dropped = convert_official(official(arch))
    unused = [key for key, ours in backbone_names(arch).items() if not ours]
    classification = [k for k in unused
                      if re.match(r'(post_network|head|aux_head)\.', k)]
    filters = [k for k in unused if k not in classification]
    assert dropped == {
        'classification-only entries': classification,
        'derived buffers (wavelet filters, rebuilt by the backbone)':
            filters}
    depths = OFFICIAL_ARCHS[arch]['depths']
    assert len(filters) == 5 * (depths[0] + depths[1])  # 4 DWT + 1 IDWT
    assert all(k.endswith(('.dwt.w_ll', '.dwt.w_lh', '.dwt.w_hl',
                           '.dwt.w_hh', '.idwt.filters')) for k in filters)


def test_layouts_are_told_apart():
    converted = expected_backbone('s')
    assert is_official(official('s')) and not is_official(converted)
    assert has_wavevit_weights(converted)
    assert has_wavevit_weights(WaveViT(TINY).state_dict())
    from mmdet.models.backbones import ResNet
    assert not has_wavevit_weights(ResNet(depth=18).state_dict())


@pytest.mark.parametrize('arch', ARCHS)
def test_arch_is_inferred_from_shapes(arch):
    state_dict = expected_backbone(arch)
    assert infer_arch(state_dict, WaveViT.arch_zoo) == arch
    assert infer_arch(WaveViT(arch).state_dict(), WaveViT.arch_zoo) == arch
    assert describe_arch(state_dict, WaveViT.arch_zoo).startswith(
        f'Wave-ViT-{arch.upper()} ')


def test_custom_arch_is_described_by_its_shapes():
    state_dict = WaveViT(TINY).state_dict()
    assert infer_arch(state_dict, WaveViT.arch_zoo) is None
    assert describe_arch(state_dict, WaveViT.arch_zoo) == (
        'custom Wave-ViT (stem width 8, embed dims 16/32/48/64, depths '
        '1/2/1/1)')


@pytest.mark.parametrize('arch', ARCHS)
def test_official_keys_are_renamed_to_the_whole_classifier(arch):
    """Every learned entry of the official classifier, under the name the
    mmpretrain classifier gives it; the derived filter buffers dropped."""
    converted = convert_official_classifier(official(arch))
    expected = classifier_state_dict(arch, seed=SEEDS[arch])
    assert set(converted) == set(expected)
    assert all(converted[k].equal(expected[k]) for k in expected)
    own = WaveViT(arch, final_norm=False).state_dict()
    backbone = {k[len('backbone.'):]: v for k, v in converted.items()
                if k.startswith('backbone.')}
    assert set(backbone) == set(own)
    assert describe_arch(backbone, WaveViT.arch_zoo).startswith(
        f'Wave-ViT-{arch.upper()} ')
