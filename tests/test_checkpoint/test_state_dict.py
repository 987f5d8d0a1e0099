"""wavevit_mm.checkpoint.state_dict: where the weights sit in a loaded
checkpoint, and what keeps a state dict from loading strictly."""
import pytest
import torch

from wavevit_mm.checkpoint import (CheckpointError, fit_problems,
                                   unwrap_state_dict)

WEIGHTS = {'a.weight': torch.zeros(2, 3), 'a.bias': torch.zeros(2)}


@pytest.mark.parametrize('checkpoint,entry', [
    (WEIGHTS, None),
    (dict(state_dict=WEIGHTS, meta=dict(epoch=1)), 'state_dict'),
    (dict(model=WEIGHTS, epoch=1), 'model'),
    (dict(state_dict={'module.' + k: v for k, v in WEIGHTS.items()}),
     'state_dict'),
])
def test_weights_are_found_in_every_wrapping(checkpoint, entry):
    state_dict, found = unwrap_state_dict(checkpoint)
    assert state_dict == WEIGHTS and found == entry


@pytest.mark.parametrize('checkpoint,message', [
    (dict(epoch=3, arch='s'), "found the entries 'epoch', 'arch'"),
    ({}, 'found the entries (none)'),
    ([torch.zeros(1)], 'holds a list, not a state dict'),
])
def test_no_state_dict_is_an_error_saying_what_is_there(checkpoint,
                                                         message):
    with pytest.raises(CheckpointError) as error:
        unwrap_state_dict(checkpoint)
    assert message in str(error.value)


def test_fit_problems_name_missing_extra_and_mis_shaped_keys():
    own = dict(WEIGHTS, **{'b.weight': torch.zeros(4)})
    given = {'a.weight': torch.zeros(3, 3), 'a.bias': torch.zeros(2),
             'c.weight': torch.zeros(1)}
    assert fit_problems(own, own, 'backbone') == []
    assert fit_problems(given, own, 'backbone') == [
        '1 backbone weights are missing from the file (e.g. b.weight)',
        '1 are not in the backbone (e.g. c.weight)',
        '1 have another shape (e.g. a.weight: (3, 3) in the file, (2, 3) '
        'in the backbone)']
