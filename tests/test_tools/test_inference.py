"""wavevit_mm.tools.inference: the demo's image reading. (The demo itself
runs in tests/test_tools/test_e2e.py and tests/test_tools/test_bad_inputs.py.)"""
import cv2
import numpy as np
import pytest

from wavevit_mm.errors import DataError
from wavevit_mm.tools.inference import read_image


@pytest.mark.parametrize('shape,dtype', [((40, 60), np.uint8),
                                         ((40, 60), np.uint16),
                                         ((40, 60, 3), np.uint8),
                                         ((40, 60, 4), np.uint8)],
                         ids=['gray', 'gray_16bit', 'color', 'rgba'])
def test_every_image_is_read_as_rgb_uint8(tmp_path, shape, dtype):
    path = str(tmp_path / 'image.png')
    image = np.random.default_rng(0).integers(
        0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    assert cv2.imwrite(path, image)
    rgb = read_image(path)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    if shape == (40, 60, 3):  # OpenCV writes BGR
        assert np.array_equal(rgb, image[..., ::-1])


def test_missing_or_unreadable_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='image file not found'):
        read_image(str(tmp_path / 'gone.jpg'))
    path = tmp_path / 'text.jpg'
    path.write_text('this is not an image')
    with pytest.raises(DataError, match=f'^{path} is not an image file that '
                       r'OpenCV can read \(20 bytes\)$'):
        read_image(str(path))
