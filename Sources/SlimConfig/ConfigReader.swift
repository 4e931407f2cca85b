import Yams

/// A configuration problem, naming the file and the key (`socket.send_hwm`).
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let file: String
    public let key: String
    public let problem: String

    public init(file: String, key: String, problem: String) {
        self.file = file
        self.key = key
        self.problem = problem
    }

    public var description: String { key.isEmpty ? "\(file): \(problem)" : "\(file): \(key): \(problem)" }
}

/// Reads one YAML mapping, remembering which keys were used, so that `finish()` can reject
/// unknown keys (with a suggestion) instead of silently ignoring a typo.
public final class ConfigSection {
    public let file: String
    public let path: String
    private let mapping: [String: Node]
    private var used: Set<String> = []
    private var children: [ConfigSection] = []

    /// A section over an already composed YAML node (`path` "" for the document root).
    public init(file: String, path: String, node: Node) throws(ConfigError) {
        self.file = file
        self.path = path
        guard case .mapping(let m) = node else {
            throw ConfigError(file: file, key: path, problem: "expected a mapping of keys to values")
        }
        var dict: [String: Node] = [:]
        for (k, v) in m {
            guard let key = k.string else { throw ConfigError(file: file, key: path, problem: "keys must be strings") }
            dict[key] = v
        }
        mapping = dict
    }

    /// Parses YAML text; an empty document is an empty mapping.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> ConfigSection {
        let node: Node?
        do { node = try Yams.compose(yaml: text, .default, .default, .utf8) } catch {
            throw ConfigError(file: file, key: "", problem: "not valid YAML: \(error)")
        }
        return try ConfigSection(file: file, path: "", node: node ?? .mapping(.init([])))
    }

    public static func load(file: String) throws(ConfigError) -> ConfigSection {
        guard let text = readTextFile(file) else {
            throw ConfigError(file: file, key: "", problem: "cannot read the file")
        }
        return try parse(text, file: file)
    }

    public func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    private func node(_ key: String) -> Node? {
        used.insert(key)
        guard let n = mapping[key] else { return nil }
        if case .scalar(let s) = n, s.string == "~" || s.string == "null" || s.string.isEmpty { return nil }
        return n
    }

    private func fail(_ key: String, _ problem: String) -> ConfigError {
        ConfigError(file: file, key: keyPath(key), problem: problem)
    }

    public func has(_ key: String) -> Bool { mapping[key] != nil }

    /// The keys of this mapping, sorted (for sections whose keys are names, like a region map's).
    public var keys: [String] { mapping.keys.sorted() }

    public func string(_ key: String, default value: String? = nil) throws(ConfigError) -> String {
        guard let n = node(key) else {
            if let value { return value }
            throw fail(key, "required, missing")
        }
        guard case .scalar(let s) = n else { throw fail(key, "expected a string") }
        return s.string
    }

    public func optionalString(_ key: String) throws(ConfigError) -> String? {
        guard let n = node(key) else { return nil }
        guard case .scalar(let s) = n else { throw fail(key, "expected a string") }
        return s.string
    }

    public func int(_ key: String, default value: Int? = nil, in range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard let n = node(key) else {
            if let value { return value }
            throw fail(key, "required, missing")
        }
        guard let v = n.int else { throw fail(key, "expected an integer, got \(n.string ?? "a non-scalar")") }
        guard range.contains(v) else {
            throw fail(key, "\(v) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    /// An integer that may be absent (nil).
    public func optionalInt(_ key: String, in range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        node(key) == nil ? nil : try int(key, in: range)
    }

    public func double(_ key: String, default value: Double? = nil, in range: ClosedRange<Double>) throws(ConfigError)
        -> Double
    {
        guard let n = node(key) else {
            if let value { return value }
            throw fail(key, "required, missing")
        }
        guard let v = n.float else { throw fail(key, "expected a number, got \(n.string ?? "a non-scalar")") }
        guard range.contains(v) else {
            throw fail(key, "\(v) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    public func bool(_ key: String, default value: Bool) throws(ConfigError) -> Bool {
        guard let n = node(key) else { return value }
        guard let v = n.bool else { throw fail(key, "expected true or false, got \(n.string ?? "a non-scalar")") }
        return v
    }

    /// A nested mapping; absent means empty.
    public func section(_ key: String) throws(ConfigError) -> ConfigSection {
        let child = try ConfigSection(file: file, path: keyPath(key), node: node(key) ?? .mapping(.init([])))
        children.append(child)
        return child
    }

    /// Every key path the reader asked for so far (present or not), nested sections expanded:
    /// the keys this kind of file accepts (docs/configuration.md lists them).
    public var keyPaths: [String] {
        let sections = Set(children.map { String($0.path.split(separator: ".").last!) })
        return (used.subtracting(sections).map(keyPath) + children.flatMap(\.keyPaths)).sorted()
    }

    /// Fails on the first key that nothing read, here or in nested sections.
    public func finish() throws(ConfigError) {
        for key in mapping.keys.sorted() where !used.contains(key) {
            var problem = "unknown key"
            if let guess = used.min(by: { editDistance($0, key) < editDistance($1, key) }),
                editDistance(guess, key) <= 3
            {
                problem += " (did you mean '\(guess)'?)"
            } else if !used.isEmpty {
                problem += "; known keys here: \(used.sorted().joined(separator: ", "))"
            }
            throw fail(key, problem)
        }
        for c in children { try c.finish() }
    }

    /// Resolves a path from the config relative to the config file's folder.
    public func resolvePath(_ p: String) -> String {
        if p.hasPrefix("/") { return p }
        guard let slash = file.lastIndex(of: "/") else { return p }
        return String(file[..<slash]) + "/" + p
    }
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a)
    let b = Array(b)
    var prev = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var cur = [i] + Array(repeating: 0, count: b.count)
        for j in 1...max(b.count, 1) where !b.isEmpty {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        prev = cur
    }
    return prev[b.count]
}

func readTextFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        bytes += buf[0..<n]
        if bytes.count > 1 << 20 { return nil }  // configs are small; refuse anything absurd
    }
    return String(decoding: bytes, as: UTF8.self)
}

#if canImport(Glibc)
    import Glibc
#endif
