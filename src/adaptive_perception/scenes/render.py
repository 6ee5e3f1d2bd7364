"""Render one synthetic camera frame and its ground truth (visible extent of every object)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from adaptive_perception.errors import AdaptivePerceptionError

CLASSES: tuple[str, ...] = ("ball", "crate", "cone", "star", "cross")
MIN_VISIBLE_FRACTION = 0.30  # below: ignore region
MIN_VISIBLE_AREA = 16.0  # px^2 of the visible box; below: ignore region

# Photographs shipped inside the scikit-image wheel (never fetched): ground textures and clutter.
GROUND_TEXTURES = {"train": ("grass.png", "gravel.png", "brick.png"), "new_domain": ("moon.png", "text.png")}
CLUTTER_PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                  "camera.png", "page.png", "coins.png")


@lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """An RGB uint8 photograph from scikit-image's bundled data folder."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise AdaptivePerceptionError("the scene generator needs scikit-image's bundled sample photographs: "
                                      "pip install 'adaptive_perception[scenes]'")
    from PIL import Image  # scikit-image's own dependency; OpenCV's libpng printed a warning on page.png's profile

    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise AdaptivePerceptionError(f"sample photograph '{path}' is missing from the scikit-image install")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@dataclass(frozen=True)
class SceneObject:
    """One object's pose and appearance in one frame."""

    object_id: int
    class_id: int
    x: float  # centre, px
    y: float
    size: float  # outer diameter, px
    aspect: float  # height / width of the shape before rotation
    angle: float  # degrees
    colour: tuple[int, int, int]
    shade_angle: float  # direction of the light, radians
    texture: int  # index into CLUTTER_PHOTOS for a faint surface texture, -1 for none


@dataclass(frozen=True)
class Look:
    """Photometric conditions of one frame."""

    gain: float = 1.0  # global brightness factor
    gamma: float = 1.0
    noise_sigma: float = 3.0
    blur_px: float = 0.0  # motion blur length
    blur_angle: float = 0.0  # degrees
    haze: float = 0.0  # 0..1 blend towards the haze colour (fog)
    haze_colour: tuple[int, int, int] = (200, 205, 210)


