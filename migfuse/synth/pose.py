"""The seated figure's 137-point OpenPose skeleton, frame by frame.

A figure sits facing the camera in a 320x240 frame. Its pose is a rest pose, plus a small idle
sway, plus one class-specific micro-motion while a clip is running (eased in and out). Points are
OpenPose order: BODY_25 0-24, face-70 25-94, left hand 95-115, right hand 116-136, each (x, y, c)
in pixels; undetected points are (0, 0, 0). The person faces the camera, so their RIGHT side is
on the image's LEFT.

Win/Lose cue (per video, subtle but visible): a losing player's head sits 3 px lower and the
shoulders slump 3 px; the renderer also darkens the face a little (see render.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WIDTH, HEIGHT, FPS = 320, 240, 25
NUM_POINTS = 137
FACE0, LHAND0, RHAND0 = 25, 95, 116

# Rest pose of BODY_25 points that are visible at a press-conference table (pixels).
_REST = {
    0: (160, 70),  # nose
    1: (160, 100),  # neck
    2: (125, 106), 3: (112, 145), 4: (132, 172),  # right shoulder, elbow, wrist (image left)
    5: (195, 106), 6: (208, 145), 7: (188, 172),  # left shoulder, elbow, wrist
    8: (160, 190), 9: (142, 190), 12: (178, 190),  # mid hip, right hip, left hip
    15: (153, 56), 16: (167, 56), 17: (142, 60), 18: (178, 60),  # eyes, ears
}
HEAD_CENTRE = np.array([160.0, 61.0])

# Micro-gesture classes the generator acts out: class index (0..31) -> short description.
MOTIONS: dict[int, str] = {
    10: "touch chin: right hand goes to the chin",
    3: "touch head: right hand goes to the top of the head",
    8: "touch ears: right hand goes to the right ear",
    16: "fold arms: each hand goes to the other elbow",
    30: "shake shoulders: shoulders bob quickly",
    19: "move torso: the upper body sways sideways",
    22: "rub hands: both hands meet in front and rub",
    31: "illustrative: the right hand draws circles in front of the chest",
}


_ARM_CLASSES = frozenset({10, 3, 8, 16, 22, 31})  # classes that move a wrist


@dataclass(frozen=True)
class Action:
    """One clip: class index and inclusive frame range."""

    label: int
    start: int
    end: int


def _ease(t: int, a: Action) -> float:
    """0 outside the clip, ramping to 1 over 6 frames at both ends."""
    if t < a.start or t > a.end:
        return 0.0
    ramp = 6.0
    return min(1.0, (t - a.start + 1) / ramp, (a.end - t + 1) / ramp)


def _hand(wrist: np.ndarray, elbow: np.ndarray, spread: float, curl: float) -> np.ndarray:
    """21 hand points (wrist + 5 fingers x 4 joints) pointing away from the elbow."""
    d = wrist - elbow
    base = math.atan2(d[1], d[0])
    pts = [wrist]
    for f in range(5):
        ang = base + spread * (f - 2) * 0.35
        for j in range(1, 5):
            seg = 3.0 * j * (1.0 - 0.15 * curl * (j > 1))
            pts.append(wrist + seg * np.array([math.cos(ang), math.sin(ang)]))
    return np.array(pts)


def _face(centre: np.ndarray) -> np.ndarray:
    """70 face points: jaw 17, brows 10, nose 9, eyes 12, mouth 20, pupils 2 (a template oval)."""
    pts = []
    for i in range(17):  # jaw from right ear to left ear along the lower oval
        a = math.pi * (1.0 - i / 16.0)
        pts.append((centre[0] - 17 * math.cos(a), centre[1] + 4 + 18 * math.sin(a)))
    for side in (-1, 1):  # brows
        for i in range(5):
            pts.append((centre[0] + side * (4 + 2.5 * i), centre[1] - 9 - (1.5 if i in (1, 2, 3) else 0)))
    for i in range(4):  # nose bridge
        pts.append((centre[0], centre[1] - 4 + 3 * i))
    for i in range(5):  # nose base
        pts.append((centre[0] - 4 + 2 * i, centre[1] + 9))
    for side in (-1, 1):  # eyes
        for i in range(6):
            a = 2 * math.pi * i / 6
            pts.append((centre[0] + side * 7 + 3 * math.cos(a), centre[1] - 4 + 1.5 * math.sin(a)))
    for i in range(12):  # outer lip
        a = 2 * math.pi * i / 12
        pts.append((centre[0] + 7 * math.cos(a), centre[1] + 15 + 3 * math.sin(a)))
    for i in range(8):  # inner lip
        a = 2 * math.pi * i / 8
        pts.append((centre[0] + 5 * math.cos(a), centre[1] + 15 + 1.2 * math.sin(a)))
    pts += [(centre[0] - 7, centre[1] - 4), (centre[0] + 7, centre[1] - 4)]  # pupils
    return np.array(pts)


def pose_sequence(n_frames: int, actions: list[Action], win: bool,
                  absent: range, rng: np.random.Generator) -> np.ndarray:
    """The skeleton of a whole video: (T, 137, 3) float32, zeros where nobody is in the frame."""
    out = np.zeros((n_frames, NUM_POINTS, 3), np.float32)
    conf = (0.75 + 0.2 * rng.random(NUM_POINTS)).astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi)
    slump = 0.0 if win else 3.0
    by_frame = {t: a for a in actions for t in range(a.start, a.end + 1)}
    for t in range(n_frames):
        if t in absent:
            continue
        body = {k: np.array(v, float) for k, v in _REST.items()}
        head = HEAD_CENTRE.copy()
        # idle: slow breathing and a little sway, always present
        sway = np.array([1.5 * math.sin(0.21 * t + phase), 0.8 * math.sin(0.13 * t)])
        for k in body:
            body[k] += sway
        head += sway
        head[1] += slump
        for k in (0, 15, 16, 17, 18):
            body[k][1] += slump
        for k in (2, 5):
            body[k][1] += slump
        a = by_frame.get(t)
        e = _ease(t, a) if a else 0.0
        if a is not None:
            _act(a.label, t - a.start, e, body, head)
        if a is not None and a.label in _ARM_CLASSES:
            # a moved wrist drags its elbow: half way from shoulder to wrist, pushed outwards
            for shoulder, elbow, wrist, side in ((2, 3, 4, -1), (5, 6, 7, 1)):
                bent = (body[shoulder] + body[wrist]) / 2 + np.array([side * 18.0, 6.0])
                body[elbow] = body[elbow] * (1 - e) + bent * e
        for k, xy in body.items():
            out[t, k, :2] = xy
            out[t, k, 2] = conf[k]
        face = _face(head)
        out[t, FACE0 : FACE0 + 70, :2] = face
        out[t, FACE0 : FACE0 + 70, 2] = conf[FACE0 : FACE0 + 70]
        curl = 1.0 if (a and a.label == 22) else 0.0
        out[t, RHAND0 : RHAND0 + 21, :2] = _hand(body[4], body[3], 1.0, curl)
        out[t, LHAND0 : LHAND0 + 21, :2] = _hand(body[7], body[6], 1.0, curl)
        out[t, RHAND0 : RHAND0 + 21, 2] = conf[RHAND0 : RHAND0 + 21]
        out[t, LHAND0 : LHAND0 + 21, 2] = conf[LHAND0 : LHAND0 + 21]
    return out


def _act(label: int, k: int, e: float, body: dict[int, np.ndarray], head: np.ndarray) -> None:
    """Move `body` (in place) for frame k of a clip of class `label`, eased by e in [0, 1]."""

    def toward(key: int, target: np.ndarray) -> None:
        body[key] = body[key] * (1 - e) + target * e

    if label == 10:  # touch chin
        toward(4, head + np.array([-2.0, 22.0]))
    elif label == 3:  # touch head
        toward(4, head + np.array([-6.0, -26.0]))
    elif label == 8:  # touch ear
        toward(4, head + np.array([-22.0, 2.0]))
    elif label == 16:  # fold arms
        toward(4, np.array([188.0, 150.0]))
        toward(7, np.array([132.0, 154.0]))
    elif label == 30:  # shake shoulders
        bob = 5.0 * math.sin(2 * math.pi * 4.0 * k / FPS) * e
        for key in (1, 2, 5, 3, 6):
            body[key][1] += bob
    elif label == 19:  # move torso
        shift = 10.0 * math.sin(2 * math.pi * 0.8 * k / FPS) * e
        for key in (0, 1, 2, 3, 5, 6, 15, 16, 17, 18):
            body[key][0] += shift
        head[0] += shift
    elif label == 22:  # rub hands
        rub = 4.0 * math.sin(2 * math.pi * 3.0 * k / FPS)
        toward(4, np.array([154.0 + rub, 160.0]))
        toward(7, np.array([166.0 - rub, 160.0]))
    elif label == 31:  # illustrative circles
        ang = 2 * math.pi * 1.0 * k / FPS
        toward(4, np.array([150.0 + 16 * math.cos(ang), 135.0 + 12 * math.sin(ang)]))
