# Two commands on a fresh machine:  make demo   |   make test
# Each bootstraps what it needs (idempotent; a second run with nothing changed takes seconds).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
STAMPS := build/stamps
ENV := source ros2_ws/env.sh
# Private DDS domain per test run so parallel runs on one machine never see each other.
TEST_DOMAIN ?= $(shell echo $$(( $$$$ % 90 + 10 )))
# Root's two steps (the include links below, Debian's prometheus) go through sudo for any other user.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup train-deps msgs test-msgs demo test clean

setup: $(STAMPS)/venv $(STAMPS)/msgs $(STAMPS)/test-msgs

$(STAMPS)/venv: ros2_ws/requirements-ros.txt setup.py
	@mkdir -p $(STAMPS)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (the ROS 2 Jazzy wheels are built for CPython 3.11)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 $(VENV)/bin/pip install -q -r ros2_ws/requirements-ros.txt -e '.[test,scenes,demo,foxglove]'
	@touch $@

# The ROS wheels' CMake files name two include paths under /opt/python/cp311-cp311; each build
# points them at this venv's Python and numpy headers first (as root, or through sudo).
INCLUDE_LINKS = pyinc=$$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') && \
	npinc=$$(python -c 'import numpy; print(numpy.get_include())') && \
	$(SUDO) mkdir -p /opt/python/cp311-cp311/include /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core && \
	$(SUDO) ln -sfn $$pyinc /opt/python/cp311-cp311/include/python3.11 && \
	$(SUDO) ln -sfn $$npinc /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include

COLCON = colcon --log-base build/colcon/log build --event-handlers console_direct-
CMAKE_ARGS = --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE=$(CURDIR)/$(VENV)/bin/python

# ros2_ws: this project's interfaces and (through the link ros2_ws/src/adaptive_perception) this package,
# as on a robot. The venv itself uses the editable install of the package and the interfaces' prefix.
$(STAMPS)/msgs: $(STAMPS)/venv $(shell find ros2_ws/src/adaptive_perception_msgs -type f) package.xml setup.py
	$(ENV) && $(INCLUDE_LINKS) && $(COLCON) --base-paths ros2_ws/src \
		--build-base build/colcon/build --install-base build/colcon/install $(CMAKE_ARGS)
	@touch $@

# The venv's stand-in for vision_msgs (no wheel exists; a robot's ROS install has the real package), in its own
# prefix (never installed, never in ros2_ws/src): the node, replay, the demo and the tests need it.
$(STAMPS)/test-msgs: $(STAMPS)/venv $(shell find tests/ros_interfaces -type f)
	$(ENV) && $(INCLUDE_LINKS) && $(COLCON) --merge-install --base-paths tests/ros_interfaces \
		--build-base build/test_interfaces/build --install-base build/test_interfaces/install $(CMAKE_ARGS)
	@touch $@

# Offline training/export side: torch, torchvision, ultralytics (about 6 GB, about 2 minutes here).
$(STAMPS)/train: $(STAMPS)/venv
	_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 $(VENV)/bin/pip install -q -e '.[train,test,scenes,demo,foxglove]'
	@mkdir -p build/yolo_config
	@touch $@

# Prometheus server and promtool for the metrics tests: Debian's package (apt, as root or through sudo).
$(STAMPS)/prometheus:
	@mkdir -p $(STAMPS)
	command -v prometheus >/dev/null && command -v promtool >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@touch $@

msgs: $(STAMPS)/msgs
test-msgs: $(STAMPS)/test-msgs
train-deps: setup $(STAMPS)/train

demo: setup
	$(ENV) && adaptive-perception demo

test: setup $(STAMPS)/train $(STAMPS)/prometheus
	$(ENV) && ROS_DOMAIN_ID=$(TEST_DOMAIN) python -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

clean:
	rm -rf build $(VENV)
