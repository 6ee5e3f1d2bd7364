"""The project's DDS transport defaults: camera frames through a shared-memory segment large enough to hold them."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import MutableMapping

PROFILE_NAME = "fastdds.xml"
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
FASTDDS_RMWS = ("", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")  # "" = the ROS 2 default (Fast DDS)


def shipped_profile() -> Path | None:
    """The Fast DDS profile shipped in config/: in a source checkout, or installed under share/adaptive_perception."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME,
                  Path(sys.prefix) / "share" / "adaptive_perception" / "config" / PROFILE_NAME]
    candidates += [Path(prefix) / "share" / "adaptive_perception" / "config" / PROFILE_NAME
                   for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if prefix]
    return next((path for path in candidates if path.is_file()), None)


def apply_defaults(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Point Fast DDS at the shipped profile unless the user chose a profile or another RMW; returns the path set.

    Must run before the process creates its first ROS context (Fast DDS reads the variable once)."""
    if env.get("RMW_IMPLEMENTATION", "") not in FASTDDS_RMWS:
        return None
    if any(env.get(name) for name in PROFILE_VARIABLES):
        return None
    profile = shipped_profile()
    if profile is None:
        return None
    env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
    return str(profile)
