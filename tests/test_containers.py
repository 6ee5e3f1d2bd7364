"""What can be checked of the containers without a Docker engine: hadolint, the paths the Dockerfiles copy,
the compose file against the compose spec, its Prometheus config under promtool, the healthcheck against a
real node's metrics, and package.xml's dependencies against what the code imports."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from compose_spec import PyCompose

from adaptive_perception.cli import main
from conftest import unused_port
from rosgraph import Graph, image_msg, wait_until

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.x86_cuda", ROOT / "docker" / "Dockerfile.jetson"]


def test_hadolint_passes_on_both_dockerfiles():
    hadolint = Path(sys.executable).parent / "hadolint"
    run = subprocess.run([str(hadolint), *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_are_multi_stage_non_root_and_copy_only_what_exists(dockerfile):
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.M)
    assert stages == ["build", "runtime"]
    runtime = text.split(" AS runtime", 1)[1]
    assert re.search(r"^USER 1000$", runtime, re.M) and "HEALTHCHECK" in runtime and "adaptive_perception.cli health" in runtime
    copies = re.findall(r"^COPY (?!--from)(.+)$", text, re.M)
    assert copies
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for line in copies:
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert source not in ignored, f"{dockerfile.name} copies {source}, which .dockerignore leaves out"
    assert "COPY --from=build /ws/install /ws/install" in text
    assert "training/checkpoints" in ignored and ".venv" in ignored and "build" in ignored


def test_the_ros_archive_key_is_trusted_only_when_it_is_that_key_alone(tmp_path):
    """The x86 image trusted whatever the key download returned. Its check, run here as the Dockerfile writes it,
    on real GnuPG keys: the right key passes; another key, or the right one with another beside it, fails the build."""
    text = DOCKERFILES[0].read_text()
    check = re.search(r"&& \{ (test .+) \\\n\s+(\|\| \{ echo .+; exit 1; \}); \} \\\n", text)
    assert check, "the key check is gone from Dockerfile.x86_cuda"
    expected = re.search(r"^ARG ROS_KEY_FINGERPRINT=([0-9A-F]{40})$", text, re.M).group(1)
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)

    def gpg(*args: str) -> str:
        return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase",
                               "", *args], check=True, capture_output=True, text=True).stdout

    fingerprints = []
    for name in ("ros", "intruder"):
        gpg("--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", "sign", "never")
        listing = gpg("--with-colons", "--fingerprint", f"{name}@example.org")
        fingerprints.append(re.search(r"^fpr:+([0-9A-F]{40}):", listing, re.M).group(1))
    (tmp_path / "one.key").write_text(gpg("--armor", "--export", "ros@example.org"))
    (tmp_path / "two.key").write_text(gpg("--armor", "--export", "ros@example.org", "intruder@example.org"))

    def build_step(key: str, fingerprint: str) -> subprocess.CompletedProcess:
        command = f"{check.group(1)} {check.group(2)}".replace("/tmp/ros.key", str(tmp_path / key))
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "GNUPGHOME": str(home), "ROS_KEY_FINGERPRINT": fingerprint})

    assert build_step("one.key", fingerprints[0]).returncode == 0
    refused = build_step("one.key", expected)  # a key that is not ROS's
    assert refused.returncode == 1 and f"not ROS's archive key {expected} alone" in refused.stderr
    assert build_step("two.key", fingerprints[0]).returncode == 1  # ROS's key with another beside it
    assert build_step("one.key", fingerprints[1]).returncode == 1


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_healthcheck_exits_only_0_or_1(dockerfile):
    """Docker reserves a healthcheck's exit 2, which `health` gives for a malformed URL: the HEALTHCHECK maps every
    failure to 1. Its own shell line runs here with the workspace's setup and `health` stood in by exits."""
    line = re.search(r'^\s+CMD \["/bin/bash", "-c", "(.+)"\]$', dockerfile.read_text(), re.M).group(1)
    assert "source /ws/install/setup.bash && python3 -m adaptive_perception.cli health" in line
    for health_exit, expected in ((0, 0), (1, 1), (2, 1), (3, 1)):
        script = line.replace("source /ws/install/setup.bash", "true") \
            .replace("python3 -m adaptive_perception.cli health", f"(exit {health_exit})")
        assert subprocess.run(["bash", "-c", script]).returncode == expected, (health_exit, script)
    broken_setup = line.replace("source /ws/install/setup.bash", "(exit 2)")
    assert subprocess.run(["bash", "-c", broken_setup]).returncode == 1


def test_compose_validates_and_points_at_files_that_exist():
    compose_file = ROOT / "docker" / "compose.yaml"
    text = compose_file.read_text()
    assert PyCompose.from_yaml(text).service_names() == ["perception", "prometheus", "foxglove"]
    with pytest.raises(Exception, match="network_mod"):
        PyCompose.from_yaml(text.replace("network_mode: host", "network_mod: host", 1))  # the validator bites
    spec = yaml.safe_load(text)
    build = spec["services"]["perception"]["build"]
    assert (compose_file.parent / build["context"] / build["dockerfile"]).is_file()
    for volume in spec["services"]["prometheus"]["volumes"]:
        assert (compose_file.parent / volume.split(":")[0]).is_file(), volume
    assert spec["services"]["foxglove"]["profiles"] == ["foxglove"]


