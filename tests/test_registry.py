"""``import wavevit_mm`` registers WaveViT where mmdet/mmseg users build."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.registry import DefaultScope

import wavevit_mm
from helpers import TINY
from wavevit_mm import WaveViT


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_builds_from_each_scope(scope):
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type='WaveViT', arch=TINY,
                                    out_indices=(0, 2)))
    assert isinstance(model, WaveViT)
    assert [o.shape[1] for o in model(torch.randn(1, 3, 32, 32))] == [16, 48]


def test_registered_in_both_registries():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    assert DET.get('WaveViT') is WaveViT
    assert SEG.get('WaveViT') is WaveViT
    assert {'mmdet', 'mmseg'} <= set(wavevit_mm.register_backbone())


@pytest.mark.slow  # a fresh interpreter importing torch, mmdet
def test_config_file_with_custom_imports_builds_backbone(tmp_path):
    """A fresh interpreter: only the config's custom_imports registers it."""
    config = tmp_path / 'backbone.py'
    config.write_text(textwrap.dedent(f'''
        default_scope = 'mmdet'
        custom_imports = dict(imports=['wavevit_mm'],
                              allow_failed_imports=False)
        model = dict(type='WaveViT', arch={TINY!r}, drop_path_rate=0.1)
    '''))
    script = textwrap.dedent(f'''
        import sys, torch
        from mmengine.config import Config
        from mmdet.registry import MODELS
        assert 'wavevit_mm' not in sys.modules
        cfg = Config.fromfile({str(config)!r})
        model = MODELS.build(cfg.model).eval()
        outs = model(torch.randn(1, 3, 64, 64))
        print(type(model).__name__, [tuple(o.shape) for o in outs])
    ''')
    result = subprocess.run([sys.executable, '-c', script],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ('WaveViT [(1, 16, 16, 16), (1, 32, 8, 8), (1, 48, 4, 4), '
            '(1, 64, 2, 2)]') in result.stdout


def test_broken_optional_package_is_skipped_with_one_warning(
        tmp_path, monkeypatch):
    """An installed mmpretrain that does not import (its torchvision built
    for another torch) leaves WaveViT registered for mmdet and mmseg, with
    one warning naming it and its error."""
    package = tmp_path / 'mmpretrain'
    package.mkdir()
    (package / '__init__.py').write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning) as caught:
        registered = wavevit_mm.register_backbone()
    assert registered == ['mmdet', 'mmseg']
    assert len(caught) == 1
    assert ('WaveViT is registered for mmdet and mmseg, but not for '
            'mmpretrain (RuntimeError: operator torchvision::nms does not '
            'exist)') in str(caught[0].message)


def test_no_usable_package_is_an_import_error(tmp_path, monkeypatch):
    package = tmp_path / 'mmbroken'
    package.mkdir()
    (package / '__init__.py').write_text("raise ImportError('no torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(wavevit_mm.registry, 'REGISTRY_PACKAGES',
                        ('mmbroken', 'mm_not_installed'))
    with pytest.raises(ImportError, match=r'none of them imports: mmbroken '
                       r'\(ImportError: no torch\)'):
        wavevit_mm.register_backbone()
