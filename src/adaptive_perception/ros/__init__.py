"""ROS 2 adapters: the lifecycle node, message conversion, bag replay and recording."""

# The node's debug image topics, under its private namespace (raw, compressed): replay skips them and the recorder
# keeps the compressed one
DEBUG_IMAGE_TOPICS = ("debug_image", "debug_image/compressed")
