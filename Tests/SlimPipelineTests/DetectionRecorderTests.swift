import Foundation
import Logging
import Testing

@testable import SlimPipeline

/// The server's detection outputs refuse a path they cannot write at start, with the path named,
/// instead of running without them.
@Suite("Detection recorder: an output it cannot create is an error at start")
struct DetectionRecorderTests {
    @Test func jsonLinesInAMissingDirectory() throws {
        let path = "/nonexistent-slimsplit-dir-\(getpid())/fused.jsonl"
        let logger = Logger(label: "test")
        #expect {
            _ = try DetectionRecorder(path: nil, jsonLines: path, logger: logger)
        } throws: { error in
            "\(error)".contains(path)
        }
        // A writable path works, and the file exists from the start.
        let ok = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-rec-\(getpid()).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: ok) }
        _ = try DetectionRecorder(path: nil, jsonLines: ok, logger: logger)
        #expect(FileManager.default.fileExists(atPath: ok))
    }
}
