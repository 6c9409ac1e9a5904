"""Lab <-> RGB: known values from skimage 0.26 (rgb2lab / lab2rgb, D65, 2 degrees) and round trips."""

import pytest
import torch

from models.color import grey_rgb, l_ab_to_rgb, lab_to_rgb, luminance, rgb_to_lab

# skimage.color.rgb2lab of RGB in [0, 1] (printed by skimage 0.26.0, float64).
SKIMAGE_RGB2LAB = [
    ([1.0, 0.0, 0.0], [53.24058794, 80.09230823, 67.20275104]),
    ([0.0, 1.0, 0.0], [87.73509949, -86.18302974, 83.17970318]),
    ([0.0, 0.0, 1.0], [32.29567257, 79.18559091, -107.85730021]),
    ([1.0, 1.0, 1.0], [100.0, -2.45494e-03, 4.65342e-03]),
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ([0.5, 0.5, 0.5], [53.3889647, -1.4685e-03, 2.78359e-03]),
]


def _pixel(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(3, 1, 1)


@pytest.mark.parametrize("rgb, lab", SKIMAGE_RGB2LAB)
def test_rgb_to_lab_matches_skimage(rgb, lab):
    out = rgb_to_lab(_pixel(rgb) * 255.0).flatten()
    torch.testing.assert_close(out, torch.tensor(lab, dtype=torch.float64), atol=1e-4, rtol=0)


def test_lab_to_rgb_matches_skimage():
    out = lab_to_rgb(_pixel([50.0, 20.0, -30.0])).flatten() / 255.0
    expected = torch.tensor([0.49636144, 0.42925764, 0.6668389], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_round_trip_in_float32():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (2, 4, 3, 8, 8), generator=g).float()
    back = lab_to_rgb(rgb_to_lab(rgb))
    assert back.dtype == torch.float32
    assert (back - rgb).abs().max() < 1e-2  # 0..255 scale: far below one 8-bit step
    assert torch.equal(back.round(), rgb)


def test_l_and_ab_recombine_and_grey_is_neutral():
    rgb = torch.tensor([[[[200.0]], [[40.0]], [[90.0]]]])  # (1, 3, 1, 1)
    lab = rgb_to_lab(rgb)
    torch.testing.assert_close(luminance(rgb), lab[:, :1])
    torch.testing.assert_close(l_ab_to_rgb(lab[:, :1], lab[:, 1:]), rgb, atol=1e-2, rtol=0)
    grey = grey_rgb(lab[:, :1]).flatten()
    assert (grey.max() - grey.min()) < 0.05  # a = b = 0 is neutral grey (D65 white is 1e-3 off neutral)
    torch.testing.assert_close(rgb_to_lab(grey.view(1, 3, 1, 1))[:, 0], lab[:, 0], atol=1e-3, rtol=0)


def test_out_of_gamut_lab_is_clipped_and_bad_shapes_are_refused():
    rgb = lab_to_rgb(_pixel([50.0, 127.0, -128.0]))
    assert rgb.min() >= 0 and rgb.max() <= 255
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        rgb_to_lab(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="same size"):
        l_ab_to_rgb(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 5))


def test_conversions_stay_float32_under_bf16_autocast():
    """In bf16 the colour matrices would put L off by ~0.6 and ab by ~2.5 Lab units."""
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = rgb_to_lab(rgb)
        back = lab_to_rgb(lab)
    assert lab.dtype == back.dtype == torch.float32
    torch.testing.assert_close(lab, rgb_to_lab(rgb))
    torch.testing.assert_close(back, lab_to_rgb(rgb_to_lab(rgb)))
