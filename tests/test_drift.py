"""The drift monitor without ROS: PSI and mix shift by hand, the state machine's hysteresis, calibration."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from adaptive_perception.drift import (BINS, DRIFT, OK, PROJECTIONS, QUALITY_FEATURES, UNKNOWN, WARN, DriftMonitor,
                                       DriftReference, DriftWatch, agreement_peak, build_reference, calibrate,
                                       calibrate_quality, decile_bins, feature_psi, mix_tvd, quality_shift,
                                       routing_difference, same_weight, veil, weight_text)
from adaptive_perception.errors import ConfigError


def _reference(**overrides) -> DriftReference:
    fields = dict(mean=[0.0] * 4, std=[1.0] * 4, edges=[list(map(float, range(1, BINS)))] * PROJECTIONS,
                  tier_mix=[0.5, 0.3, 0.2], agreement=0.8,
                  thresholds={"feature_psi": 1.0, "mix_tvd": 1.0, "agreement_drop": 1.0}, window=10)
    fields.update(overrides)
    return DriftReference(**fields)


def test_psi_is_zero_on_the_reference_deciles_and_large_when_every_frame_falls_in_one_bin():
    reference = _reference()
    spread = np.repeat(np.arange(10)[:, None] + 0.5, PROJECTIONS, axis=1)  # one frame in each decile bin
    assert feature_psi(reference, spread) == pytest.approx(0.0)
    piled = np.full((10, PROJECTIONS), 0.5)  # every frame in the first bin; the 9 empty ones floored at 0.5 / 10
    assert feature_psi(reference, piled) == pytest.approx(0.9 * math.log(10) + 9 * 0.05 * math.log(2))  # 2.3842
    # a value on an edge belongs to the bin above it (edges 1..9: 1.0 is in bin 1, 9.0 in bin 9, 0.999 in bin 0)
    assert decile_bins(np.asarray(reference.edges), np.array([1.0, 9.0, 0.999, 4.0, 4.5, 0.0, 10.0, 3.0])).tolist() \
        == [1, 9, 0, 4, 4, 0, 9, 3]
    # half the frames on the edge 1.0, half at 0.5: two bins of 5, eight empty ones floored at 0.05:
    # 2 x 0.4 ln 5 + 8 x 0.05 ln 2 = 1.5648 (a < in place of <= would pile all ten in bin 0: 2.3842)
    halves = np.vstack([np.full((5, PROJECTIONS), 1.0), np.full((5, PROJECTIONS), 0.5)])
    assert feature_psi(reference, halves) == pytest.approx(0.8 * math.log(5) + 8 * 0.05 * math.log(2))


def test_mix_shift_is_the_total_variation_distance():
    # window mix 0.2 / 0.1 / 0.7 against 0.5 / 0.3 / 0.2: (0.3 + 0.2 + 0.5) / 2
    assert mix_tvd(_reference(), np.array([0, 0, 1, 2, 2, 2, 2, 2, 2, 2])) == pytest.approx(0.5)


def test_the_state_machine_warns_at_once_confirms_drift_and_releases_only_below_the_band():
    monitor = DriftMonitor(_reference(), confirm=3, release=0.8)
    states = [monitor.advance(score)[0] for score in
              [0.5, 1.2, 0.9, 0.7, 1.5, 1.5, 1.5, 0.9, 0.5, 0.5, 1.1, 0.5]]
    # OK; WARN at once; 0.9 is inside the band: still WARN; 0.7 below it: OK; three above: WARN, WARN, DRIFT;
    # DRIFT holds through 0.9 and two frames below (confirm = 3), a frame above resets the count, then one below;
    # two more below make three in a row: OK
    assert states == [OK, WARN, WARN, OK, WARN, WARN, DRIFT, DRIFT, DRIFT, DRIFT, DRIFT, DRIFT]
    assert [monitor.advance(0.5)[0] for _ in range(3)] == [DRIFT, OK, OK]


def test_calibrated_thresholds_hold_on_new_in_distribution_frames_and_a_shift_is_drift():
    rng = np.random.default_rng(1)
    dims = 1024
    scale = rng.uniform(0.5, 2.0, dims)

    def stream(n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features = rng.standard_normal((n, dims)) * scale + shift * scale
        tiers = rng.choice(3, n, p=[0.6, 0.3, 0.1])
        agreements = np.where(np.arange(n) % 30 == 0, rng.uniform(0.7, 0.9, n), np.nan)
        return features, tiers, agreements

    features, tiers, agreements = stream(2000)
    reference = build_reference(features, tiers, agreements[np.isfinite(agreements)])
    assert reference.tier_mix == pytest.approx([0.6, 0.3, 0.1], abs=0.03) and reference.agreement == pytest.approx(0.8, abs=0.02)
    reference.thresholds = calibrate(reference, [stream(600) for _ in range(3)])
    assert set(reference.thresholds) == {"feature_psi", "mix_tvd", "agreement_drop", "image_quality"}
    loaded = DriftReference.from_json(reference.to_json())
    assert loaded.edges == reference.edges and loaded.thresholds == reference.thresholds
    monitor = DriftMonitor(loaded, confirm=15)
    fresh, fresh_tiers, _ = stream(600)
    states = [monitor.update(f, t)[0] for f, t in zip(fresh, fresh_tiers)]
    assert states[:loaded.window - 1] == [UNKNOWN] * (loaded.window - 1)
    assert DRIFT not in states  # no false alarm on 600 new in-distribution frames
    shifted, shifted_tiers, _ = stream(300, shift=1.0)
    states = [monitor.update(f, t)[0] for f, t in zip(shifted, shifted_tiers)]
    assert DRIFT in states and states.index(DRIFT) < 150  # within 5 s at 30 Hz of the change


def test_a_reference_without_thresholds_or_with_broken_json_is_refused():
    with pytest.raises(ConfigError, match="no calibrated thresholds"):
        DriftMonitor(_reference(thresholds={}))
    with pytest.raises(ConfigError, match="not readable"):
        DriftReference.from_json("{broken")
    # what a file can hold and the monitor cannot run on: refused with the field, never a TypeError or a frame
    # that fails (`max()` of no statistic), a score stuck at inf (a peak of 0) or a window of -1 (the node died)
    import json

    good = json.loads(_reference(quality_mean=[0.0] * len(QUALITY_FEATURES), quality_std=[1.0] * len(QUALITY_FEATURES),
                                 quality_peak=[1.5] * len(QUALITY_FEATURES)).to_json())
    assert DriftReference.from_json(json.dumps(good)).quality_peak == [1.5] * len(QUALITY_FEATURES)
    for change, needle in ((dict(thresholds={"bogus": 1.0}), "thresholds must map feature_psi"),
                           (dict(thresholds={"mix_tvd": 1.0}), "thresholds must map feature_psi"),
                           (dict(quality_peak=[0.0] * len(QUALITY_FEATURES)), "quality_peak must be a list of finite "
                                                                              "numbers >= 1"),
                           (dict(mean=5), "mean must be a list of finite numbers"),
                           (dict(quality_mean=None), "quality_mean must be a list"),
                           (dict(window=0), "window 0 must be a whole number in [1, 9000]"),
                           (dict(window=True), "window True must be a whole number"),
                           (dict(std=[1.0, float("inf"), 1.0, 1.0]), "std must be a list of finite numbers >= 0"),
                           (dict(edges=[[9.0, *range(2, 10)]] * PROJECTIONS), "edges must be 9 ascending values")):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            DriftReference.from_json(json.dumps({**good, **change}))


def test_the_agreement_threshold_never_falls_below_three_standard_errors_of_the_audit_mean():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((400, 1024))
    tiers = np.zeros(400, int)
    reference = build_reference(features, tiers, np.array([0.2, 0.4, 0.6, 0.8]))  # mean 0.5, std sqrt(0.05)
    # a held-out stream whose audits all agree perfectly: the drop never rises above 0 there
    thresholds = calibrate(reference, [(features[:200], tiers[:200], np.where(np.arange(200) % 10 == 0, 1.0, np.nan))])
    assert thresholds["agreement_drop"] == pytest.approx(3 * math.sqrt(0.05) / math.sqrt(10))  # 0.2121


def test_the_agreement_threshold_reads_every_phase_of_the_audit_sampling():
    """Which frames the node audits depends on when it started: a stream audited on every frame is read at each
    phase of the 1-in-N sampling, so a dip only one phase sees still sets the threshold."""
    rng = np.random.default_rng(3)
    features = rng.standard_normal((400, 1024))
    tiers = np.zeros(400, int)
    reference = build_reference(features, tiers, np.full(4, 0.8))  # agreement 0.8, spread 0: no floor
    dense = np.full(200, 0.8)
    dense[1:30:3] = 0.3  # phase 1 of 1-in-3: frames 1, 4, ..., 28, ten audits in a row at 0.3 -> drop 0.5
    dense[2:15:3] = 0.0  # phase 2: frames 2, 5, 8, 11, 14, five audits at 0 in a window of ten -> drop 0.4
    assert agreement_peak(reference, dense, 3) == pytest.approx(0.5)
    sparse = np.where(np.arange(200) % 3 == 0, dense, np.nan)  # a node that audits frames 0, 3, 6, ...
    assert agreement_peak(reference, sparse, 3) == pytest.approx(0.0)
    only_phase_2 = np.where(np.arange(200) % 3 == 2, dense, np.nan)
    assert agreement_peak(reference, only_phase_2, 3) == pytest.approx(0.4)
    thresholds = calibrate(reference, [(features[:200], tiers[:200], dense)], audit_every=3)
    assert thresholds["agreement_drop"] == pytest.approx(0.5 * 1.25)



EDGE_Q90 = QUALITY_FEATURES["edge_energy_q90"]
EDGE_AT = list(QUALITY_FEATURES).index("edge_energy_q90")


def test_quality_features_are_the_named_quantiles_of_the_documented_maps():
    # features.py: map m's k-th quantile (the (8k + 4)-th of 1024 sorted cells) is feature m * 128 + k;
    # the median is k = 64 (cell 516), the 90th percentile k = 115 (cell 924)
    assert QUALITY_FEATURES == {"edge_energy_q50": 64, "edge_energy_q90": 115, "colour_distance_q90": 243,
                                "saturation_q50": 320, "saturation_q90": 371, "chroma_q50": 448, "chroma_q90": 499}


def test_the_quality_reference_holds_the_spread_of_window_means_and_the_held_out_peaks():
    features = np.zeros((4, 1024))
    features[:, EDGE_Q90] = [0.0, 0.0, 1.0, 1.0]
    # with the default 150-frame window 4 frames fill none: the statistic stays off
    assert build_reference(features, np.zeros(4, int), np.array([0.5])).quality_mean == []
    reference = build_reference(features, np.zeros(4, int), np.array([0.5]), window=2)
    # 2-frame window means of the edge feature: 0, 0.5, 1 -> frame mean 0.5, std of the means sqrt(1/6) = 0.4082;
    # the constant features get the floor
    assert reference.quality_mean[EDGE_AT] == pytest.approx(0.5) and reference.quality_mean[0] == 0.0
    assert reference.quality_std[EDGE_AT] == pytest.approx(0.408248) and reference.quality_std[0] == 1e-6
    # held out: the edge feature at 0.5 for 2 frames, then 1.4: window means 0.5, 0.95, 1.4 -> largest distance
    # above 0.9 / 0.4082 = 2.2045; a second stream falls to -0.2: means 0.5, 0.15, -0.2 -> largest below
    # 0.7 / 0.4082 = 1.7146; every other feature sits at its mean and is floored at 1 both ways
    held = np.zeros((4, 1024))
    held[:, EDGE_Q90] = [0.5, 0.5, 1.4, 1.4]
    up, down = [1.0] * len(QUALITY_FEATURES), [1.0] * len(QUALITY_FEATURES)
    up[EDGE_AT] = 2.204541
    assert calibrate_quality(reference, [held]) == (pytest.approx(up), pytest.approx(down))
    falling = np.zeros((4, 1024))
    falling[:, EDGE_Q90] = [0.5, 0.5, -0.2, -0.2]
    down[EDGE_AT] = 1.714643
    assert calibrate_quality(reference, [held, falling]) == (pytest.approx(up), pytest.approx(down))


def test_the_quality_statistic_measures_each_direction_against_its_own_held_out_peak():
    # new scenes pushed the edge feature 2 window stds up but only 1 down: the same distance counts twice as
    # much downwards; a reference written before the split (no downward peaks) counts both ways alike
    quality = dict(quality_mean=[0.2] * len(QUALITY_FEATURES), quality_std=[0.05] * len(QUALITY_FEATURES),
                   quality_peak=[2.0] * len(QUALITY_FEATURES))
    two_way = _reference(quality_peak_down=[1.0] * len(QUALITY_FEATURES), **quality)
    one_way = _reference(**quality)
    window = np.full((10, len(QUALITY_FEATURES)), 0.2)
    window[:7, EDGE_AT] = 0.2 - 0.047  # mean 0.0329 below: 0.658 stds
    assert (quality_shift(two_way, window), quality_shift(one_way, window)) == pytest.approx((0.658, 0.329))
    window[:7, EDGE_AT] = 0.2 + 0.047  # as far above
    assert (quality_shift(two_way, window), quality_shift(one_way, window)) == pytest.approx((0.329, 0.329))
    assert DriftReference.from_json(two_way.to_json()).quality_peak_down == [1.0] * len(QUALITY_FEATURES)
    with pytest.raises(ConfigError, match="inconsistent sizes"):
        DriftReference.from_json(_reference(quality_peak_down=[1.0], **quality).to_json())


def test_a_camera_that_loses_contrast_is_drift_through_the_quality_statistic_alone():
    quality = dict(quality_mean=[0.2] * len(QUALITY_FEATURES), quality_std=[0.05] * len(QUALITY_FEATURES),
                   quality_peak=[2.0] * len(QUALITY_FEATURES))
    thresholds = {"feature_psi": 100.0, "mix_tvd": 1.0, "agreement_drop": 1.0, "image_quality": 1.25}
    reference = _reference(thresholds=thresholds, **quality)
    window = np.full((10, len(QUALITY_FEATURES)), 0.2)
    window[:7, EDGE_AT] = 0.2 - 0.047  # mean 0.2 - 0.0329: 0.658 stds, over a peak of 2
    assert quality_shift(reference, window) == pytest.approx(0.329)
    assert DriftReference.from_json(reference.to_json()).quality_peak == [2.0] * len(QUALITY_FEATURES)
    monitor = DriftMonitor(reference, confirm=3)
    frame = _counted(np.zeros(1028))
    frame[list(QUALITY_FEATURES.values())] = 0.2
    states = [monitor.update(frame, 0)[0] for _ in range(10)]
    assert states[-1] == OK and monitor.statistics["image_quality"] == pytest.approx(0.0, abs=1e-12)
    # edge contrast falls by 0.47 per frame: after k such frames the window mean is 0.047 k below, k x 0.94 stds,
    # k x 0.47 over the peak, k x 0.376 of the threshold: above 1 from k = 3 (1.128); DRIFT 3 frames later
    frame[EDGE_Q90] = 0.2 - 0.47
    states = [monitor.update(frame, 0)[0] for _ in range(6)]
    assert states == [OK, OK, WARN, WARN, DRIFT, DRIFT]
    assert monitor.score == pytest.approx(6 * 0.376)


def _counted(features: np.ndarray) -> np.ndarray:
    """Synthetic features with one joint-histogram count set, as every real frame's are (the monitor refuses image
    statistics that are all zero: features taken before `Routed.complete`)."""
    features[1000] = 1.0
    return features


def _stripes(colours: list[tuple[int, int, int]]) -> np.ndarray:
    """A 480x640 frame of 32 vertical stripes, 20 px each (one routing-feature cell wide), in the given colours:
    the 64x64 bilinear samples fall inside a stripe and each 32x32 cell averages two samples of one stripe, so
    the 1024 cells are 32 copies of each colour, exactly."""
    frame = np.empty((480, 640, 3), np.uint8)
    for k, colour in enumerate(colours):
        frame[:, 20 * k:20 * (k + 1)] = colour
    return frame


def test_the_veil_is_the_cells_5th_percentile_black_level_over_their_95th_percentile_white_level():
    # stripe k (in a shuffled order) is (3k + 10, 3k + 20, 3k + 30): darkest channel 3k + 10, brightest 3k + 30.
    # Sorted, the 1024 cells are 32 cells of each stripe: the 52nd lowest darkest channel (index 51) is in the
    # second stripe, 13; the 973rd lowest brightest (index 972) in the 31st, 120. (Not the lowest and highest,
    # 10 and 123, nor the medians.)
    order = np.random.default_rng(3).permutation(32)
    frame = _stripes([(3 * k + 10, 3 * k + 20, 3 * k + 30) for k in order])
    assert veil(frame) == pytest.approx(13 / 120)
    # haze: 60 % of every pixel towards (200, 205, 210) lifts the black level to 0.4 x 13 + 0.6 x 200 = 125.2
    # and the white level to 0.4 x 120 + 0.6 x 210 = 174: the veil grows more than sixfold
    hazed = np.round(frame * 0.4 + np.array([200, 205, 210]) * 0.6).astype(np.uint8)
    assert veil(hazed) == pytest.approx(125 / 174)
    # a darker exposure of the same scene (every value halved, rounded) moves a ratio only by the rounding: 6 / 60
    assert veil((frame // 2).astype(np.uint8)) == pytest.approx(6 / 60)
    # a black frame: the white level is floored at 1, the veil is 0
    assert veil(np.zeros((480, 640, 3), np.uint8)) == 0.0


def test_the_veil_reference_calibration_and_monitor():
    features = np.zeros((4, 1024))
    # the reference's veils 0.1, 0.1, 0.3, 0.3 with 2-frame windows: window means 0.1, 0.2, 0.3 -> mean 0.2,
    # std of the means sqrt(2/3) x 0.1 = 0.08165
    reference = build_reference(features, np.zeros(4, int), np.array([0.5]), window=2,
                                veils=np.array([0.1, 0.1, 0.3, 0.3]))
    assert (reference.veil_mean, reference.veil_std) == pytest.approx((0.2, 0.0816497))
    assert build_reference(features, np.zeros(4, int), np.array([0.5]), window=2).veil_std == 0.0  # no veils: off
    nan4 = np.full(4, np.nan)
    # held out: veils 0.2, 0.2, 0.35, 0.35: windows 0.2, 0.275, 0.35 -> the largest is 0.15 / 0.08165 = 1.8371
    # window stds above; the threshold is that times the margin 1.25 = 2.2964; a stream that stays at the mean
    # is floored at one std: 1.25
    held = (features, np.zeros(4, int), nan4, np.array([0.2, 0.2, 0.35, 0.35]))
    assert calibrate(reference, [held])["veil"] == pytest.approx(2.296396)
    assert calibrate(reference, [(features, np.zeros(4, int), nan4, np.full(4, 0.2))])["veil"] == pytest.approx(1.25)
    with pytest.raises(ConfigError, match="needs its veils"):
        calibrate(reference, [(features, np.zeros(4, int), nan4)])
    reference.thresholds = {"feature_psi": 100.0, "mix_tvd": 1.0, "agreement_drop": 1.0, "veil": 2.5}
    assert DriftReference.from_json(reference.to_json()).veil_std == pytest.approx(0.0816497)
    monitor = DriftMonitor(reference, confirm=2)
    frame = _counted(np.zeros(1028))
    # veils 0.2, 0.3: window mean 0.25 -> 0.612 stds, 0.245 of the threshold; then 0.5 twice: 0.4 -> 2.449 stds
    # (0.980, OK), 0.5 -> 3.674 stds (1.470, WARN), then DRIFT on the second frame above 1
    states = [monitor.update(frame, 0, v)[0] for v in (0.2, 0.3, 0.5, 0.5, 0.5)]
    assert states == [UNKNOWN, OK, OK, WARN, DRIFT]
    assert monitor.statistics["veil"] == pytest.approx(3.674235)
    # a frame without a veil empties the veil window: the statistic is left out until the window refills
    monitor.update(frame, 0)
    assert "veil" not in monitor.statistics
    monitor.update(frame, 0, 0.2)
    assert "veil" not in monitor.statistics
    monitor.update(frame, 0, 0.2)
    assert monitor.statistics["veil"] == pytest.approx(0.0)


def test_the_node_side_takes_each_frames_veil_from_its_pixels():
    reference = build_reference(np.zeros((4, 1024)), np.zeros(4, int), np.array([0.5]), window=2,
                                veils=np.array([0.1, 0.1, 0.3, 0.3]))
    reference.thresholds = {"feature_psi": 100.0, "mix_tvd": 1.0, "agreement_drop": 1.0, "veil": 2.5}
    watch = DriftWatch(["camera"], reference, confirm=2)
    clear = _stripes([(3 * k + 10, 3 * k + 20, 3 * k + 30) for k in range(32)])  # veil 13 / 120 = 0.108
    hazed = np.round(clear * 0.4 + np.array([200, 205, 210]) * 0.6).astype(np.uint8)  # 125 / 174 = 0.718
    frame = _counted(np.zeros(1028))
    states = [watch.frame("camera", frame, 0, rgb, None)[1] for rgb in (clear, clear, hazed, hazed)]
    # windows: 0.108 (-1.12 stds), then (0.108 + 0.718) / 2 = 0.413 (2.61 stds, 1.04 of the threshold: WARN),
    # then 0.718 (6.35 stds): DRIFT
    assert states == [UNKNOWN, OK, WARN, DRIFT]
    assert watch.monitors["camera"].statistics["veil"] == pytest.approx((125 / 174 - 0.2) / 0.0816497)


def test_the_monitor_keeps_the_windows_decile_counts_as_frames_come_and_go():
    # the monitor counts each frame's decile bins once, as it enters and as it leaves the window; the PSI of its
    # counts must be the PSI of the window's features projected afresh, frame after frame, as the window slides
    # over a shift (the batch path: `feature_psi`, what calibration uses)
    rng = np.random.default_rng(5)
    features = rng.standard_normal((300, 1024))
    reference = build_reference(features, rng.choice(3, 300), np.full(10, 0.5), window=40)
    reference.thresholds = {"feature_psi": 10.0, "mix_tvd": 1.0, "agreement_drop": 1.0, "image_quality": 100.0}
    monitor = DriftMonitor(reference)
    stream = np.vstack([rng.standard_normal((60, 1024)), rng.standard_normal((60, 1024)) * 0.2 + 1.0])
    seen = []
    for end, frame in enumerate(stream, start=1):
        monitor.update(frame, 0)
        if end >= 40:
            seen.append(monitor.statistics["feature_psi"])
            assert seen[-1] == pytest.approx(feature_psi(reference, reference.project(stream[end - 40:end])), abs=1e-12)
    assert seen[0] < 0.5 and seen[-1] > 2.0  # in distribution, then every projection piled into a few deciles


def test_weight_text_is_a_decimal_literal_that_ros_reads_back_as_a_double():
    import yaml  # what `ros2 param set` parses its value with

    for weight, text in ((1.0, "1.0"), (0.0, "0.0"), (1e-5, "0.00001"), (0.08734, "0.08734"),
                         (0.28017234802246094, "0.280172"), (2.5, "2.5")):
        assert weight_text(weight) == text
        assert isinstance(yaml.safe_load(text), float) and same_weight(yaml.safe_load(text), weight)
    assert not isinstance(yaml.safe_load(f"{1e-5:.4g}"), float) and isinstance(yaml.safe_load(f"{1.0:.4g}"), int)


def test_routing_difference_names_what_differs_from_the_routing_the_reference_measured():
    measured = _reference(cost_weight=0.28, hysteresis=0.0)
    assert routing_difference(measured, "learned", 0.28, 0.0) == ""
    assert routing_difference(measured, "learned", 0.28 + 1e-9, 0.0) == ""  # a float written and read back
    assert routing_difference(measured, "learned", 0.5, 0.0) == "the cost weight is 0.5"
    # a weight typed back from a rounded figure (the embedded policy's own is 0.28017234802246094) routes alike
    own = _reference(cost_weight=0.28017234802246094, hysteresis=0.0)
    assert routing_difference(own, "learned", float(weight_text(own.cost_weight)), 0.0) == ""
    assert routing_difference(own, "learned", 0.2802, 0.0) == ""
    assert routing_difference(own, "learned", 0.2795, 0.0) == "the cost weight is 0.2795"  # 0.24 % off
    assert routing_difference(measured, "fixed:large", 0.28, 0.0) == "the routing mode is fixed:large"
    assert routing_difference(measured, "heuristic", None, 0.0) == "the routing mode is heuristic"
    assert routing_difference(measured, "learned", 0.28, 0.2) == "the hysteresis is 0.2"
    assert routing_difference(measured, "learned", None, 0.0) == ""  # a logits policy has no weight to compare
    assert routing_difference(_reference(), "learned", 0.5, 0.0) == ""  # nor a reference without one


def test_the_monitor_leaves_out_mix_and_agreement_while_routing_differs_and_restarts_them_clean():
    # reference mix 0.5 / 0.3 / 0.2 (window 10), mix threshold 0.3: every frame to large (a fixed:large baseline
    # on the same scenes) is a mix shift of 0.8, DRIFT on routing alone unless the monitor leaves the mix out
    rng = np.random.default_rng(7)
    features = rng.standard_normal((400, 1024))
    reference = build_reference(features, np.repeat([0, 0, 0, 0, 0, 1, 1, 1, 2, 2], 40), np.full(10, 0.8), window=10)
    reference.thresholds = {"feature_psi": 10.0, "mix_tvd": 0.3, "agreement_drop": 0.2}
    fresh = rng.standard_normal((60, 1024))

    compared = DriftMonitor(reference, confirm=3)
    states = [compared.update(f, 2)[0] for f in fresh[:15]]
    assert compared.statistics["mix_tvd"] == pytest.approx(0.8) and states[-1] == DRIFT

    monitor = DriftMonitor(reference, confirm=3)
    monitor.set_routing_difference("the routing mode is fixed:large")
    states = [monitor.update(fresh[0], 2)[0]]  # the difference applies from this frame on
    for _ in range(10):
        monitor.audit(0.0)  # audits of frames routed another way: they must not count
    assert len(monitor._audits) == 0
    states += [monitor.update(f, 2)[0] for f in fresh[1:15]]
    assert set(monitor.statistics) == {"feature_psi", "image_quality"} and DRIFT not in states and states[-1] == OK

    # back to the reference's routing: the window's tiers start over, so for 9 frames there is no mix, and then
    # it is the mix of the frames routed since (0.5 / 0.3 / 0.2: distance 0), not of the fixed:large ones
    monitor.set_routing_difference("")
    routed = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    for i, tier in enumerate(routed[:9]):
        monitor.update(fresh[15 + i], tier)
        assert "mix_tvd" not in monitor.statistics and monitor.statistics["agreement_drop"] == 0.0  # no audits yet
    monitor.update(fresh[24], routed[9])
    assert monitor.statistics["mix_tvd"] == pytest.approx(0.0) and monitor.state == OK
    for _ in range(10):
        monitor.audit(0.5)
    monitor.update(fresh[25], 0)
    assert monitor.statistics["agreement_drop"] == pytest.approx(0.3)  # 0.8 - 0.5: audits count again


def test_the_watch_compares_the_routing_with_each_references_own():
    at_028, at_05 = (_reference(cost_weight=w, thresholds={"feature_psi": 1.0, "mix_tvd": 1.0, "agreement_drop": 1.0})
                     for w in (0.28, 0.5))
    watch = DriftWatch(["a", "b"], at_028)
    assert watch.set_routing("learned", 0.5, 0.0) == "the cost weight is 0.5"
    watch.monitors["a"].update(_counted(np.zeros(1028)), 0)
    assert watch.monitors["a"].routing_off == "the cost weight is 0.5"
    watch.set_reference(at_05)  # a policy whose reference was measured at 0.5: its monitors compare the mix
    assert all(m._routing_next == "" for m in watch.monitors.values())
    assert watch.set_routing("fixed:nano", 0.5, 0.0) == "the routing mode is fixed:nano"
    assert DriftWatch(["a"], None).set_routing("fixed:nano", None, 0.0) == ""  # no reference: nothing to leave out


def test_a_frame_and_an_audit_in_flight_at_a_routing_change_are_left_out():
    import threading
    import time

    from adaptive_perception.audit import AuditSettings
    from adaptive_perception.detector import Detections

    release = threading.Event()
    box = Detections(np.array([[10, 10, 50, 50]], np.float32), np.array([0.9], np.float32), np.array([1]))

    def reference_tier(_rgb):  # large, slow: holds the audit until the test lets it finish
        release.wait(10)
        return box

    watch = DriftWatch(["a"], _reference(cost_weight=0.28, hysteresis=0.0), reference_tier,
                       AuditSettings(every=1, max_share=1.0))
    monitor, rgb, features = watch.monitors["a"], np.zeros((8, 8, 3), np.uint8), _counted(np.zeros(1028))

    def finished(count: int) -> None:
        deadline = time.monotonic() + 10
        while (len(watch.agreements["a"]) < count or not watch.audit.idle) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(watch.agreements["a"]) == count

    try:
        assert watch.set_routing("fixed:large", 0.28, 0.0) == "the routing mode is fixed:large"
        before = watch.routing_generation
        # a frame routed to large under fixed:large (its audit agrees fully) finishes after the return to learned
        assert watch.set_routing("learned", 0.28, 0.0) == "" and watch.routing_generation == before + 1
        watch.set_routing("learned", 0.28, 0.0)  # the same routing again: frames in flight still count
        assert watch.routing_generation == before + 1
        audited, *_ = watch.frame("a", features, 2, rgb, box, before)
        assert audited and len(monitor._tiers) == 0  # its tier joined no window
        release.set()
        finished(1)
        assert watch.agreements["a"] == [1.0] and len(monitor._audits) == 0  # shown, not counted
        # a frame routed after the change counts, and so does its audit
        assert watch.frame("a", features, 0, rgb, box, watch.routing_generation)[0]
        finished(2)
        assert list(monitor._tiers) == [0] and list(monitor._audits) == [1.0]
        # a new policy (here: a reference measured at the same routing) starts over without the old one's frames
        old = watch.routing_generation
        watch.set_reference(_reference(cost_weight=0.28, hysteresis=0.0))
        assert watch.agreements["a"] == []  # the agreement shown is the new policy's (it showed the old one's)
        assert watch.set_routing("learned", 0.28, 0.0) == ""
        done = watch.audit.audited
        assert watch.frame("a", features, 2, rgb, box, old)[0]
        deadline = time.monotonic() + 10
        while watch.audit.audited == done and time.monotonic() < deadline:  # its result has been handed back
            time.sleep(0.01)
        finished(0)  # the old policy's frame's audit: neither counted nor shown
        assert watch.audit.audited == done + 1 and watch.agreements["a"] == []
        assert len(watch.monitors["a"]._tiers) == 0 and len(watch.monitors["a"]._audits) == 0
        assert watch.frame("a", features, 1, rgb, box, watch.routing_generation)[0]
        finished(1)  # the new policy's own audits are
        assert watch.agreements["a"] == [1.0] and list(watch.monitors["a"]._audits) == [1.0]
    finally:
        release.set()
        watch.close()


def test_what_the_monitor_cannot_use_is_refused_by_name():
    """Features read before `Routed.complete` (image statistics all zero) drove a stream to a false DRIFT; NaN
    statistics dropped out of the score; confirm 0 turned DRIFT on the first frame above 1; a camera the watch was
    not given killed the audit worker for every camera."""
    reference = _reference(thresholds={"feature_psi": 1.0, "mix_tvd": 1.0, "agreement_drop": 1.0})
    monitor = DriftMonitor(reference)
    with pytest.raises(ValueError, match=r"image statistics are all zero: call `Routed.complete\(rgb\)` first"):
        monitor.update(np.zeros(1028), 0)
    nan = _counted(np.zeros(1028))
    nan[7] = np.nan
    with pytest.raises(ValueError, match="with 1 non-finite values"):
        monitor.update(nan, 0)
    with pytest.raises(ValueError, match=r"features of shape \(1027,\)"):
        monitor.update(np.ones(1027), 0)
    assert monitor.frames == 0  # none of them entered the window
    for confirm in (0, -5, 1.5, True):
        with pytest.raises(ConfigError, match="drift confirm"):
            DriftMonitor(reference, confirm=confirm)
    for release in (1.5, 0.0):
        with pytest.raises(ConfigError, match=rf"drift release {release} must lie in \(0, 1\]"):
            DriftMonitor(reference, release=release)
    assert DriftMonitor(reference, confirm=np.int64(3)).confirm == 3  # a numpy count is a count
    with DriftWatch(["cam0"], reference, lambda rgb: None) as watch:
        with pytest.raises(KeyError, match=r"camera 'cam1' is not one of this DriftWatch's cameras \['cam0'\]"):
            watch.frame("cam1", _counted(np.zeros(1028)), 0, np.zeros((4, 4, 3), np.uint8), None)
    assert not watch.audit._thread.is_alive()


def test_a_score_of_exactly_one_is_not_above_the_threshold():
    monitor = DriftMonitor(_reference(), confirm=1)
    assert monitor.advance(1.0)[0] == OK


def test_the_veil_is_one_sided_darker_is_not_haze():
    from adaptive_perception.drift import window_statistics
    reference = _reference(veil_mean=0.3, veil_std=0.05)
    values = window_statistics(reference, None, None, None, veils=np.full(10, 0.2), psi=0.0)
    assert values["veil"] == pytest.approx(-2.0)  # (0.2 - 0.3) / 0.05: darker is not haze
