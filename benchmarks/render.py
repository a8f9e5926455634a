"""Drawing CartPole episodes: one Pillow image per step, and an animated GIF of them.

`draw_frame(state, task, ...)` draws one CartPole state (cart, pole, track, the push the
action applied, a caption); `episode_frames(states, actions, task, ...)` draws every
`stride`-th step of an episode (`benchmarks.runs.Episode`); `save_gif(frames, path, fps)`
writes them as an animated GIF through a temporary file and a rename (never half-written).

Geometry: the track spans CartPole-v1's `x_threshold` (2.4 m) each side of the centre, the pole
is drawn at its full length (`2 * length`, the task's `length` is the half length) and angle
`theta` (0 = upright, positive clockwise as in gymnax), so longer poles of the test split look
longer. One scale (pixels per metre) for both axes and the whole episode: the track's width,
or smaller when the task's upright pole on the cart would not fit under the caption
(`frame_scale`). The arrow under the cart is the force the action applied (its direction flips on an
inverted-force task). No JAX here: the functions take numpy arrays and plain floats.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ssm_jax.validation import check_float, check_int

X_THRESHOLD = 2.4
#: Real time between CartPole-v1 steps (gymnax `tau`, s): a GIF at 1 / TAU fps plays in real time.
TAU = 0.02
WIDTH, HEIGHT = 480, 320
_BG, _INK, _CART, _POLE, _AXLE = (255, 255, 255), (40, 40, 40), (70, 110, 170), (200, 130, 60), (90, 90, 90)
_PUSH = (30, 150, 60)


#: Pixels at the top kept for the caption (three lines), and the track's height in the frame.
CAPTION_PX = 50
TRACK_Y = 0.78
CART_W, CART_H = 0.5, 0.3


def frame_scale(length: float, size: tuple = (WIDTH, HEIGHT)) -> float:
    """Pixels per metre of a frame of `size` for a pole of half length `length`: the track
    (with a 10% margin) across the width, shrunk if the upright cart and pole (`CART_H + 2 *
    length` metres) would reach into the caption."""
    width, height = size
    return min(width / (2 * X_THRESHOLD * 1.1), (int(height * TRACK_Y) - CAPTION_PX) / (CART_H + 2 * float(length)))


def draw_frame(state: Sequence[float], task: dict, *, action: Optional[int] = None, step: int = 0,
               total: Optional[float] = None, title: str = "", size: tuple = (WIDTH, HEIGHT)) -> Image.Image:
    """One RGB frame of a CartPole state.

    Args:
      state: `[x, x_dot, theta, theta_dot]` (m, m/s, rad, rad/s).
      task: the task's physics (`benchmarks.runs.task_values`: length, masspole, masscart,
        gravity, force_mag (negative: inverted), inverted).
      action: the action taken in this state (0 or 1; None: no arrow).
      step: the step number shown in the caption; total: return so far (shown if given).
      title: first caption line (e.g. the method and seed).
      size: `(width, height)` in pixels.
    """
    width, height = (check_int("size[0]", size[0], 64), check_int("size[1]", size[1], 64))
    x, theta = float(state[0]), float(state[2])
    img = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(img)
    scale = frame_scale(task["length"], (width, height))  # px per m
    track_y = int(height * TRACK_Y)
    cx = width / 2 + x * scale
    d.line([(width / 2 - X_THRESHOLD * scale, track_y), (width / 2 + X_THRESHOLD * scale, track_y)],
           fill=_INK, width=2)
    for edge in (-X_THRESHOLD, X_THRESHOLD):
        ex = width / 2 + edge * scale
        d.line([(ex, track_y - 6), (ex, track_y + 6)], fill=_INK, width=2)
    cart_w, cart_h = CART_W * scale, CART_H * scale
    top = track_y - cart_h
    d.rectangle([cx - cart_w / 2, top, cx + cart_w / 2, track_y], fill=_CART)
    pole = 2 * float(task["length"]) * scale
    tip = (cx + pole * math.sin(theta), top - pole * math.cos(theta))
    d.line([(cx, top), tip], fill=_POLE, width=max(3, int(scale * 0.08)))
    r = max(2, int(scale * 0.04))
    d.ellipse([cx - r, top - r, cx + r, top + r], fill=_AXLE)
    if action is not None:
        direction = (1.0 if int(action) == 1 else -1.0) * math.copysign(1.0, float(task["force_mag"]))
        ay = track_y + 14
        end = cx + direction * cart_w * 0.9
        d.line([(cx, ay), (end, ay)], fill=_PUSH, width=3)
        d.polygon([(end, ay), (end - direction * 7, ay - 5), (end - direction * 7, ay + 5)], fill=_PUSH)
    kind = "inverted force" if task["inverted"] else "normal force"
    lines = [title] if title else []
    lines.append(f"pole {2 * task['length']:.2f} m, {task['masspole']:.2f} kg | cart "
                 f"{task['masscart']:.2f} kg | g {task['gravity']:.1f} | push {abs(task['force_mag']):.1f} N, {kind}")
    lines.append(f"step {step}" + ("" if total is None else f"   return {total:.0f}"))
    for i, line in enumerate(lines):
        d.text((8, 6 + 14 * i), line, fill=_INK)
    return img


def episode_frames(states: np.ndarray, actions: Optional[np.ndarray], task: dict, *,
                   rewards: Optional[np.ndarray] = None, stride: int = 1, title: str = "",
                   size: tuple = (WIDTH, HEIGHT)) -> list:
    """Frames of an episode: `states` `(T, 4)`, `actions` and `rewards` `(T,)` (or None); one
    frame per `stride` steps (steps 0, stride, 2 stride, ...: `ceil(T / stride)` frames). The
    caption's return sums `rewards` up to and including the drawn step."""
    stride = check_int("stride", stride)
    states = np.asarray(states)
    if states.ndim != 2 or states.shape[-1] < 3 or states.shape[0] < 1:
        raise ValueError(f"states must have shape (T >= 1, 4), got {states.shape}")
    totals = None if rewards is None else np.cumsum(np.asarray(rewards, np.float64))
    return [draw_frame(states[t], task, action=None if actions is None else int(actions[t]), step=t,
                       total=None if totals is None else float(totals[t]), title=title, size=size)
            for t in range(0, states.shape[0], stride)]


def save_gif(frames: list, path: str, fps: float = 1 / TAU) -> None:
    """Write `frames` (Pillow images) as a looping animated GIF at `fps` frames per second
    (default real time for stride 1; GIF delays are whole centiseconds)."""
    if not frames:
        raise ValueError("frames must be a non-empty list of images")
    fps = check_float("fps", fps, minimum=0.0, strict_min=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.gif"
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=max(20, int(round(1000 / fps))),
                   loop=0, optimize=False, disposal=1)
    os.replace(tmp, path)
