"""`adaptive-perception bench heldout`: the embedded policy against the heuristic on newly seeded scenes and a drift
preset, through the real tiers, the profile stage and pycocotools."""
from __future__ import annotations

import json
import subprocess

import pytest

from adaptive_perception.scenes.sequence import Drift
from adaptive_perception.training.heldout import SEED, intervals_if_enough, markdown, set_specs


def test_each_set_is_new_scenes_of_its_own_kind():
    clean, fog = set_specs("in_distribution", 3, 20, "2.0.0"), set_specs("fog", 3, 20, "2.0.0")
    assert [s.drift for s in clean] == [Drift.NONE] * 3 and [s.drift for s in fog] == [Drift.FOG] * 3
    assert {s.seed for s in clean} == {SEED} and {s.seed for s in fog} == {SEED + 1 + list(Drift).index(Drift.FOG)}
    assert [s.index for s in fog] == [0, 1, 2] and all(s.frames == 20 and s.version == "2.0.0" for s in clean + fog)


def test_heldout_report_compares_the_policy_with_the_heuristic_at_its_cost(tmp_path):
    report = tmp_path / "heldout.json"
    run = subprocess.run(["adaptive-perception", "bench", "heldout", "--set", "in_distribution", "--set", "night",
                          "--sequences", "4", "--frames", "8", "--resamples", "20", "--report", str(report)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(report.read_text())
    assert list(result["sets"]) == ["in_distribution", "night"]
    for name, s in result["sets"].items():
        assert s["frames"] == 32 and s["sequences"] == 4, name
        rows = s["rows"]
        learned, heuristic = rows["learned"], rows["heuristic at the learned cost"]
        if "interpolation" in heuristic:  # two rules time-shared to exactly the learned cost
            assert heuristic["mean_cost_ms"] == pytest.approx(learned["mean_cost_ms"]), name
        else:  # the learned policy spends less than any rule (the heuristic's first frame goes to large)
            assert learned["mean_cost_ms"] < heuristic["mean_cost_ms"] and len(heuristic["thresholds"]) == 2
        assert s["learned_minus_heuristic"]["difference"] == pytest.approx(learned["map50_95"] - heuristic["map50_95"])
        low, high = s["learned_minus_heuristic"]["difference_ci"]
        assert low <= high
        assert rows["always-nano"]["mix"]["nano"] == 1.0 and rows["always-large"]["mix"]["large"] == 1.0
        # the tiers' costs from the latency file: always-large costs large's 79.053 ms per frame
        assert rows["always-large"]["mean_cost_ms"] == pytest.approx(79.053)
    assert result["sets"]["night"]["rows"]["always-large"]["map50_95"] != \
        result["sets"]["in_distribution"]["rows"]["always-large"]["map50_95"]
    markdown = report.with_suffix(".md").read_text()
    assert "| in_distribution | 32 |" in markdown and "| night | 32 |" in markdown
    # the command that ran, options and all (it named the plain command whatever ran)
    assert (f"Command: `adaptive-perception bench heldout --set in_distribution --set night --sequences 4 --frames 8 "
            f"--resamples 20 --report {report}`.") in markdown


def test_too_few_sequences_give_no_intervals_and_say_why():
    row = {"map50_95": 30.0, "map50_95_ci": [30.0, 30.0], "map50_ci": [40.0, 40.0], "mean_cost_ms": 20.0,
           "mix": {"nano": 0.5, "small": 0.25, "large": 0.25}}
    rows = {name: dict(row) for name in ("learned", "heuristic at the learned cost", "always-nano", "always-large")}
    paired = {"difference": 1.5, "difference_ci": [1.5, 1.5], "beats": True}  # what 1 sequence resamples into
    enough = {"frames": 80, "sequences": 4, "rows": rows, "learned_minus_heuristic": paired}
    assert intervals_if_enough(enough) == enough
    for sequences in (1, 3):
        kept = intervals_if_enough({**enough, "sequences": sequences})
        assert kept["learned_minus_heuristic"]["difference"] == 1.5
        assert set(kept["learned_minus_heuristic"]) == {"difference", "no_interval"}
        assert kept["learned_minus_heuristic"]["no_interval"].startswith(f"{sequences} sequence")
        assert kept["learned_minus_heuristic"]["no_interval"].endswith("needs at least 4 (--sequences)")
        assert all("map50_95_ci" not in r and "map50_ci" not in r and r["map50_95"] == 30.0
                   for r in kept["rows"].values())
    result = {"policy_id": "p", "generator_version": "2.0.0", "seed": SEED, "costs": "c",
              "sets": {"fog": intervals_if_enough({**enough, "frames": 20, "sequences": 1})}}
    assert "| fog | 20 | 30.0 | 20.0 | 50 / 25 / 25 | 30.0 | +1.5 (no interval: too few sequences) |" in markdown(result)
