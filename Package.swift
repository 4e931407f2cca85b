// swift-tools-version: 6.0
import PackageDescription

// Dependencies, each for one reason (CI builds them from scratch on 2 cores):
// - swift-argument-parser: the `slimsplit` command line and its --help.
// - swift-log: structured logging, the API every Swift server library logs through.
// - Yams: YAML configs (the format of Configs/); libyaml-based, builds in seconds.
// - swift-nio (NIOHTTP1, NIOWebSocket): the one HTTP stack, serving metrics, the live dashboard
//   and, as a client, the fleet registry's etcd gateway (SlimFleet);
//   and the Foxglove WebSocket protocol (SlimLive) with per-connection limits and timeouts.
// - swift-service-lifecycle: the server's parts run as Services in one ServiceGroup, which orders
//   their start and their graceful shutdown (fusion drains, then the recording closes).
let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny")
]

let package = Package(
    name: "SlimSplit",
    products: [
        .executable(name: "slimsplit", targets: ["slimsplit"]),
        .executable(name: "slimsplit-bench", targets: ["slimsplit-bench"]),
        .library(name: "SlimWire", targets: ["SlimWire"]),
        .library(name: "SlimTransport", targets: ["SlimTransport"]),
        // For Tests/Fuzz (a package of its own, built with libFuzzer and AddressSanitizer).
        .library(name: "SlimEngine", targets: ["SlimEngine"]),
        .library(name: "SlimPerception", targets: ["SlimPerception"]),
        .library(name: "SlimSensors", targets: ["SlimSensors"]),
        .library(name: "SlimConfig", targets: ["SlimConfig"]),
        .library(name: "SlimPipeline", targets: ["SlimPipeline"]),
        .library(name: "SlimServer", targets: ["SlimServer"]),
        .library(name: "SlimLive", targets: ["SlimLive"]),
        .library(name: "SlimFleet", targets: ["SlimFleet"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // System libraries, reached through pkg-config.
        .systemLibrary(
            name: "CZeroMQ", pkgConfig: "libzmq",
            providers: [.apt(["libzmq3-dev"]), .brew(["zeromq"])]),
        .systemLibrary(
            name: "CLZ4", pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"]), .brew(["lz4"])]),
        // zstd chunks of MCAP recordings (the official mcap writers' default compression).
        .systemLibrary(
            name: "CZstd", pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"]), .brew(["zstd"])]),
        // Small C kernels with architecture-specific paths and portable fallbacks.
        // Optimized even in debug builds, so that the test suite's model runs stay quick.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O2"])]),
        // Counts heap allocations (benchmark and tests only): shows hot paths allocate nothing.
        .target(name: "CAllocCounter"),
        // SIGINT / SIGTERM for graceful shutdown (a self-pipe signal handler).
        .target(name: "CShutdown"),

        // The few things every layer shares: the system clock, the lock, rate-limited logging.
        .target(
            name: "SlimCore", dependencies: [.product(name: "Logging", package: "swift-log")], swiftSettings: strict),
        // Wire format: messages, CRC-32C, bit packing, feature payloads (Protocol/PROTOCOL.md).
        .target(name: "SlimWire", dependencies: ["CKernels", "CLZ4", "SlimCore"], swiftSettings: strict),
        // ZeroMQ transport: single-owner socket threads, CurveZMQ + ZAP, zero-copy sends.
        .target(
            name: "SlimTransport",
            dependencies: ["CZeroMQ", "SlimCore", "SlimWire", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        // YAML configuration files, validated with errors that name file and key (a reader only:
        // the server's and agent's configs are in SlimPipeline, so sensors link no transport).
        .target(name: "SlimConfig", dependencies: ["Yams"], swiftSettings: strict),
        // Fusion server: sessions, validation, per-agent accounting.
        .target(
            name: "SlimServer",
            dependencies: [
                "CKernels", "SlimCore", "SlimWire", "SlimTransport", "SlimEngine", "SlimPerception",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        // HTTP on swift-nio: Prometheus metrics, the live dashboard and the Foxglove WebSocket
        // protocol (fused detections and agent state), with limits against slow and hostile clients.
        .target(
            name: "SlimLive",
            dependencies: [
                "SlimServer", "SlimEngine", "SlimPerception",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // Fleet of region servers: region map, registry on etcd (its HTTP/JSON gateway, over
        // swift-nio's HTTP client codec), and the handover decisions.
        .target(
            name: "SlimFleet",
            dependencies: [
                "SlimCore", "SlimWire", "SlimConfig",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // Edge agent: session, newest-frame-wins sending, RTT and goodput bookkeeping.
        .target(
            name: "SlimAgent",
            dependencies: [
                "SlimCore", "SlimWire", "SlimTransport", "SlimEngine", "SlimPerception", "SlimSensors",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // Neural engine: NHWC tensors, float and int8 kernels, slimmable layers, safetensors models.
        .target(name: "SlimEngine", dependencies: ["CKernels"], swiftSettings: strict),
        // Perception on the engine: the transmitted features' quantization and the model's
        // rate-accuracy table, cooperative detection (warp, fusion, head, NMS), BEV boxes, AP.
        .target(name: "SlimPerception", dependencies: ["SlimCore", "SlimEngine"], swiftSettings: strict),
        // Sensor streams: MCAP (ROS 2) recording and replay, LiDAR scene simulator, BEV featurizer.
        .target(
            name: "SlimSensors", dependencies: ["CKernels", "CLZ4", "CZstd", "SlimCore", "SlimEngine", "SlimConfig"],
            swiftSettings: strict),
        // End to end: agents replaying a recording and the fusion server, over real sockets.
        .target(
            name: "SlimPipeline",
            dependencies: [
                "SlimCore", "SlimWire", "SlimTransport", "SlimConfig", "SlimEngine", "SlimPerception", "SlimSensors",
                "SlimAgent",
                "SlimServer", "SlimLive", "SlimFleet", .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "slimsplit",
            dependencies: [
                "SlimCore", "SlimWire", "SlimTransport", "SlimConfig", "SlimServer", "SlimAgent", "SlimEngine",
                "SlimPerception",
                "SlimSensors",
                "SlimPipeline", "SlimLive", "SlimFleet", "CZeroMQ", "TestSupport",
                "CShutdown",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // Benchmarks (JSON, peers compared in the same run); the only executable with the allocation counter.
        .executableTarget(
            name: "slimsplit-bench",
            dependencies: [
                "SlimCore", "SlimWire", "SlimTransport", "SlimEngine", "SlimPerception", "SlimSensors", "SlimPipeline",
                "CZeroMQ",
                "CAllocCounter",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),

        // Running subprocesses from tests without blocking the concurrency pool.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "SlimWireTests", dependencies: ["SlimWire"], swiftSettings: strict),
        .testTarget(
            name: "SlimEngineTests", dependencies: ["SlimEngine", "SlimPerception", "CAllocCounter"],
            swiftSettings: strict),
        .testTarget(
            name: "SlimSensorsTests", dependencies: ["SlimSensors", "SlimEngine", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "SlimPipelineTests",
            dependencies: [
                "SlimPipeline", "SlimAgent", "SlimEngine", "SlimPerception", "SlimSensors", "SlimServer",
                "SlimTransport",
                "CAllocCounter",
            ],
            swiftSettings: strict),
        .testTarget(
            name: "SlimTransportTests",
            dependencies: [
                "SlimWire", "SlimTransport", "SlimConfig", "SlimServer", "SlimAgent", "SlimEngine", "SlimPerception",
                "SlimSensors",
                "SlimPipeline", "SlimLive", "SlimFleet", "CZeroMQ", "TestSupport",
            ],
            swiftSettings: strict),
    ]
)
