/// The p-quantile (0…1) of `v` by rank (the value at index ⌊p·n⌋ of the sorted values); NaN when empty.
public func percentile(_ v: [Double], _ p: Double) -> Double {
    guard !v.isEmpty else { return .nan }
    let s = v.sorted()
    return s[min(s.count - 1, Int(p * Double(s.count)))]
}

/// `v` with exactly `decimals` digits after the point ("-" when not finite), for tables and JSON.
public func fmt(_ v: Double, _ decimals: Int = 1) -> String {
    guard v.isFinite else { return "-" }
    var p = 1.0
    for _ in 0..<decimals { p *= 10 }
    let r = (v * p).rounded() / p
    var s = "\(r)"
    if let dot = s.firstIndex(of: ".") {
        let frac = s.distance(from: dot, to: s.endIndex) - 1
        if frac < decimals { s += String(repeating: "0", count: decimals - frac) }
        if decimals == 0 { s = String(s[..<dot]) }
    } else if decimals > 0 {
        s += "." + String(repeating: "0", count: decimals)
    }
    return s
}