def test_the_foxglove_services_camera_topic_is_passed_as_a_value_never_run_as_shell(tmp_path):
    """`bash -c "... --camera ${CAMERA_TOPIC}"` pasted the setting into the shell command: a topic with `;` ran."""
    spec = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["foxglove"]
    script = spec["entrypoint"][2].replace("$$", "$")  # compose's escape, as the container's bash gets it
    assert "${CAMERA_TOPIC" not in spec["entrypoint"][2]  # nothing compose pastes in
    script = script.replace("source /ws/install/setup.bash", "true").replace(
        "exec python3 -m adaptive_perception.cli record --live --camera", "printf '%s\\n'")
    hostile = f"/cam; touch {tmp_path / 'ran'}"
    out = subprocess.run(["bash", "-c", script], env={"CAMERA_TOPIC": hostile, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert out.stdout == hostile + "\n" and not (tmp_path / "ran").exists()
    assert spec["environment"]["CAMERA_TOPIC"] == "${CAMERA_TOPIC:-/camera/image_raw}"


def test_the_compose_prometheus_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make setup` installs Debian's prometheus package"
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]  # where compose mounts the shipped rules
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]  # the node's default
    config["rule_files"] = [str(ROOT / "config" / "prometheus" / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert run.returncode == 0 and "SUCCESS: 7 rules found" in run.stdout, run.stdout + run.stderr


def test_the_healthcheck_reads_a_real_node(context, tier_models, capsys):
    """Health is the node's state now, not totals since configure: a tier failure turned it unhealthy for good, and
    a deactivated node (or one whose camera broke after a good frame) stayed healthy."""
    from adaptive_perception.metrics import check_health
    from adaptive_perception.telemetry import TIER_FAILURE

    port = unused_port()
    url = f"http://127.0.0.1:{port}/metrics"
    assert main(["health", "--url", url]) == 1
    assert "does not answer" in capsys.readouterr().out

    def health() -> str:
        assert main(["health", "--url", url]) in (0, 1)
        out = capsys.readouterr().out.strip()
        assert out.split(": ")[1] == f"node {graph.fqn}", out  # which node answers
        return out.replace(f": node {graph.fqn}", "")
    graph = Graph(context, {**{f"models.{t}": str(p) for t, p in tier_models.items()}, "routing_mode": "fixed:nano",
                            "policy": "", "providers": ["CPUExecutionProvider"], "warmup_runs": 0, "metrics.port": port,
                            "diagnostics.stall_s": 30.0})
    try:
        assert graph.transition("configure")
        assert health().startswith("unhealthy: the node is not active")
        assert graph.transition("activate")
        graph.wait_for_image_subscriber()
        assert wait_until(lambda: health() == "healthy: 0 of 0 frames processed", 5)
        for sec in (1, 2):
            assert graph.send_lockstep(image_msg(np.zeros((64, 64, 3), np.uint8), sec=sec))
        assert wait_until(lambda: graph.node.totals().processed == 2, 5)
        assert health() == "healthy: 2 of 2 frames processed"
        graph.node.telemetry.failed("image", TIER_FAILURE, "nano")  # what a failing tier records
        assert wait_until(lambda: health().startswith("unhealthy: camera /image at ERROR"), 5)  # within a status tick
        graph.node._diag_timer.cancel()  # a stuck executor publishes no status
        time.sleep(2.5)
        healthy, why = check_health(url, stale_s=2.0)
        assert not healthy and why.startswith(f"node {graph.fqn}: the node's status is") and why.endswith("old (updated every second): is it stuck?")
        graph.node._diag_timer.reset()
        assert graph.transition("deactivate")
        assert health().startswith("unhealthy: the node is not active")
    finally:
        graph.close()


def test_the_healthcheck_is_not_fooled_by_another_exporter_or_a_bad_url(capsys):
    """Another program's metrics (here a real prometheus_client server with a counter of its own) read as '0 of 0
    frames processed' and passed; a URL that is not http(s) ended in a traceback."""
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry, port = CollectorRegistry(), unused_port()
    Counter("other_app_requests", "someone else's counter", registry=registry).inc()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        assert main(["health", "--url", f"http://127.0.0.1:{port}/metrics"]) == 1
        assert "serves no adaptive_perception metrics" in capsys.readouterr().out
    finally:
        server.shutdown()
        thread.join(5)
    assert main(["health", "--url", "notaurl"]) == 2  # a usage error, not an unhealthy node (1)
    assert "'notaurl' is not an http(s) URL" in capsys.readouterr().err


# ROS packages the runtime imports -> their package.xml keys; Python modules -> rosdep keys
PYTHON_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml"}
PIP_ONLY = {"onnxruntime", "onnx", "rosbags", "tqdm", "prometheus_client", "mlflow", "foxglove", "matplotlib",
            "PIL"}  # PIL: the scene generator's (the scenes extra), never the node's


def test_package_xml_declares_exactly_the_ros_packages_the_runtime_imports():
    declared = {e.text for e in ET.parse(ROOT / "package.xml").getroot().iter("exec_depend")}
    imported = set()
    for path in [*(ROOT / "src" / "adaptive_perception").rglob("*.py"), *(ROOT / "launch").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"adaptive_perception"}
    third_party = imported - stdlib - PIP_ONLY
    needed = {PYTHON_KEYS.get(name, name) for name in third_party}
    missing = needed - declared
    assert not missing, f"imported but not in package.xml: {sorted(missing)}"
    unused = declared - needed
    assert not unused, f"in package.xml but never imported: {sorted(unused)}"
