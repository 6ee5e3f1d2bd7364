"""Model files are validated on load with errors that name the file and the problem."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from adaptive_perception.config import resolve_model
from adaptive_perception.detector import DetectorTier, Detections, letterbox, nms, select_providers
from adaptive_perception.errors import ConfigError, ModelFileError


def _constant_model(path, in_shape, out_shape, metadata=None):
    """An ONNX graph whose output (of any shape) does not depend on its input: zeros of `out_shape`."""
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, in_shape)
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)
    shape = helper.make_tensor("shape", TensorProto.INT64, [len(out_shape)], out_shape)
    node = helper.make_node("ConstantOfShape", ["shape"], ["output0"])
    keep = helper.make_node("Shape", ["images"], ["unused"])  # the input stays in the graph
    return _save(path, helper.make_graph([node, keep], "g", [inp], [out], initializer=[shape]), metadata)


def _save(path, graph, metadata):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, path)
    return path


def _identity_model(path, in_shape, out_shape, metadata=None, dtype=TensorProto.FLOAT, input_name="images"):
    """A tiny ONNX graph with the given input/output shapes (a Reshape of the input)."""
    inp = helper.make_tensor_value_info(input_name, dtype, in_shape)
    out = helper.make_tensor_value_info("output0", dtype, out_shape)
    shape = helper.make_tensor("shape", TensorProto.INT64, [len(out_shape)], [d if isinstance(d, int) else -1 for d in out_shape])
    node = helper.make_node("Reshape", [input_name, "shape"], ["output0"])
    return _save(path, helper.make_graph([node], "g", [inp], [out], initializer=[shape]), metadata)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.onnx' : does not exist|nope\.onnx': does not exist"):
        DetectorTier(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match=r"model file '.*': is a folder \(name the YOLOv8 detection ONNX file in it\)"):
        DetectorTier(tmp_path)  # said "does not exist" of a folder that exists


def test_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("hello")
    with pytest.raises(ModelFileError, match="model.onnx': is not a loadable ONNX model.*cut short or not ONNX: copy "
                       "it again, or export it again"):
        DetectorTier(bad)


def test_wrong_input_rank(tmp_path):
    path = _identity_model(tmp_path / "rank3.onnx", [3, 32, 32], [1, 8, 384])
    with pytest.raises(ModelFileError, match="rank 3"):
        DetectorTier(path)


def test_not_a_detect_head(tmp_path):
    path = _identity_model(tmp_path / "cls.onnx", [1, 3, 32, 32], [1, 3072], {"task": "detect"})
    with pytest.raises(ModelFileError, match=r"cls\.onnx.*YOLOv8 detect head"):
        DetectorTier(path)


def test_fixed_batch_half_precision_and_end_to_end_exports_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match="batch is fixed to 2"):
        DetectorTier(_identity_model(tmp_path / "b2.onnx", [2, 3, 32, 32], [2, 8, 384]))
    with pytest.raises(ModelFileError, match=r"tensor\(float16\).*half=True"):
        DetectorTier(_identity_model(tmp_path / "fp16.onnx", [1, 3, 32, 32], [1, 8, 384], dtype=TensorProto.FLOAT16))
    with pytest.raises(ModelFileError, match="end-to-end export.*nms=False"):
        DetectorTier(_identity_model(tmp_path / "e2e.onnx", [1, 3, 30, 20], [1, 300, 6], {"end2end": "True"}))
    # Ultralytics 8.4 writes end2end 'False' for nms=True and records the choice in its export arguments; said
    # "names 2 classes but the head outputs 296"
    with pytest.raises(ModelFileError, match="end-to-end export.*nms=False"):
        DetectorTier(_identity_model(tmp_path / "nms.onnx", [1, 3, 30, 20], [1, 300, 6],
                                     {"task": "detect", "names": "{0: 'a', 1: 'b'}", "end2end": "False",
                                      "args": "{'batch': 1, 'nms': True, 'half': False}"}))
    # and by the shape alone, without metadata: 300 boxes of 6 values
    with pytest.raises(ModelFileError, match=r"end-to-end export.*\[1, 300, 6\].*nms=False"):
        DetectorTier(_identity_model(tmp_path / "bare-nms.onnx", [1, 3, 30, 20], [1, 300, 6]))


def test_a_transposed_head_is_refused_not_read_as_thousands_of_classes(tmp_path):
    # 64x64 at strides 8, 16, 32: 64 + 16 + 4 = 84 anchors, here where the 4 + 5 class channels belong
    path = _constant_model(tmp_path / "t.onnx", [1, 3, 64, 64], [1, 84, 9], {"task": "detect"})
    with pytest.raises(ModelFileError, match=r"t\.onnx.*\[1, 84, 9\]: 84 anchors, as a 64x64 input gives, where the "
                       "classes belong: a transposed head"):
        DetectorTier(path)
    # many classes at a small input: more channels than anchors, and the right way round (601 classes at 160x160:
    # 400 + 100 + 25 = 525 anchors)
    names = repr({i: f"c{i}" for i in range(601)})
    wide = DetectorTier(_constant_model(tmp_path / "oiv7.onnx", [1, 3, 160, 160], [1, 605, 525],
                                        {"task": "detect", "names": names}))
    assert len(wide.class_names) == 601 and wide.info.num_anchors == 525


def test_a_head_without_metadata_loads_with_classes_by_index_and_says_so(tmp_path, caplog):
    path = _identity_model(tmp_path / "bare.onnx", [1, 3, 32, 32], [1, 8, 384])
    with caplog.at_level("WARNING", logger="adaptive_perception.detector"):
        det = DetectorTier(path)
    assert det.class_names == ("0", "1", "2", "3")
    said = [r.getMessage() for r in caplog.records]
    assert any(f"{path}: no Ultralytics metadata names its classes" in m and "4 classes, named by index" in m
               for m in said), said


def test_tiers_that_name_different_classes_are_named_with_their_lists(tier_models):
    from adaptive_perception.detector import class_list_mismatch

    names = {t: DetectorTier(p, name=t).class_names for t, p in tier_models.items()}
    said = class_list_mismatch(names)
    assert "nano 80 (nano-0, nano-1, nano-2, nano-3, ...); small 80 (small-0," in said
    assert "large 80 (large-0, large-1, large-2, large-3, ...)" in said and "one class list" in said
    embedded = {t: DetectorTier(resolve_model(f"embedded:{t}"), name=t).class_names for t in ("nano", "small", "large")}
    assert class_list_mismatch(embedded) == ""
    assert "nano 2 (a, b); small 3 (a, b, c)" in class_list_mismatch({"nano": ("a", "b"), "small": ("a", "b", "c")})


def test_tiers_in_each_others_slots_and_8_bit_tiers_are_named(tmp_path):
    """A 640x480 model as nano and a 256x192 one as large loaded without a word (the large tier is the audit's
    reference); an 8-bit tier was not told from a float one anywhere the node reports."""

    from adaptive_perception.detector import QUANTIZED_KEY, tier_order_mismatch

    assert tier_order_mismatch({"nano": (192, 256), "small": (320, 416), "large": (480, 640)}) == ""
    assert tier_order_mismatch({"nano": (640, 640), "small": (640, 640), "large": (640, 640)}) == ""  # real n/s/l
    said = tier_order_mismatch({"nano": (480, 640), "small": (320, 416), "large": (192, 256)})
    assert said.startswith("the tiers' inputs are not ordered nano <= small <= large (nano 480x640, small 320x416, "
                           "large 192x256 as height x width)") and "models.large" in said
    assert tier_order_mismatch({"nano": (192, 256), "small": (480, 640), "large": (320, 416)}) != ""
    model = onnx.load(resolve_model("embedded:nano"))
    model.metadata_props.add(key=QUANTIZED_KEY, value="int8 QDQ")
    onnx.save(model, str(tmp_path / "nano.onnx"))
    assert DetectorTier(tmp_path / "nano.onnx").info.precision == "int8"
    assert DetectorTier(resolve_model("embedded:nano")).info.precision == "float"


def test_the_nodes_own_uint8_wrapper_is_named_as_such(tmp_path):
    """A file from the graph cache was refused as "input has 640 channels; expected 3"."""
    path = _identity_model(tmp_path / "wrapped.onnx", [1, 32, 32, 3], [1, 8, 384], dtype=TensorProto.UINT8,
                           input_name="adaptive_perception/image_uint8")
    with pytest.raises(ModelFileError, match=r"takes uint8 frames of shape \[1, 32, 32, 3\]: the node's own uint8 "
                       r"wrapper.*\(point the parameter at the original ONNX file\)"):
        DetectorTier(path, preprocess_in_graph=False)
    with pytest.raises(ModelFileError, match="the node's own uint8 wrapper"):
        DetectorTier(path)  # the default wraps float graphs only; this one it takes as given


def test_other_task_in_metadata(tmp_path):
    path = _identity_model(tmp_path / "seg.onnx", [1, 3, 32, 32], [1, 12, 256], {"task": "segment"})
    with pytest.raises(ModelFileError, match="task 'segment'"):
        DetectorTier(path)


def test_metadata_names_must_match_head(tmp_path):
    path = _identity_model(tmp_path / "n.onnx", [1, 3, 32, 32], [1, 8, 384],
                           {"task": "detect", "names": "{0: 'a', 1: 'b'}", "stride": "32"})
    with pytest.raises(ModelFileError, match="names 2 classes but the head outputs 4"):
        DetectorTier(path)


def test_reads_size_stride_and_names_from_metadata(tmp_path):
    path = _identity_model(tmp_path / "ok.onnx", [1, 3, 32, 32], [1, 6, 512],
                           {"task": "detect", "names": "{0: 'car', 1: 'person'}", "stride": "16", "imgsz": "[32, 32]"})
    det = DetectorTier(path)
    assert det.info.input_size == (32, 32) and det.info.stride == 16
    assert det.class_names == ("car", "person") and det.info.num_anchors == 512


def test_real_yolov8_export_metadata(peer_model):
    det = DetectorTier(peer_model)
    assert det.info.input_size == (320, 320) and det.info.stride == 32
    assert det.class_names == tuple(str(i) for i in range(80))  # a yaml-built model names classes by index
    assert det.info.num_anchors == 2100  # 40*40 + 20*20 + 10*10


def test_unavailable_providers_fall_back_to_cpu_in_order_and_say_so_once(caplog, monkeypatch):
    import adaptive_perception.detector as detector

    monkeypatch.setattr(detector, "_WARNED_UNAVAILABLE", set())  # what earlier tests in this process were told
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level("WARNING", logger="adaptive_perception.detector"):
        for _ in range(4):  # three tiers and the audit worker ask alike
            assert select_providers(wanted, available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert select_providers(["TensorrtExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    fallbacks = [r.getMessage() for r in caplog.records if "not available in this onnxruntime build" in r.getMessage()]
    assert len(fallbacks) == 2 and "['TensorrtExecutionProvider']" in fallbacks[0], fallbacks


@pytest.mark.parametrize("name,guess", [("CUDA", "CUDAExecutionProvider"), ("cpu", "CPUExecutionProvider"),
                                        ("TensorRT", "TensorrtExecutionProvider"),
                                        ("CUDAExecutionProvder", "CUDAExecutionProvider"), ("Tegra", None)])
def test_a_provider_name_onnxruntime_does_not_know_is_refused_not_taken_for_a_missing_gpu(name, guess):
    """`--provider CUDA` fell back to the CPU with the warning a machine without a GPU gets: a typo read as no GPU."""
    wanted = ["TensorrtExecutionProvider", name, "CPUExecutionProvider"]
    with pytest.raises(ConfigError, match=f"execution provider '{name}' is not one onnxruntime knows") as refused:
        select_providers(wanted, ["CPUExecutionProvider"])
    said = str(refused.value)
    assert (f"did you mean '{guess}'?" in said) if guess else ("did you mean" not in said)
    assert "CUDAExecutionProvider, " in said and "--provider" in said
    with pytest.raises(ConfigError, match=f"'{name}'"):  # the tiers refuse it before loading anything
        DetectorTier(resolve_model("embedded:nano"), (name,))


def test_letterbox_centres_and_records_the_mapping():
    image = np.zeros((480, 640, 3), np.uint8)
    padded, box = letterbox(image, (320, 320))
    assert padded.shape == (320, 320, 3)
    assert box.scale == 0.5 and (box.pad_x, box.pad_y) == (0, 40)
    assert (padded[:40] == 114).all() and (padded[280:] == 114).all() and (padded[40:280] == 0).all()


def test_letterbox_resizes_into_the_canvas_with_uneven_borders_and_skips_what_is_not_needed():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    # scale 64/53: 53x37 -> 64x45 (44.68 rounded), 19 grey rows split 9 above and 10 below
    padded, box = letterbox(image, (64, 64))
    assert padded.shape == (64, 64, 3) and (box.pad_x, box.pad_y) == (0, 9) and box.scale == pytest.approx(64 / 53)
    assert (padded[:9] == 114).all() and (padded[54:] == 114).all()
    assert np.array_equal(padded[9:54], cv2.resize(image, (64, 45), interpolation=cv2.INTER_LINEAR))
    tall = rng.integers(0, 256, (100, 50, 3), dtype=np.uint8)  # 50x100 -> 32x64, 16 grey columns each side
    padded, box = letterbox(tall, (64, 64))
    assert (box.pad_x, box.pad_y) == (16, 0) and (padded[:, :16] == 114).all() and (padded[:, 48:] == 114).all()
    assert np.array_equal(padded[:, 16:48], cv2.resize(tall, (32, 64), interpolation=cv2.INTER_LINEAR))
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    same, box = letterbox(frame, (480, 640))  # the large tier's input size: the frame itself, not a copy
    assert same is frame and (box.scale, box.pad_x, box.pad_y) == (1.0, 0, 0)
    resized, box = letterbox(frame, (192, 256))  # nano's: an exact 0.4 resize, no border
    assert np.array_equal(resized, cv2.resize(frame, (256, 192), interpolation=cv2.INTER_LINEAR)) and box.scale == 0.4
    framed, box = letterbox(image, (37, 57))  # no resize, a 2-column border on each side
    assert (box.scale, box.pad_x, box.pad_y) == (1.0, 2, 0) and np.array_equal(framed[:, 2:55], image)
    assert (framed[:, :2] == 114).all() and (framed[:, 55:] == 114).all()


def test_nms_suppresses_only_overlaps_above_threshold():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.99).tolist() == [3, 0, 1, 2]


def test_detections_names_fall_back_to_index():
    det = Detections(np.zeros((2, 4), np.float32), np.ones(2, np.float32), np.array([1, 5]), ("a", "b"))
    assert det.names() == ["b", "5"] and len(det) == 2


def test_gpu_provider_options_cache_engines_per_model_and_set_fp16(peer_model, tmp_path):
    from adaptive_perception.detector import AcceleratorSettings, file_digest, provider_options

    settings = AcceleratorSettings(trt_cache_dir=str(tmp_path / "trt"), trt_fp16=False, device_id=1)
    digest = file_digest(peer_model)
    options = provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                               peer_model, digest, settings)
    trt, cuda, cpu = options
    cache = tmp_path / "trt" / f"{peer_model.stem}-{digest}"
    assert trt == ("TensorrtExecutionProvider", {
        "device_id": "1", "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache), "trt_fp16_enable": "False"})
    assert cache.is_dir()  # created up front: onnxruntime writes the engine there on the first run
    assert cuda == ("CUDAExecutionProvider", {"device_id": "1"}) and cpu == "CPUExecutionProvider"
    other = provider_options(["TensorrtExecutionProvider"], peer_model, "0" * 16, AcceleratorSettings(str(tmp_path / "trt")))
    assert other[0][1]["trt_engine_cache_path"] != str(cache) and other[0][1]["trt_fp16_enable"] == "True"


def test_requested_gpu_providers_fall_back_to_cpu_visibly(peer_model, tmp_path, caplog):
    from adaptive_perception.detector import DEFAULT_PROVIDERS, AcceleratorSettings

    detector = DetectorTier(peer_model, DEFAULT_PROVIDERS, accelerator=AcceleratorSettings(str(tmp_path / "trt")))
    assert detector.providers == ("CPUExecutionProvider",)  # this machine's onnxruntime has no GPU providers
    assert detector.requested[0] == "TensorrtExecutionProvider"
    assert "TensorrtExecutionProvider" in caplog.text and "not available" in caplog.text
    assert not (tmp_path / "trt").exists()  # no engine cache for a provider that is not used


def test_a_model_whose_metadata_is_not_valid_text_is_named(tmp_path, peer_model):
    """A byte damaged in a tier's metadata failed configure with a bare "'utf-8' codec can't decode byte 0xb5",
    naming neither the file nor the parameter."""
    model = onnx.load(str(peer_model))
    model.metadata_props.add(key="note", value="ZZZZ")
    path = tmp_path / "damaged.onnx"
    onnx.save(model, str(path))
    path.write_bytes(path.read_bytes().replace(b"ZZZZ", b"Z\xb5ZZ"))
    with pytest.raises(ModelFileError, match=f"model file '{path}': its metadata is not valid text .*copy or export it"):
        DetectorTier(path, ("CPUExecutionProvider",))


def test_the_core_used_as_a_library_takes_what_the_node_takes_and_names_what_it_cannot():
    """Without ROS: `embedded:` names failed in the constructors (with a hint naming the name that failed), one
    provider given as a string was read letter by letter, max_detections -1 dropped the last box, and an empty or a
    1x5000 frame ended in ZeroDivisionError or a cv2 error."""
    tier = DetectorTier("embedded:nano", providers="CPUExecutionProvider")
    assert str(tier.path) == resolve_model("embedded:nano") and tier.name == "nano"
    assert tier.requested == ("CPUExecutionProvider",)
    with pytest.raises(ConfigError, match="'embedded:huge' names no file shipped with the package"):
        DetectorTier("embedded:huge")
    for count in (0, -1):
        with pytest.raises(ValueError, match=f"max_detections {count} must be >= 1"):
            DetectorTier("embedded:nano", max_detections=count)
    with pytest.raises(ValueError, match=r"image size 0x0 is empty"):
        tier.detect(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image size 5000x1 has an aspect ratio beyond 64:1"):
        tier.detect(np.zeros((1, 5000, 3), np.uint8))
    with pytest.raises(ValueError, match=r"HxWx3 uint8 RGB image \(a numpy array\), got list"):
        tier.detect([[[0, 0, 0]]])


def test_max_detections_keeps_exactly_that_many_highest_scoring_boxes(peer_model, scene_rgb):
    everything = DetectorTier(peer_model, max_detections=300).detect(scene_rgb)
    assert len(everything) > 3  # precondition: the scene gives more than the caps below
    for cap in (1, 3):
        capped = DetectorTier(peer_model, max_detections=cap).detect(scene_rgb)
        assert len(capped) == cap
        np.testing.assert_array_equal(capped.scores, everything.scores[:cap])  # NMS order: highest score first


def test_nms_at_iou_threshold_0_keeps_boxes_that_do_not_overlap_at_all():
    """Three disjoint boxes (IoU 0 with each other) and one inside the first (IoU 81/100 with it): at threshold
    0 the disjoint ones stay (IoU 0 is not above 0), the overlapping one goes."""

    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [1, 1, 10, 10]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7, 0.6], np.float32), 0.0).tolist() == [0, 1, 2]
