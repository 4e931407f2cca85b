import ArgumentParser
import Glibc
import SlimTransport

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write a CurveZMQ key pair: NAME.pub (share it) and NAME.key (keep it secret, mode 0600).",
        discussion: """
            The server's allow-list is a folder of agents' .pub files; agents need the server's .pub.
              slimsplit keygen --name server --out keys
              slimsplit keygen --name car-1 --out keys/agents
            """)

    @Option(help: "Key name: the file names and the name the server logs for this key.")
    var name: String

    @Option(help: "Output folder (created if missing).")
    var out: String = "keys"

    @Flag(help: "Overwrite existing key files.")
    var force = false

    func run() throws {
        guard !name.isEmpty, !name.contains("/") else { throw ValidationError("--name must be a plain file name") }
        mkdirs(out)
        let secret = "\(out)/\(name).key"
        if !force, access(secret, F_OK) == 0 {
            throw ValidationError("\(secret) exists; pass --force to replace it")
        }
        let pair = try CurveKeyPair.generate()
        try pair.write(name: name, directory: out)
        print("wrote \(out)/\(name).pub (public: \(pair.publicKey.z85)) and \(secret) (secret, mode 0600)")
    }
}

/// `mkdir -p`.
func mkdirs(_ path: String) {
    var cur = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        cur += "/\(part)"
        mkdir(cur, 0o755)
    }
}
