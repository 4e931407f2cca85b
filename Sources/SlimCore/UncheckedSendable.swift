/// Carries a value that is not `Sendable` into a task that is its only user from then on (an
/// encoder with its buffers, a C socket handed to a benchmark thread). The caller vouches for that.
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}
