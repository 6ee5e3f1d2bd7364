"""The node's per-frame path without ROS that the drift report and the threshold calibration run on."""
from __future__ import annotations

import numpy as np
import pytest

from adaptive_perception.audit import agreement
from adaptive_perception.detector import TIERS
from adaptive_perception.drift import veil
from adaptive_perception.policy import Policy
from adaptive_perception.scenes.sequence import SequenceSpec, render_sequence
from adaptive_perception.training.drift_reference import cpu_detectors, node_stream
from policies import constant_policy


@pytest.fixture(scope="module")
def embedded_tiers():
    return cpu_detectors()


@pytest.fixture(scope="module")
def frames():
    # a busy scene: 9 frames of seed 4's sequence 1, which the embedded tiers see differently
    return [(f.rgb, f.stamp_ns) for f in render_sequence(SequenceSpec(4, 1, 9, version="2.0.0"))]


@pytest.mark.parametrize("tier", [0, 2])
def test_the_stream_routes_audits_every_nth_frame_and_carries_the_routed_output_forward(tmp_path, embedded_tiers,
                                                                                      frames, tier):
    probabilities = [0.01, 0.01, 0.01]
    probabilities[tier] = 0.98
    policy = Policy(constant_policy(tmp_path / "p.onnx", tuple(probabilities)))
    features, tiers, agreements, veils = node_stream(policy, frames, embedded_tiers, audit_every=4)
    assert tiers.tolist() == [tier] * 9 and features.shape == (9, 1028)
    assert veils.tolist() == [veil(rgb) for rgb, _ in frames] and len(set(veils.tolist())) > 1
    audited = [i for i in range(9) if np.isfinite(agreements[i])]
    assert audited == [0, 4, 8]
    routed = [embedded_tiers[TIERS[tier]].detect(rgb) for rgb, _ in frames]
    large = [embedded_tiers["large"].detect(rgb) for rgb, _ in frames]
    for i in audited:  # the routed tier's output against large's: 1.0 when large was routed
        expected = 1.0 if tier == 2 else agreement(routed[i], large[i])
        assert agreements[i] == pytest.approx(expected)
    # context: frame i + 1 sees frame i's routed output (count, and the tier that ran: (tier + 1) / 3)
    assert features[0, 1024:].tolist() == [0.0, 0.0, 0.0, 0.0]
    for i in range(8):
        assert features[i + 1, 1024] == pytest.approx(np.log1p(len(routed[i])))
        assert features[i + 1, 1026] == pytest.approx((tier + 1) / 3)


def test_the_scene_is_one_the_tiers_disagree_on(embedded_tiers, frames):
    """The fixture's premise: nano and large do not publish the same boxes there (else the test above proves little)."""
    rgb = frames[0][0]
    assert agreement(embedded_tiers["nano"].detect(rgb), embedded_tiers["large"].detect(rgb)) < 0.9


@pytest.mark.parametrize("tier, expected", [(0, [1.0, 0.0, 0.0] * 4), (1, [1.0, 1.0, 0.0] * 4), (2, [1.0] * 12)])
def test_the_profile_stream_carries_every_frames_agreement_for_the_phase_calibration(tmp_path, tier, expected):
    """The threshold calibration reads every phase of the node's audit sampling, so the held-out profile streams
    carry the routed tier's agreement with large on every frame. In the profile, frame f holds the same box for
    tiers f % 3 .. 2 and nothing for the others: nano agrees with large on frames 0, 3, 6, ... only."""
    from test_routing_training import _profile

    from adaptive_perception.training.drift_reference import routed_stream
    from adaptive_perception.training.labels import Costs
    from adaptive_perception.training.simulate import Split

    probabilities = [0.01, 0.01, 0.01]
    probabilities[tier] = 0.98
    policy = Policy(constant_policy(tmp_path / "p.onnx", tuple(probabilities)))
    costs = Costs("test", np.array([10.0, 40.0, 100.0]))
    features, tiers, agreements, _ = routed_stream(policy, Split.build(_profile(12)), costs)
    assert tiers.tolist() == [tier] * 12 and features.shape == (12, 1024)
    assert agreements.tolist() == expected
