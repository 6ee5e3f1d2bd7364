"""Procedural camera sequences whose scene complexity moves between regimes the way a flight does."""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Iterator

import cv2
import numpy as np

from adaptive_perception.scenes.render import (
    CLASSES, CLUTTER_PHOTOS, GROUND_TEXTURES, Look, SceneObject, Truth, apply_look, paint_object, photo,
    visible_truth,
)

WIDTH, HEIGHT = 640, 480
FRAME_RATE_HZ = 30
MAX_SIZE = WIDTH / 3  # objects up to a third of the frame
MIN_SIZE = 5.0


class Regime(Enum):
    """Scene complexity by the number of valid (non-ignore) objects in a frame."""

    SPARSE = "sparse"  # <= 2
    MODERATE = "moderate"  # 3-7
    DENSE = "dense"  # >= 8

    @staticmethod
    def of(count: int) -> "Regime":
        return Regime.SPARSE if count <= 2 else Regime.MODERATE if count <= 7 else Regime.DENSE


@dataclass(frozen=True)
class World:
    """The object distributions of one generator version, per regime (thresholds and classes are shared)."""

    targets: dict[Regime, tuple[int, int]]  # object count drawn uniformly per segment
    size_median: dict[Regime, float]  # px, log-normal
    size_sigma: dict[Regime, float]  # log-space spread of the size
    crowding: dict[Regime, float]  # chance that an object placed inside the frame stands next to another one


# 1.0.0: crowded scenes hold somewhat smaller objects. 2.0.0, the product's world (training/benchmark/v2/SPEC.md):
# simple frames hold few, near (large) objects; busy frames many small, far objects that crowd and occlude.
WORLDS = {
    "1.0.0": World(
        targets={Regime.SPARSE: (0, 2), Regime.MODERATE: (3, 7), Regime.DENSE: (10, 32)},
        size_median={Regime.SPARSE: 44.0, Regime.MODERATE: 34.0, Regime.DENSE: 24.0},
        size_sigma={Regime.SPARSE: 0.7, Regime.MODERATE: 0.7, Regime.DENSE: 0.7},
        crowding={Regime.SPARSE: 0.0, Regime.MODERATE: 0.0, Regime.DENSE: 0.0}),
    "2.0.0": World(
        targets={Regime.SPARSE: (0, 2), Regime.MODERATE: (3, 7), Regime.DENSE: (10, 32)},
        size_median={Regime.SPARSE: 96.0, Regime.MODERATE: 52.0, Regime.DENSE: 24.0},
        size_sigma={Regime.SPARSE: 0.4, Regime.MODERATE: 0.5, Regime.DENSE: 0.6},
        crowding={Regime.SPARSE: 0.0, Regime.MODERATE: 0.15, Regime.DENSE: 0.4}),
}


class Drift(Enum):
    """Changes the training data never had."""

    NONE = "none"
    NIGHT = "night"  # low light, high gain noise
    FOG = "fog"  # haze veils contrast
    NEW_DOMAIN = "new_domain"  # ground textures never seen in training
    SMALL_OBJECTS = "small_objects"  # objects 2.5x smaller


@dataclass(frozen=True)
class SequenceSpec:
    """Everything that defines one sequence; rendering is a pure function of it."""

    seed: int
    index: int
    frames: int = 150
    # segment regime probabilities (sparse, moderate, dense); the realised frame mix is in the manifest
    regime_mix: tuple[float, float, float] = (0.40, 0.35, 0.25)
    segment_frames: tuple[int, int] = (20, 50)
    drift: Drift = Drift.NONE
    version: str = "1.0.0"  # generator version: a key of WORLDS


@dataclass(frozen=True)
class Frame:
    """One rendered frame: pixels, ground truth and bookkeeping."""

    sequence: int
    index: int
    stamp_ns: int
    rgb: np.ndarray
    truths: tuple[Truth, ...]
    clutter: int
    target_regime: Regime

    @property
    def valid(self) -> list[Truth]:
        return [t for t in self.truths if not t.ignore]

    @property
    def regime(self) -> Regime:
        return Regime.of(len(self.valid))


