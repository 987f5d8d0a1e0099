import os
import sys

import pytest

# helpers shared by the tests (official_layout, toy_runs) import as
# top-level modules
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope='session')
def toy_workspace(tmp_path_factory):
    """A folder with small toy COCO and ADE20K sets under data/, where the
    toy configs' relative paths resolve."""
    from toy_runs import make_toy_data
    root = tmp_path_factory.mktemp('toy_workspace')
    make_toy_data(str(root))
    return root
