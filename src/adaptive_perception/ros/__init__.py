"""ROS 2 adapters: the lifecycle node, message conversion, bag replay and recording."""
