# Two commands on a fresh machine:  make demo   |   make test
# Each bootstraps what it needs (idempotent; a second run with nothing changed takes seconds).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
STAMPS := build/stamps
ENV := source ros2_ws/env.sh
# Private DDS domain per test run so parallel runs on one machine never see each other.
TEST_DOMAIN ?= $(shell echo $$(( $$$$ % 90 + 10 )))

.PHONY: setup train-deps msgs test-msgs demo test clean

setup: $(STAMPS)/venv $(STAMPS)/msgs

$(STAMPS)/venv: ros2_ws/requirements-ros.txt setup.py
	@mkdir -p $(STAMPS)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (the ROS 2 Jazzy wheels are built for CPython 3.11)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 $(VENV)/bin/pip install -q -r ros2_ws/requirements-ros.txt -e '.[test]'
	@touch $@

# The ROS wheels' CMake files name these two include paths; point them at this venv's Python and numpy.
$(STAMPS)/include-links: $(STAMPS)/venv
	@pyinc=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	npinc=$$(_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 $(VENV)/bin/python -c 'import numpy; print(numpy.get_include())'); \
	mkdir -p /opt/python/cp311-cp311/include /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core && \
	ln -sfn $$pyinc /opt/python/cp311-cp311/include/python3.11 && \
	ln -sfn $$npinc /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include || \
	{ echo "cannot create /opt/python/cp311-cp311 include links (needs root once)"; exit 1; }
	@touch $@

COLCON = colcon --log-base build/colcon/log build --merge-install --event-handlers console_direct- \
	--cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE=$(CURDIR)/$(VENV)/bin/python --

# Interfaces of this project (ros2_ws/src), built by colcon.
$(STAMPS)/msgs: $(STAMPS)/include-links $(shell find ros2_ws/src -type f)
	$(ENV) && $(COLCON) --base-paths ros2_ws/src --build-base build/colcon/build --install-base build/colcon/install
	@touch $@

# Test-only stand-in for vision_msgs, in its own prefix (never installed, never in ros2_ws/src).
$(STAMPS)/test-msgs: $(STAMPS)/include-links $(shell find tests/ros_interfaces -type f)
	$(ENV) && $(COLCON) --base-paths tests/ros_interfaces --build-base build/test_interfaces/build \
		--install-base build/test_interfaces/install
	@touch $@

# Offline training/export side: torch, torchvision, ultralytics (about 6 GB, about 2 minutes here).
$(STAMPS)/train: $(STAMPS)/venv
	_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 $(VENV)/bin/pip install -q -e '.[train,test]'
	@mkdir -p build/yolo_config
	@touch $@

msgs: $(STAMPS)/msgs
test-msgs: $(STAMPS)/test-msgs
train-deps: $(STAMPS)/train

demo: setup $(STAMPS)/test-msgs $(STAMPS)/train
	$(ENV) && adaptive-perception demo

test: setup $(STAMPS)/test-msgs $(STAMPS)/train
	$(ENV) && ROS_DOMAIN_ID=$(TEST_DOMAIN) python -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

clean:
	rm -rf build $(VENV)
