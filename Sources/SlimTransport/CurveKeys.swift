import CZeroMQ
import Glibc

/// A CurveZMQ key pair. Files are Z85 text, 40 characters and a newline (PROTOCOL.md §8).
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: CurveKey
    public let secretKey: CurveKey

    /// A fresh key pair from libzmq (libsodium underneath).
    public static func generate() throws(ZMQError) -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41)
        var sec = [CChar](repeating: 0, count: 41)
        try check(zmq_curve_keypair(&pub, &sec), "zmq_curve_keypair")
        return CurveKeyPair(publicKey: try! CurveKey(z85: cString(pub)), secretKey: try! CurveKey(z85: cString(sec)))
    }

    public init(publicKey: CurveKey, secretKey: CurveKey) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// Loads `NAME.key` and derives the public key from it.
    public init(secretKeyFile path: String) throws(KeyFileError) {
        secretKey = try CurveKey(file: path)
        var pub = [CChar](repeating: 0, count: 41)
        let z = secretKey.z85
        guard zmq_curve_public(&pub, z) == 0 else {
            throw KeyFileError(path: path, problem: "cannot derive a public key from it")
        }
        publicKey = try! CurveKey(z85: cString(pub))
    }

    /// Writes `dir/name.pub` and `dir/name.key` (mode 0600).
    public func write(name: String, directory: String) throws(KeyFileError) {
        try publicKey.write(to: "\(directory)/\(name).pub", mode: 0o644)
        try secretKey.write(to: "\(directory)/\(name).key", mode: 0o600)
    }
}

public struct KeyFileError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let problem: String
    public var description: String { "key file \(path): \(problem)" }
}

/// A 32-byte Curve25519 key.
public struct CurveKey: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 32)
        self.bytes = bytes
    }

    public init(z85: String) throws(KeyFileError) {
        guard z85.utf8.count == 40 else {
            throw KeyFileError(path: "-", problem: "a Z85 key has 40 characters, got \(z85.utf8.count)")
        }
        var out = [UInt8](repeating: 0, count: 32)
        guard zmq_z85_decode(&out, z85) != nil else { throw KeyFileError(path: "-", problem: "not valid Z85 text") }
        bytes = out
    }

    public init(file path: String) throws(KeyFileError) {
        guard let f = fopen(path, "r") else {
            throw KeyFileError(path: path, problem: String(cString: strerror(errno)))
        }
        defer { fclose(f) }
        var buf = [CChar](repeating: 0, count: 128)
        guard fgets(&buf, Int32(buf.count), f) != nil else { throw KeyFileError(path: path, problem: "empty file") }
        let text = cString(buf).trimmingCharacters(in: " \t\r\n")
        do { try self.init(z85: text) } catch { throw KeyFileError(path: path, problem: error.problem) }
    }

    public var z85: String {
        var out = [CChar](repeating: 0, count: 41)
        bytes.withUnsafeBufferPointer { _ = zmq_z85_encode(&out, $0.baseAddress, 32) }
        return cString(out)
    }

    public var description: String { z85 }

    func write(to path: String, mode: mode_t) throws(KeyFileError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        guard fd >= 0 else { throw KeyFileError(path: path, problem: String(cString: strerror(errno))) }
        defer { close(fd) }
        fchmod(fd, mode)
        let line = Array((z85 + "\n").utf8)
        guard Glibc.write(fd, line, line.count) == line.count else {
            throw KeyFileError(path: path, problem: String(cString: strerror(errno)))
        }
    }
}

/// The server's allow-list: a folder of `NAME.pub` files, or keys given directly.
public struct CurveAllowList: Sendable {
    /// Key → name used in logs and metrics.
    public var names: [CurveKey: String]

    public init(_ names: [CurveKey: String] = [:]) { self.names = names }

    public init(directory: String) throws(KeyFileError) {
        guard let d = opendir(directory) else {
            throw KeyFileError(path: directory, problem: String(cString: strerror(errno)))
        }
        defer { closedir(d) }
        var names: [CurveKey: String] = [:]
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            guard name.hasSuffix(".pub") else { continue }
            names[try CurveKey(file: "\(directory)/\(name)")] = String(name.dropLast(4))
        }
        self.names = names
    }
}

extension String {
    /// Trims the given characters (by Unicode scalar, so "\r\n" and "\n" both go).
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set.unicodeScalars)
        var s = Substring(self).unicodeScalars
        while let f = s.first, chars.contains(f) { s.removeFirst() }
        while let l = s.last, chars.contains(l) { s.removeLast() }
        return String(s)
    }
}
