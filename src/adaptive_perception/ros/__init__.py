"""ROS 2 adapters: the lifecycle node, message conversion, bag replay and recording."""

from adaptive_perception.bag import DEBUG_IMAGE_TOPICS  # noqa: F401  (the node publishes them; the recorder keeps one)

MARKER_TOPIC = "detections_marker"  # the boxes as a visualization_msgs/ImageMarker, beside `detections`
