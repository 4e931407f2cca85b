/// A message for one agent, with how hard to try.
struct Routed<Message> {
    var routingID: RoutingID
    var message: Message
    var delivery: Delivery
}

/// What one `RoutedOutbox.flush` did, for the counters.
struct DeliveryOutcome {
    var sent = 0
    /// Dropped messages: the agent and the reason ("unroutable", "send_queue_full").
    var dropped: [(RoutingID, String)] = []
    /// Reliable messages waiting per agent, when that changed (nil: unchanged).
    var backlog: [RoutingID: Int]?

    var isEmpty: Bool { sent == 0 && dropped.isEmpty && backlog == nil }
}

/// The router's delivery rules, the same for every transport (`ServerTransport`):
/// - messages to one agent leave in the order they were sent;
/// - when an agent's queue is full, a `.reliable` message is held, and so is everything reliable
///   queued after it for that agent; held messages are retried at the next flush, oldest first;
/// - a `.bestEffort` message that finds the agent's queue full, or reliable messages held before
///   it, is dropped ("send_queue_full");
/// - whatever is for an agent that is gone is dropped ("unroutable").
/// One slow or departed agent never holds up the others.
struct RoutedOutbox<Message> {
    enum Attempt { case sent, full, gone }

    private var held: [RoutingID: [Routed<Message>]] = [:]

    var isHolding: Bool { !held.isEmpty }
    func backlog(of id: RoutingID) -> Int { held[id]?.count ?? 0 }

    /// Retries what is held, then tries `outbox` in order; `attempt` hands one message to the
    /// agent's queue.
    mutating func flush(
        _ outbox: some Sequence<Routed<Message>>, _ attempt: (Routed<Message>) -> Attempt
    ) -> DeliveryOutcome {
        var outcome = DeliveryOutcome()
        var changed = false
        for (id, queue) in held {
            var i = 0
            retry: while i < queue.count {
                switch attempt(queue[i]) {
                case .sent: outcome.sent += 1
                case .full: break retry
                case .gone:
                    outcome.dropped += Array(repeating: (id, "unroutable"), count: queue.count - i)
                    i = queue.count
                    break retry
                }
                i += 1
            }
            if i > 0 {
                changed = true
                held[id] = i == queue.count ? nil : Array(queue[i...])
            }
        }
        for o in outbox {
            let id = o.routingID
            if held[id] != nil {  // behind the agent's held messages, in order
                if o.delivery == .reliable {
                    held[id]!.append(o)
                    changed = true
                } else {
                    outcome.dropped.append((id, "send_queue_full"))
                }
                continue
            }
            switch attempt(o) {
            case .sent: outcome.sent += 1
            case .gone: outcome.dropped.append((id, "unroutable"))
            case .full:
                if o.delivery == .reliable {
                    held[id] = [o]
                    changed = true
                } else {
                    outcome.dropped.append((id, "send_queue_full"))
                }
            }
        }
        if changed { outcome.backlog = held.mapValues(\.count) }
        return outcome
    }

    /// Drops everything held (the transport is closing).
    mutating func removeAll() { held.removeAll() }
}

extension TransportCounters {
    mutating func record(_ o: DeliveryOutcome) {
        sent += o.sent
        for (id, reason) in o.dropped {
            if reason == "unroutable" { unroutable += 1 } else { sendQueueFull += 1 }
            droppedByRoute[id, default: [:]][reason, default: 0] += 1
        }
        if let b = o.backlog { reliableBacklog = b }
    }
}
