// Full ros2msg definitions (dependencies appended as rosbag2 writes them), so generic tools
// decode SlimSplit recordings. Generated from Tests/interop/msg_definitions.py (the texts the
// Python interop fixtures use); keep the two identical.

enum MessageDefinitions {
    static let pointCloud2 = """
        std_msgs/Header header
        uint32 height
        uint32 width
        PointField[] fields
        bool is_bigendian
        uint32 point_step
        uint32 row_step
        uint8[] data
        bool is_dense

        ================================================================================
        MSG: sensor_msgs/PointField
        uint8 INT8 = 1
        uint8 UINT8 = 2
        uint8 INT16 = 3
        uint8 UINT16 = 4
        uint8 INT32 = 5
        uint8 UINT32 = 6
        uint8 FLOAT32 = 7
        uint8 FLOAT64 = 8
        string name
        uint32 offset
        uint8 datatype
        uint32 count

        ================================================================================
        MSG: std_msgs/Header
        builtin_interfaces/Time stamp
        string frame_id

        ================================================================================
        MSG: builtin_interfaces/Time
        int32 sec
        uint32 nanosec

        """
    static let poseStamped = """
        std_msgs/Header header
        Pose pose

        ================================================================================
        MSG: geometry_msgs/Pose
        Point position
        Quaternion orientation

        ================================================================================
        MSG: geometry_msgs/Point
        float64 x
        float64 y
        float64 z

        ================================================================================
        MSG: geometry_msgs/Quaternion
        float64 x 0
        float64 y 0
        float64 z 0
        float64 w 1

        ================================================================================
        MSG: std_msgs/Header
        builtin_interfaces/Time stamp
        string frame_id

        ================================================================================
        MSG: builtin_interfaces/Time
        int32 sec
        uint32 nanosec

        """
    static let detection3DArray = """
        std_msgs/Header header
        Detection3D[] detections

        ================================================================================
        MSG: std_msgs/Header
        builtin_interfaces/Time stamp
        string frame_id

        ================================================================================
        MSG: builtin_interfaces/Time
        int32 sec
        uint32 nanosec

        ================================================================================
        MSG: vision_msgs/Detection3D
        std_msgs/Header header
        ObjectHypothesisWithPose[] results
        BoundingBox3D bbox
        string id

        ================================================================================
        MSG: vision_msgs/BoundingBox3D
        geometry_msgs/Pose center
        geometry_msgs/Vector3 size

        ================================================================================
        MSG: geometry_msgs/Pose
        Point position
        Quaternion orientation

        ================================================================================
        MSG: geometry_msgs/Point
        float64 x
        float64 y
        float64 z

        ================================================================================
        MSG: geometry_msgs/Quaternion
        float64 x 0
        float64 y 0
        float64 z 0
        float64 w 1

        ================================================================================
        MSG: geometry_msgs/Vector3
        float64 x
        float64 y
        float64 z

        ================================================================================
        MSG: vision_msgs/ObjectHypothesisWithPose
        ObjectHypothesis hypothesis
        geometry_msgs/PoseWithCovariance pose

        ================================================================================
        MSG: geometry_msgs/PoseWithCovariance
        Pose pose
        float64[36] covariance

        ================================================================================
        MSG: vision_msgs/ObjectHypothesis
        string class_id
        float64 score

        """
}
