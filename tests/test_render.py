"""The CartPole drawings of the web page and `python -m benchmarks.rollout`: geometry read back
from the pixels (pole colour, cart colour, push arrow), frame counts and the GIF file."""

import math

import numpy as np
import pytest
from PIL import Image

from benchmarks import render

TASK = {"length": 0.5, "masspole": 0.1, "masscart": 1.0, "gravity": 9.8, "force_mag": 10.0, "inverted": False}


def _pixels(img, colour):
    """(rows, cols) of the pixels of exactly `colour`."""
    a = np.asarray(img)
    return np.nonzero(np.all(a == np.array(colour, np.uint8), axis=-1))


@pytest.mark.parametrize("length", [0.5, 1.0, 2.0])
def test_an_upright_pole_is_drawn_whole_at_its_length_under_the_caption(length):
    img = render.draw_frame([0.0, 0.0, 0.0, 0.0], {**TASK, "length": length}, title="t")
    scale = render.frame_scale(length)
    rows, cols = _pixels(img, render._POLE)
    cart_rows, _ = _pixels(img, render._CART)
    assert rows.min() >= render.CAPTION_PX - 2  # the tip is inside the frame, below the caption
    drawn = cart_rows.min() - rows.min()        # from the cart's top to the pole's tip
    assert drawn == pytest.approx(2 * length * scale, abs=2)
    assert abs(cols.mean() - render.WIDTH / 2) < 3  # upright over a centred cart
    # the pole's length in pixels grows with the pole as long as the track's scale applies
    if length == 0.5:
        assert scale == pytest.approx(render.WIDTH / (2 * render.X_THRESHOLD * 1.1))


def test_cart_position_pole_angle_and_the_push_arrow_follow_the_state_and_task():
    base = render.draw_frame([0.0, 0.0, 0.0, 0.0], TASK)
    moved = render.draw_frame([1.0, 0.0, 0.2, 0.0], TASK)
    scale = render.frame_scale(TASK["length"])
    shift = _pixels(moved, render._CART)[1].mean() - _pixels(base, render._CART)[1].mean()
    assert shift == pytest.approx(scale, abs=1)
    # the pole's pixels centre on its midpoint, half its length along the angle from the cart
    _, cols = _pixels(moved, render._POLE)
    assert cols.mean() - (render.WIDTH / 2 + scale) == pytest.approx(TASK["length"] * scale * math.sin(0.2), abs=1.5)
    for inverted, action, right in ((False, 1, True), (False, 0, False), (True, 1, False), (True, 0, True)):
        task = {**TASK, "inverted": inverted, "force_mag": -10.0 if inverted else 10.0}
        arrow = _pixels(render.draw_frame([0.0, 0.0, 0.0, 0.0], task, action=action), render._PUSH)[1]
        assert (arrow.mean() > render.WIDTH / 2) == right, (inverted, action)


def test_episode_frames_and_gif_round_trip(tmp_path):
    states = np.zeros((10, 4))
    states[:, 0] = np.linspace(-1, 1, 10)
    frames = render.episode_frames(states, np.ones(10, int), TASK, rewards=np.ones(10), stride=4)
    assert len(frames) == 3  # steps 0, 4, 8
    path = str(tmp_path / "e.gif")
    render.save_gif(frames, path, fps=12.5)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.info["duration"] == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.gif"]
    with pytest.raises(ValueError, match="states must have shape"):
        render.episode_frames(np.zeros((0, 4)), None, TASK)
    with pytest.raises(ValueError, match="frames must be a non-empty list"):
        render.save_gif([], path)
