# Environment for the project's venv, ROS 2 Jazzy wheels and colcon prefixes.
# Source it from the repository root's Makefile or a shell:  . ros2_ws/env.sh
# On a robot with a distribution install of ROS 2, source /opt/ros/jazzy/setup.bash instead.
_ap_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export AP_ROOT="$_ap_root"
export AP_VENV="$_ap_root/.venv"
_ap_site="$AP_VENV/lib/python3.11/site-packages"
_ap_msgs="$_ap_root/build/colcon/install/adaptive_perception_msgs"
_ap_test="$_ap_root/build/test_interfaces/install"

# The ROS wheels re-execute Python once to set LD_LIBRARY_PATH; set it here so they need not.
_ap_ld="$AP_VENV/lib:$_ap_msgs/lib:$_ap_test/lib"
for _d in "$_ap_site"/ros_*.libs; do [ -d "$_d" ] && _ap_ld="$_ap_ld:$_d"; done
export LD_LIBRARY_PATH="$_ap_ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
# only the prefixes already built: colcon warns about every one on the path that does not exist yet (fresh clone)
_ap_prefix="$AP_VENV"
[ -d "$_ap_msgs" ] && _ap_prefix="$_ap_msgs:$_ap_prefix"
[ -d "$_ap_test" ] && _ap_prefix="$_ap_test:$_ap_prefix"
export AMENT_PREFIX_PATH="$_ap_prefix"
export CMAKE_PREFIX_PATH="$AP_VENV"
export PYTHONPATH="$_ap_test/lib/python3.11/site-packages:$_ap_msgs/lib/python3.11/site-packages${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$AP_VENV/bin:$PATH"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
# Camera frames travel through a shared-memory segment that holds them (config/fastdds.xml; README, Transport).
if [ -z "${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ] && [ "$RMW_IMPLEMENTATION" = rmw_fastrtps_cpp ]; then
  export FASTRTPS_DEFAULT_PROFILES_FILE="$_ap_root/config/fastdds.xml"
fi
# Discovery stays on this machine unless the caller chose otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Ultralytics (train extra only): never download or pip-install anything at run time.
export YOLO_OFFLINE=true YOLO_AUTOINSTALL=false YOLO_CONFIG_DIR="$_ap_root/build/yolo_config"
unset _ap_root _ap_site _ap_msgs _ap_test _ap_ld _ap_prefix _d
