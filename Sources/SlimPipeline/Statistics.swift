/// The p-quantile (0…1) of `v` by rank (the value at index ⌊p·n⌋ of the sorted values); NaN when empty.
public func percentile(_ v: [Double], _ p: Double) -> Double {
    guard !v.isEmpty else { return .nan }
    let s = v.sorted()
    return s[min(s.count - 1, Int(p * Double(s.count)))]
}
