"""Widening a trained YOLOv8 network (training/widen.py): the wider network computes what the trained one did."""
from __future__ import annotations

import pytest
import torch

from adaptive_perception.training.crops import CropPlan
from adaptive_perception.training.tiers import Network, architecture
from adaptive_perception.training.widen import widen, widen_model


def _model(tmp_path, width: float, depth: float = 0.33, seed: int = 0):
    from ultralytics.nn.tasks import DetectionModel

    network = Network(f"w{int(width * 1000)}d{int(depth * 100)}", depth, width, CropPlan(scales=(1.0,)))
    torch.manual_seed(seed)
    model = DetectionModel(str(architecture(network, tmp_path)), nc=5, verbose=False).float()
    with torch.no_grad():  # trained-looking batch norms: no statistic at its initial value
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _outputs(model, image):
    with torch.no_grad():
        return model(image)[0]


def test_the_widened_network_gives_the_trained_networks_outputs_and_has_new_channels(tmp_path):
    old, new = _model(tmp_path, 0.125), _model(tmp_path, 0.25, seed=1)
    image = torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(3))
    before = _outputs(new, image)
    widen_model(old, new)
    expected, got = _outputs(old, image), _outputs(new, image)
    assert expected.shape == got.shape == (1, 4 + 5, 32 * 40 + 16 * 20 + 8 * 10)  # boxes and 5 class scores
    assert float((expected - got).abs().max()) < 1e-4 * float(expected.abs().max())
    assert float((before - got).abs().max()) > 1.0  # the copy did change the wide network
    # the first convolution: 8 old filters at the head, 8 new ones left at their random start
    first_old, first_new = old.model[0].conv.weight, new.model[0].conv.weight
    assert first_new.shape[0] == 2 * first_old.shape[0] == 16
    torch.testing.assert_close(first_new[:8], first_old)
    assert float(first_new[8:].detach().abs().sum()) > 0
    # a C2f's split: the old channels of each half sit at the head of that half, and the old filters read no new
    # input channel (the layer before it has 32 channels, of which the first 16 are old)
    old_cv1, new_cv1 = old.model[2].cv1.conv.weight, new.model[2].cv1.conv.weight  # 16 -> 2 x 8, now 32 -> 2 x 16
    torch.testing.assert_close(new_cv1[[*range(8), *range(16, 24)], :16], old_cv1)
    assert float(new_cv1[[*range(8), *range(16, 24)], 16:].detach().abs().sum()) == 0.0


def test_widen_writes_a_checkpoint_that_ultralytics_loads_with_the_same_detections(tmp_path):
    from ultralytics import YOLO

    old = _model(tmp_path, 0.125).half().float()  # what a checkpoint stores: half-precision weights
    source = tmp_path / "trained.pt"
    torch.save({"model": old.half(), "ema": None, "train_args": {}}, source)
    old = old.float()
    wide_yaml = architecture(Network("wide", 0.33, 0.1875, CropPlan(scales=(1.0,))), tmp_path)
    out = widen(source, wide_yaml, tmp_path / "start.pt")
    loaded = YOLO(str(out)).model.float().eval()
    assert loaded.model[0].conv.out_channels == 16  # 64 x 0.1875 = 12, rounded up to a multiple of 8
    image = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(5))
    expected, got = _outputs(old, image), _outputs(loaded, image)
    assert float((expected - got).abs().max()) < 1e-3 * float(expected.abs().max())
    assert loaded.names == old.names


def test_networks_of_another_depth_and_narrower_targets_are_refused(tmp_path):
    shallow, deep = _model(tmp_path, 0.125), _model(tmp_path, 0.25, depth=0.67)
    assert len(list(shallow.model)) == len(list(deep.model))  # same layers; C2f blocks hold more bottlenecks
    with pytest.raises(ValueError, match="differ in depth"):
        widen_model(shallow, deep)
    with pytest.raises(ValueError, match="narrower"):  # a narrower target cannot hold the trained weights
        widen_model(_model(tmp_path, 0.25), shallow)


def test_a_fine_tune_starts_from_its_start_networks_last_or_final_weights(tmp_path):
    from adaptive_perception.errors import AdaptivePerceptionError
    from adaptive_perception.training.tiers import NETWORKS, start_checkpoint

    keep = tmp_path / "tiers" / "wider"
    with pytest.raises(AdaptivePerceptionError, match="starts from 'wide'.*none in '.*tiers/wide'"):
        start_checkpoint(NETWORKS["wider"], keep)
    (tmp_path / "tiers" / "wide").mkdir(parents=True)
    (tmp_path / "tiers" / "wide" / "final.pt").write_bytes(b"final")
    assert start_checkpoint(NETWORKS["wider"], keep) == tmp_path / "tiers" / "wide" / "final.pt"
    (tmp_path / "tiers" / "wide" / "last.pt").write_bytes(b"last")  # a run with its optimizer state goes first
    assert start_checkpoint(NETWORKS["wider"], keep) == tmp_path / "tiers" / "wide" / "last.pt"
    assert NETWORKS["wider"].width == 0.5 and NETWORKS["wider"].depth == NETWORKS["wide"].depth  # yolov8s's width
