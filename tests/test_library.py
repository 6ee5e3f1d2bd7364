"""The README's Python recipe (the core without ROS), run as written in a process with no ROS environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
readme = open(sys.argv[1]).read()
block = readme.split("### The core in Python, without ROS")[1].split("```python\n")[1].split("```")[0]
scope = {}
exec(compile(block, "README.md", "exec"), scope)
tiers, frames, drift = scope["tiers"], scope["frames"], scope["drift"]
# the object counts of the first frames as each tier finds them on its own
direct = [{name: len(tier.detect(rgb)) for name, tier in tiers.items()} for rgb in frames[:12]]
ros = sorted(name for name in sys.modules if name.split(".")[0] in ("rclpy", "rosidl_runtime_py", "rcl_interfaces"))
print(json.dumps({"direct": direct, "audited": drift.audit.audited, "ros": ros,
                  "alive": drift.audit._thread.is_alive()}))
"""


def test_the_readmes_python_recipe_runs_without_ros_and_routes_through_each_chosen_tier():
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AMENT", "ROS_", "RMW_", "COLCON", "CMAKE_PREFIX")) and key != "LD_LIBRARY_PATH"}
    run = subprocess.run([sys.executable, "-c", CHECK, str(ROOT / "README.md")], capture_output=True, text=True,
                         env=env, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    *lines, last = run.stdout.strip().splitlines()
    result = json.loads(last)
    assert len(lines) == 160 and result["ros"] == [] and not result["alive"]  # closed by its `with`
    rows = [line.split() for line in lines]
    tiers = [row[0] for row in rows]
    assert {"nano", "small"} <= set(tiers), tiers  # a sequence of sparse and moderate scenes: both cheap tiers ran
    # each printed count is what the chosen tier finds on that frame (the three tiers' counts differ on some of them)
    assert any(len(set(counts.values())) > 1 for counts in result["direct"])
    assert [int(row[1]) for row in rows[:12]] == [counts[tier] for counts, tier in zip(result["direct"], tiers)]
    # the monitor's window (150 frames) fills: unknown before, in-distribution frames read ok after
    assert [row[4] for row in rows[:149]] == ["unknown"] * 149 and rows[-1][4] == "ok", rows[145:]
    assert 0 < float(rows[-1][5]) < 1 and result["audited"] >= 4  # 1 frame in 30 through the large tier
