"""Launch perception_node as a managed lifecycle node and bring it to active (after every configure: a later
cleanup and configure, to apply parameters, brings it back to active too; a deactivate is left as it is).

    ros2 launch adaptive_perception perception.launch.py image:=/camera/image_raw \
        params_file:=/path/to/perception.yaml

Needs launch and launch_ros from a ROS 2 distribution (not available as wheels on the development
machine, where `adaptive-perception node --autostart` does the same job).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, SetEnvironmentVariable
from launch.events import matches_action
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("adaptive_perception"), "config", "perception.yaml"])
    # camera frames through shared memory; an already exported FASTRTPS_DEFAULT_PROFILES_FILE wins
    default_profile = EnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", default_value=PathJoinSubstitution(
        [FindPackageShare("adaptive_perception"), "config", "fastdds.xml"]))
    node = LifecycleNode(
        package="adaptive_perception",
        executable="perception_node",
        name="perception_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file")],
        remappings=[("image", LaunchConfiguration("image"))],
        output="screen",
    )
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE))
    # only the end of a configure: a deactivate also ends in inactive, and must stay there (an operator's
    # deactivate, or the deactivate before a cleanup and configure that applies new parameters)
    activate_when_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]))
    return LaunchDescription([
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera topic to route"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameter YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("dds_profile", default_value=default_profile,
                              description="Fast DDS XML profile (the camera driver needs the same one: README, Transport)"),
        SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", LaunchConfiguration("dds_profile")),
        node,
        activate_when_configured,
        configure,
    ])
