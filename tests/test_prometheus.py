"""The shipped alert rules under promtool, and a real Prometheus server scraping the node while a bag replays.

Prometheus and promtool come from Debian's `prometheus` package, which `make setup` installs."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from adaptive_perception.bag import write_image_bag
from adaptive_perception.ros.replay import ReplayMode, replay_bag
from conftest import unused_port
from rosgraph import Graph, wait_until

RULES = Path(__file__).resolve().parents[1] / "config" / "prometheus"
FRAMES = 20


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make setup` installs Debian's prometheus package (needs root and apt)"
    return path


def test_the_alert_rules_load_and_pass_their_unit_tests():
    check = subprocess.run([_tool("promtool"), "check", "rules", str(RULES / "alerts.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 7 rules found" in check.stdout, check.stdout + check.stderr
    # alerts_test.yml: each alert fires on the series it exists for, with hand-computed annotations
    # (p95 97.5 ms from one histogram bucket, 66.67 % dropped, 21 tier failures), and stays quiet otherwise
    unit = subprocess.run([_tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=RULES,
                          capture_output=True, text=True)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def _query(port: int, expr: str) -> dict[tuple, float]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in body["data"]["result"]}


def test_a_real_prometheus_scrapes_what_the_node_processed_from_a_replayed_bag(context, tier_models, tmp_path):
    metrics_port, prometheus_port = unused_port(), unused_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "alerts.yml")],
        "scrape_configs": [{"job_name": "adaptive_perception",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]}))
    rng = np.random.default_rng(5)
    write_image_bag(tmp_path / "bag", [(10**9 + i * 33_333_333, rng.integers(0, 256, (120, 160, 3), np.uint8))
                                       for i in range(FRAMES)], "/cam/image_raw", "cam")
    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "random",
                            "policy": "", "routing.random_seed": 3, "providers": ["CPUExecutionProvider"],
                            "warmup_runs": 0, "metrics.port": metrics_port})
    log = open(tmp_path / "prometheus.log", "w")
    server = subprocess.Popen([_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        assert graph.transition("configure") and graph.transition("activate")
        report = replay_bag(graph.driver, tmp_path / "bag", ReplayMode.LOCKSTEP, remap={"/cam/image_raw": "image"})
        assert report.frames_published == report.outputs_received == FRAMES
        # lock-step replay waits for each frame's detections; its RoutingDecision follows them
        assert wait_until(lambda: len(graph.routing) == FRAMES, 5)
        routed = {t: sum(d.tier_name == t for d in graph.routing) for t in ("nano", "small", "large")}
        assert sorted(routed.values())[-1] < FRAMES  # the seeded random mode used more than one tier

        expected = {(("camera", "/image"), ("tier", t)): float(n) for t, n in routed.items()}
        by_tier = 'sum by (camera, tier) (adaptive_perception_frames_processed_total{job="adaptive_perception"})'
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _query(prometheus_port, by_tier) == expected:
                    break
            except OSError:  # the server is still starting
                pass
            time.sleep(0.5)
        assert _query(prometheus_port, by_tier) == expected, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert _query(prometheus_port, 'sum(adaptive_perception_frames_received_total)') == {(): FRAMES}
        assert _query(prometheus_port, 'sum(adaptive_perception_node_seconds_count)') == {(): FRAMES}
        assert _query(prometheus_port, f'sum(up{{instance="127.0.0.1:{metrics_port}"}})') == {(): 1.0}
        rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/api/v1/rules", timeout=5).read())
        assert len(rules["data"]["groups"][0]["rules"]) == 7  # the shipped alert rules load in the real server
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
        graph.close()
