"""wavevit_mm.tools.check_fits: the checkpoint of a whole model
(tools/test.py, tools/image_demo.py) must fit the model built from the
config; when it does not, the error says what the file holds."""
import pytest
import torch
from torch import nn

from helpers import TINY, official, save
from wavevit_mm import WaveViT
from wavevit_mm.tools import check_fits, read_model_weights
from wavevit_mm.checkpoint import CheckpointError


class Detector(nn.Module):
    def __init__(self, arch=TINY):
        super().__init__()
        self.backbone = WaveViT(arch)
        self.neck = nn.Conv2d(64, 4, 1)


def whole_model_weights(backbone):
    return dict({'backbone.' + k: v for k, v in backbone.items()},
                **{'neck.' + k: v for k, v in nn.Conv2d(64, 4, 1)
                   .state_dict().items()})


def test_checkpoint_of_the_same_model_fits(tmp_path):
    """The file's weights are read as saved (every key, every value) and
    fit the model."""
    model = Detector()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    path = save(tmp_path, dict(state_dict=saved, meta={}))
    weights, _ = read_model_weights(path)
    check_fits(weights, model, path)
    assert set(weights) == set(saved)
    for key, value in saved.items():
        assert weights[key].dtype == value.dtype, key
        assert torch.equal(weights[key], value), key


@pytest.mark.parametrize('weights,note', [
    (lambda: whole_model_weights(WaveViT('s').state_dict()),
     "Its backbone is Wave-ViT-S (stem width 32, embed dims 64/128/320/448, "
     "depths 3/4/6/3), the config's is custom Wave-ViT (stem width 8, embed "
     "dims 16/32/48/64, depths 1/2/1/1)."),
    (lambda: whole_model_weights(nn.Conv2d(3, 8, 3).state_dict()),
     'Its backbone is not a Wave-ViT (its weights start with weight, '
     'bias).'),
    (lambda: official('s'),
     'It holds backbone weights only: use it as '
     'model.backbone.init_cfg.checkpoint to train from it.'),
    (lambda: {'classifier.weight': torch.zeros(2, 2)},
     'It has no backbone weights at all (its weights start with '
     'classifier.weight)'),
], ids=['other_arch', 'other_backbone', 'backbone_only', 'no_backbone'])
def test_checkpoint_that_does_not_fit_says_what_it_holds(weights, note):
    with pytest.raises(CheckpointError) as error:
        check_fits(weights(), Detector(), 'model.pth')
    message = str(error.value)
    assert message.startswith('model.pth does not fit the model built from '
                              'the config: ')
    assert note in message
    assert message.endswith('It was not used. Pass a checkpoint saved by '
                            'training this config.')


def test_file_without_a_state_dict_is_an_error_naming_it(tmp_path):
    path = save(tmp_path, dict(epoch=3))
    with pytest.raises(CheckpointError,
                       match=f'^{path} holds no state dict of tensors'):
        read_model_weights(path)
