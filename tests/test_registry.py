"""``import wavevit_mm`` registers WaveViT in mmengine's root registry,
where mmdet's, mmseg's and mmpretrain's registries find it as their
parent's, and the classifier in mmpretrain's where mmpretrain imports."""
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


def test_registered_once_in_mmengines_root_registry():
    from mmdet.registry import MODELS as DET
    from mmengine.registry import MODELS as ROOT
    from mmseg.registry import MODELS as SEG
    assert ROOT.module_dict['WaveViT'] is WaveViT
    assert 'WaveViT' not in DET.module_dict
    assert 'WaveViT' not in SEG.module_dict
    assert DET.get('WaveViT') is WaveViT
    assert SEG.get('WaveViT') is WaveViT


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


def test_broken_mmpretrain_is_skipped_with_one_warning(tmp_path,
                                                       monkeypatch):
    """An installed mmpretrain that does not import (its torchvision built
    for another torch) leaves the classifier unregistered, with one warning
    naming it and its error, and the backbone buildable as before."""
    package = tmp_path / 'mmpretrain'
    package.mkdir()
    (package / '__init__.py').write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith('mmpretrain')] + [
            'wavevit_mm.models.classification']:
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.warns(UserWarning) as caught:
        assert wavevit_mm.register_classifier() is False
    assert len(caught) == 1
    assert ('the WaveViT classifier is not registered for mmpretrain '
            '(RuntimeError: operator torchvision::nms does not exist)'
            ) in str(caught[0].message)
    from mmdet.registry import MODELS
    assert MODELS.get('WaveViT') is WaveViT


@pytest.mark.slow  # a fresh interpreter importing torch and mmengine
def test_imports_and_builds_without_any_downstream_package():
    """mmdet, mmseg and mmpretrain unimportable: ``import wavevit_mm``
    neither needs nor imports them, and mmengine's own registry builds the
    backbone."""
    script = textwrap.dedent(f'''
        import sys, torch
        for name in ('mmdet', 'mmseg', 'mmpretrain'):
            sys.modules[name] = None  # import raises ModuleNotFoundError
        import wavevit_mm
        from mmengine.registry import MODELS
        model = MODELS.build(dict(type='WaveViT', arch={TINY!r}))
        outs = model(torch.randn(1, 3, 32, 32))
        print(type(model).__name__, [tuple(o.shape) for o in outs])
    ''')
    result = subprocess.run([sys.executable, '-W', 'error::UserWarning',
                             '-c', script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert ('WaveViT [(1, 16, 8, 8), (1, 32, 4, 4), (1, 48, 2, 2), '
            '(1, 64, 1, 1)]') in result.stdout