@dataclass(frozen=True)
class Truth:
    """Ground truth of one object in one frame: visible extent (xyxy), class, and ignore flag."""

    object_id: int
    class_id: int
    box: tuple[float, float, float, float]
    visible_fraction: float
    ignore: bool

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def shape_polygon(obj: SceneObject) -> list[np.ndarray]:
    """Outline of the object in frame coordinates (float, Nx2), as a list of polygons."""
    radius = obj.size / 2
    kind = CLASSES[obj.class_id]
    if kind == "ball":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        points = np.stack([np.cos(t) * radius, np.sin(t) * radius * obj.aspect], axis=1)
    elif kind == "crate":
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * [radius, radius * obj.aspect]
    elif kind == "cone":
        points = np.array([[0, -1], [0.85, 1], [-0.85, 1]], float) * [radius, radius * obj.aspect]
    elif kind == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
        points = np.stack([np.cos(t) * r, np.sin(t) * r * obj.aspect], axis=1)
    else:  # cross
        a, b = 1.0, 0.33
        points = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
                           [-a, b], [-a, -b], [-b, -b]], float) * [radius, radius * obj.aspect]
    theta = np.deg2rad(obj.angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return [points @ rotation.T + [obj.x, obj.y]]


def object_mask(obj: SceneObject, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Coverage (float32 0..1) of the object on a window at `origin` (x, y) of `shape` (h, w), 4x4 supersampled."""
    ss = 4
    canvas = np.zeros((shape[0] * ss, shape[1] * ss), np.uint8)
    # continuous coordinates put pixel i on [i, i+1); OpenCV puts a pixel's centre at its index
    polygons = [np.round(((p - origin) * ss - 0.5) * 4).astype(np.int32) for p in shape_polygon(obj)]
    cv2.fillPoly(canvas, polygons, 255, lineType=cv2.LINE_8, shift=2)
    return canvas.reshape(shape[0], ss, shape[1], ss).mean(axis=(1, 3), dtype=np.float32) / 255.0


def object_window(obj: SceneObject) -> tuple[int, int, int, int]:
    """Integer window (x0, y0, x1, y1) that contains the whole object, unclipped."""
    points = np.concatenate(shape_polygon(obj))
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 2
    return int(x0), int(y0), int(x1), int(y1)


def paint_object(frame: np.ndarray, owner: np.ndarray, obj: SceneObject, owner_id: int) -> float:
    """Composite the object onto `frame` and claim its pixels in `owner`; returns its full area in px."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = object_window(obj)
    full = object_mask(obj, (x0, y0), (y1 - y0, x1 - x0))
    area = float(full.sum())
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return area
    alpha = full[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    ys, xs = np.mgrid[cy0:cy1, cx0:cx1].astype(np.float32)
    light = np.cos(obj.shade_angle) * (xs - obj.x) + np.sin(obj.shade_angle) * (ys - obj.y)
    shading = 1.0 + 0.45 * np.clip(light / max(obj.size / 2, 1.0), -1, 1)
    colour = np.asarray(obj.colour, np.float32)[None, None, :] * shading[..., None]
    if obj.texture >= 0:
        texture = photo(CLUTTER_PHOTOS[obj.texture])
        ty, tx = (obj.object_id * 37) % max(texture.shape[0] - (cy1 - cy0), 1), (obj.object_id * 53) % max(texture.shape[1] - (cx1 - cx0), 1)
        patch = texture[ty:ty + cy1 - cy0, tx:tx + cx1 - cx0].astype(np.float32)
        if patch.shape[:2] == colour.shape[:2]:
            colour = colour * 0.75 + (patch - patch.mean()) * 0.35 + 0.25 * colour.mean()
    region = frame[cy0:cy1, cx0:cx1].astype(np.float32)
    frame[cy0:cy1, cx0:cx1] = np.clip(region * (1 - alpha[..., None]) + colour * alpha[..., None], 0, 255).astype(np.uint8)
    owner[cy0:cy1, cx0:cx1][alpha >= 0.5] = owner_id
    return area


def visible_truth(owner: np.ndarray, objects: list[SceneObject], full_areas: list[float]) -> list[Truth]:
    """Visible extent of each object from the ownership map (later paint occludes earlier)."""
    truths = []
    for index, (obj, area) in enumerate(zip(objects, full_areas)):
        x0, y0, x1, y1 = object_window(obj)
        h, w = owner.shape
        window = owner[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        if window.size == 0:
            continue
        ys, xs = np.nonzero(window == index)
        if ys.size == 0:
            continue
        box = (float(xs.min() + max(x0, 0)), float(ys.min() + max(y0, 0)),
               float(xs.max() + 1 + max(x0, 0)), float(ys.max() + 1 + max(y0, 0)))
        fraction = float(ys.size / max(area, 1.0))
        box_area = (box[2] - box[0]) * (box[3] - box[1])
        truths.append(Truth(obj.object_id, obj.class_id, box, min(fraction, 1.0),
                            fraction < MIN_VISIBLE_FRACTION or box_area < MIN_VISIBLE_AREA))
    return truths


def apply_look(frame: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Motion blur, haze, lighting and sensor noise, in that order (as light reaches the sensor)."""
    image = frame.astype(np.float32)
    if look.blur_px >= 1.5:
        length = int(round(look.blur_px)) | 1
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), look.blur_angle, 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (length, length))
        image = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))
    if look.haze > 0:
        image = image * (1 - look.haze) + np.asarray(look.haze_colour, np.float32) * look.haze
    image = 255.0 * np.power(np.clip(image * look.gain / 255.0, 0, 1), look.gamma)
    image += rng.normal(0.0, look.noise_sigma, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
