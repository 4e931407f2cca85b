import Foundation

/// Packet captures (libpcap format, as tcpdump and Wireshark write them) of UDP streams: read
/// the UDP payloads sent to one port, and write payloads as Ethernet/IPv4/UDP frames.
public enum Pcap {
    public struct Datagram: Sendable {
        public var timeNs: UInt64
        public var payload: [UInt8]
        public init(timeNs: UInt64, payload: [UInt8]) {
            self.timeNs = timeNs
            self.payload = payload
        }
    }

    public struct Error: Swift.Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// The UDP payloads to `port` in a capture (IPv4 over Ethernet, Linux cooked or raw IP).
    /// Frames that are not IPv4/UDP to that port are skipped; a malformed file header or record
    /// is an error naming its offset.
    public static func udpPayloads(_ data: [UInt8], port: UInt16) throws(Error) -> [Datagram] {
        guard data.count >= 24 else { throw Error(description: "pcap: \(data.count) bytes is shorter than the file header") }
        func u32(_ o: Int, _ big: Bool) -> UInt32 {
            let v = UInt32(data[o]) | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2]) << 16 | UInt32(data[o + 3]) << 24
            return big ? v.byteSwapped : v
        }
        let magic = u32(0, false)
        let big: Bool
        let nanos: Bool
        switch magic {
        case 0xA1B2_C3D4: (big, nanos) = (false, false)
        case 0xD4C3_B2A1: (big, nanos) = (true, false)
        case 0xA1B2_3C4D: (big, nanos) = (false, true)
        case 0x4D3C_B2A1: (big, nanos) = (true, true)
        default: throw Error(description: "pcap: magic 0x\(String(magic, radix: 16)) is not a libpcap file (pcapng is not read)")
        }
        let link = u32(20, big)
        var out: [Datagram] = []
        var o = 24
        while o < data.count {
            guard o + 16 <= data.count else { throw Error(description: "pcap: record header at byte \(o) is cut off") }
            let sec = UInt64(u32(o, big)), frac = UInt64(u32(o + 4, big))
            let incl = Int(u32(o + 8, big))
            guard incl <= 262_144, o + 16 + incl <= data.count else {
                throw Error(description: "pcap: record at byte \(o) claims \(incl) bytes, beyond the file or 256 KiB")
            }
            let frame = data[(o + 16)..<(o + 16 + incl)]
            o += 16 + incl
            var ip = frame.startIndex
            switch link {
            case 1:  // Ethernet, optionally one VLAN tag
                guard frame.count >= 14 else { continue }
                var type = UInt16(frame[ip + 12]) << 8 | UInt16(frame[ip + 13])
                ip += 14
                if type == 0x8100, frame.endIndex - ip >= 4 {
                    type = UInt16(frame[ip + 2]) << 8 | UInt16(frame[ip + 3])
                    ip += 4
                }
                guard type == 0x0800 else { continue }
            case 113:  // Linux cooked capture
                guard frame.count >= 16, UInt16(frame[ip + 14]) << 8 | UInt16(frame[ip + 15]) == 0x0800 else { continue }
                ip += 16
            case 101, 12:  // raw IP
                break
            default:
                throw Error(description: "pcap: link type \(link) is not Ethernet, Linux cooked or raw IP")
            }
            guard frame.endIndex - ip >= 20, frame[ip] >> 4 == 4 else { continue }
            let ihl = Int(frame[ip] & 0x0F) * 4
            let fragment = (UInt16(frame[ip + 6]) << 8 | UInt16(frame[ip + 7])) & 0x3FFF
            guard ihl >= 20, frame[ip + 9] == 17, fragment == 0, frame.endIndex - ip >= ihl + 8 else { continue }
            let udp = ip + ihl
            let dst = UInt16(frame[udp + 2]) << 8 | UInt16(frame[udp + 3])
            let length = Int(UInt16(frame[udp + 4]) << 8 | UInt16(frame[udp + 5]))
            guard dst == port, length >= 8, udp + length <= frame.endIndex else { continue }
            out.append(
                Datagram(timeNs: sec * 1_000_000_000 + (nanos ? frac : frac * 1000), payload: Array(frame[(udp + 8)..<(udp + length)])))
        }
        return out
    }

    /// Writes a capture of UDP datagrams from 192.168.1.201:2368 (a Velodyne's default address)
    /// to `port` (Ethernet, IPv4, no checksums), microsecond timestamps.
    public static func write(_ datagrams: [Datagram], port: UInt16) -> [UInt8] {
        var out: [UInt8] = []
        func le32(_ v: UInt32) { out += [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)] }
        func be16(_ v: Int) { out += [UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
        le32(0xA1B2_C3D4)
        out += [2, 0, 4, 0]  // version 2.4
        le32(0)
        le32(0)
        le32(65535)
        le32(1)  // Ethernet
        for d in datagrams {
            let frameLength = 14 + 20 + 8 + d.payload.count
            le32(UInt32(d.timeNs / 1_000_000_000))
            le32(UInt32((d.timeNs % 1_000_000_000) / 1000))
            le32(UInt32(frameLength))
            le32(UInt32(frameLength))
            out += [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x60, 0x76, 0x88, 0x00, 0x00, 0x00, 0x08, 0x00]
            out += [0x45, 0]
            be16(20 + 8 + d.payload.count)
            out += [0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 1, 201, 255, 255, 255, 255]
            be16(2368)
            be16(Int(port))
            be16(8 + d.payload.count)
            out += [0, 0]
            out += d.payload
        }
        return out
    }
}