@dataclass
class _Mover:
    obj: SceneObject
    vx: float
    vy: float
    spin: float
    leaving: bool = False


@dataclass
class _Clutter:
    kind: int  # 0 line, 1 photo patch, 2 blob
    x: float
    y: float
    size: float
    angle: float
    colour: tuple[int, int, int]
    photo: int
    foreground: bool


def _background(rng: np.random.Generator, drift: Drift) -> np.ndarray:
    """A world canvas twice the frame size: textured ground (and sky above a horizon unless aerial)."""
    names = GROUND_TEXTURES["new_domain" if drift is Drift.NEW_DOMAIN else "train"]
    texture = photo(names[int(rng.integers(len(names)))])
    scale = rng.uniform(0.8, 1.6)
    texture = cv2.resize(texture, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    reps = (int(np.ceil(2 * HEIGHT / texture.shape[0])) + 1, int(np.ceil(2 * WIDTH / texture.shape[1])) + 1, 1)
    ground = np.tile(texture, reps)[: 2 * HEIGHT, : 2 * WIDTH].astype(np.float32)
    tint = rng.uniform(0.6, 1.2, 3).astype(np.float32)
    ground = np.clip(ground * tint * rng.uniform(0.7, 1.1), 0, 255)
    aerial = bool(rng.random() < 0.5)
    horizon = -1.0 if aerial else float(rng.uniform(0.25, 0.5) * 2 * HEIGHT)
    if not aerial:
        ys = np.arange(2 * HEIGHT, dtype=np.float32)[:, None]
        top, bottom = rng.uniform(120, 200, 3), rng.uniform(190, 245, 3)
        t = np.clip(ys / max(horizon, 1.0), 0, 1)[..., None]
        sky = top * (1 - t) + bottom * t
        clouds = cv2.resize(rng.random((8, 16)).astype(np.float32), (2 * WIDTH, 2 * HEIGHT), interpolation=cv2.INTER_CUBIC)
        sky = sky + 40 * clouds[..., None]
        rows = np.arange(2 * HEIGHT)[:, None, None] < horizon
        ground = np.where(rows, np.broadcast_to(sky, ground.shape), ground)
    return np.clip(ground, 0, 255).astype(np.uint8)


def _new_object(rng: np.random.Generator, object_id: int, regime: Regime, drift: Drift, entering: bool,
                world: World, others: list[_Mover]) -> _Mover:
    median = world.size_median[regime] / (2.5 if drift is Drift.SMALL_OBJECTS else 1.0)
    size = float(np.clip(median * np.exp(rng.normal(0, world.size_sigma[regime])), MIN_SIZE, MAX_SIZE))
    speed = rng.uniform(0.3, 4.0)
    heading = rng.uniform(0, 2 * np.pi)
    if entering:  # start just outside an edge, moving inwards
        edge = int(rng.integers(4))
        x = [-size / 2, WIDTH + size / 2, rng.uniform(0, WIDTH), rng.uniform(0, WIDTH)][edge]
        y = [rng.uniform(0, HEIGHT), rng.uniform(0, HEIGHT), -size / 2, HEIGHT + size / 2][edge]
        heading = np.arctan2(HEIGHT / 2 - y, WIDTH / 2 - x) + rng.uniform(-0.6, 0.6)
    else:
        x, y = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        if world.crowding[regime] > 0 and others and rng.random() < world.crowding[regime]:
            # next to an object already there: part of a group, overlapping it now and then
            near = others[int(rng.integers(len(others)))].obj
            x, y = near.x + rng.normal(0, 0.6 * (near.size + size) / 2), near.y + rng.normal(0, 0.6 * (near.size + size) / 2)
    colour = tuple(int(c) for c in rng.integers(30, 256, 3))
    obj = SceneObject(object_id, int(rng.integers(len(CLASSES))), float(x), float(y), size,
                      float(rng.uniform(0.6, 1.4)), float(rng.uniform(0, 360)), colour,
                      float(rng.uniform(0, 2 * np.pi)), int(rng.integers(len(CLUTTER_PHOTOS))) if rng.random() < 0.4 else -1)
    return _Mover(obj, speed * np.cos(heading), speed * np.sin(heading), float(rng.uniform(-3, 3)))


def _clutter_items(rng: np.random.Generator, count: int) -> list[_Clutter]:
    items = []
    for _ in range(count):
        items.append(_Clutter(
            kind=int(rng.choice(3, p=[0.45, 0.35, 0.20])), x=float(rng.uniform(0, 2 * WIDTH)),
            y=float(rng.uniform(0, 2 * HEIGHT)), size=float(np.exp(rng.uniform(np.log(10), np.log(160)))),
            angle=float(rng.uniform(0, 180)), colour=tuple(int(c) for c in rng.integers(0, 256, 3)),
            photo=int(rng.integers(len(CLUTTER_PHOTOS))), foreground=bool(rng.random() < 0.15)))
    return items


def _draw_clutter(frame: np.ndarray, owner: np.ndarray, items: list[_Clutter], offset: tuple[float, float],
                  foreground: bool) -> None:
    for item in items:
        if item.foreground != foreground:
            continue
        x, y = item.x - offset[0], item.y - offset[1]
        if not (-item.size < x < WIDTH + item.size and -item.size < y < HEIGHT + item.size):
            continue
        mask = np.zeros(frame.shape[:2], np.uint8)
        if item.kind == 0:  # pole / wire / branch
            dx, dy = np.cos(np.deg2rad(item.angle)) * item.size, np.sin(np.deg2rad(item.angle)) * item.size
            cv2.line(mask, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), 255, max(1, int(item.size / 25)), cv2.LINE_AA)
        elif item.kind == 1:  # photographic patch (a sign, a poster, debris)
            half = int(item.size / 2)
            x0, y0 = int(x) - half, int(y) - half
            src = photo(CLUTTER_PHOTOS[item.photo])
            patch = cv2.resize(src, (2 * half + 1, 2 * half + 1))
            fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + 2 * half + 1, WIDTH), min(y0 + 2 * half + 1, HEIGHT)
            if fx1 > fx0 and fy1 > fy0:
                frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
                if foreground:
                    owner[fy0:fy1, fx0:fx1] = -2
            continue
        else:  # irregular blob (bush, puddle, shadow)
            cv2.ellipse(mask, (int(x), int(y)), (int(item.size / 2), int(item.size / 3.5)), item.angle, 0, 360, 255, -1, cv2.LINE_AA)
        alpha = mask.astype(np.float32)[..., None] / 255.0
        frame[:] = (frame * (1 - alpha) + np.asarray(item.colour, np.float32) * alpha).astype(np.uint8)
        if foreground:
            owner[mask >= 128] = -2


