// swift-tools-version: 5.10
// libFuzzer targets for every parser of outside input (scripts/fuzz builds and runs them). A
// package of its own so that the main build never sees -sanitize=fuzzer; it depends on the
// repository's package by path and links the same libraries the shipped binary does.
import PackageDescription

let package = Package(
    name: "SlimSplitFuzz",
    dependencies: [
        .package(name: "SlimSplit", path: "../.."),
        // NIOEmbedded: the HTTP target drives the live endpoint's pipeline without sockets.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "slimfuzz",
            dependencies: [
                .product(name: "SlimWire", package: "SlimSplit"),
                .product(name: "SlimSensors", package: "SlimSplit"),
                .product(name: "SlimEngine", package: "SlimSplit"),
                .product(name: "SlimPerception", package: "SlimSplit"),
                .product(name: "SlimConfig", package: "SlimSplit"),
                .product(name: "SlimPipeline", package: "SlimSplit"),
                .product(name: "SlimServer", package: "SlimSplit"),
                .product(name: "SlimLive", package: "SlimSplit"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ])
    ]
)