def render_sequence(spec: SequenceSpec) -> Iterator[Frame]:
    """Frames of one sequence, deterministic for its spec."""
    if spec.version not in WORLDS:
        raise ValueError(f"generator version '{spec.version}' is unknown; known: {', '.join(WORLDS)}")
    objects_of = WORLDS[spec.version]
    rng = np.random.default_rng([spec.seed, spec.index])
    world = _background(rng, spec.drift)
    clutter = _clutter_items(rng, int(rng.integers(0, 41)))
    pan = np.array([rng.uniform(-6, 6), rng.uniform(-2.5, 2.5)])
    pan_jitter = rng.uniform(0.0, 1.2)
    offset = np.array([rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)])
    base = Look(gain=float(rng.uniform(0.8, 1.15)), gamma=float(rng.uniform(0.9, 1.1)),
                noise_sigma=float(rng.uniform(1.5, 5.0)))
    if spec.drift is Drift.NIGHT:
        base = replace(base, gain=float(rng.uniform(0.25, 0.4)), gamma=1.5, noise_sigma=float(rng.uniform(7, 11)))
    elif spec.drift is Drift.FOG:
        base = replace(base, haze=float(rng.uniform(0.45, 0.65)))
    light_phase, light_period = rng.uniform(0, 2 * np.pi), rng.uniform(60, 240)

    # Regime schedule: segments of 1-2.5 s, each with a target count drawn from its regime.
    schedule: list[tuple[Regime, int]] = []
    while len(schedule) < spec.frames:
        regime = list(Regime)[int(rng.choice(3, p=spec.regime_mix))]
        low, high = objects_of.targets[regime]
        target = int(rng.integers(low, high + 1))
        schedule += [(regime, target)] * int(rng.integers(spec.segment_frames[0], spec.segment_frames[1] + 1))
    movers: list[_Mover] = []
    next_id = 0
    regime0, target0 = schedule[0]
    for _ in range(target0):
        movers.append(_new_object(rng, next_id, regime0, spec.drift, False, objects_of, movers))
        next_id += 1

    for index in range(spec.frames):
        regime, target = schedule[index]
        active = [m for m in movers if not m.leaving]
        for _ in range(min(3, target - len(active))):  # objects enter over a few frames, not at once
            if rng.random() < 0.8:
                movers.append(_new_object(rng, next_id, regime, spec.drift, rng.random() < 0.7, objects_of, active))
                next_id += 1
        for mover in active[: max(0, min(3, len(active) - target))]:  # and leave as briskly
            if rng.random() < 0.8:  # towards the nearest edge, as when the camera turns away
                mover.leaving = True
                x, y = mover.obj.x, mover.obj.y
                exits = [(-x, 0.0), (WIDTH - x, 0.0), (0.0, -y), (0.0, HEIGHT - y)]
                dx, dy = min(exits, key=lambda e: abs(e[0]) + abs(e[1]))
                norm = max(np.hypot(dx, dy), 1.0)
                mover.vx, mover.vy = 14.0 * dx / norm, 14.0 * dy / norm
        # camera and object motion
        step = pan + rng.normal(0, pan_jitter, 2)
        offset = (offset + step) % [WIDTH, HEIGHT]
        for mover in movers:
            obj = mover.obj
            mover.obj = replace(obj, x=obj.x + mover.vx - step[0] * 0.5, y=obj.y + mover.vy - step[1] * 0.5,
                                angle=obj.angle + mover.spin)
        margin = MAX_SIZE
        movers = [m for m in movers if -margin < m.obj.x < WIDTH + margin and -margin < m.obj.y < HEIGHT + margin
                  and not (m.leaving and not (-m.obj.size < m.obj.x < WIDTH + m.obj.size
                                               and -m.obj.size < m.obj.y < HEIGHT + m.obj.size))]
        # paint: background, background clutter, objects far to near, foreground clutter
        ox, oy = int(offset[0]), int(offset[1])
        frame = np.ascontiguousarray(world[oy:oy + HEIGHT, ox:ox + WIDTH])
        owner = np.full((HEIGHT, WIDTH), -1, np.int32)
        _draw_clutter(frame, owner, clutter, (offset[0], offset[1]), foreground=False)
        ordered = sorted(movers, key=lambda m: m.obj.size)  # small = far = painted first
        objects = [m.obj for m in ordered]
        areas = [paint_object(frame, owner, obj, i) for i, obj in enumerate(objects)]
        _draw_clutter(frame, owner, clutter, (offset[0], offset[1]), foreground=True)
        speed = float(np.hypot(*step))
        look = replace(base, gain=base.gain * (1 + 0.1 * np.sin(light_phase + 2 * np.pi * index / light_period)),
                       blur_px=speed * 1.2 if speed > 3 else 0.0, blur_angle=float(np.degrees(np.arctan2(step[1], step[0]))))
        rgb = apply_look(frame, look, rng)
        truths = tuple(visible_truth(owner, objects, areas))
        yield Frame(spec.index, index, index * 1_000_000_000 // FRAME_RATE_HZ, rgb, truths, len(clutter), regime)
