import CKernels
import Dispatch
import Glibc
import Logging
import ServiceLifecycle
import Synchronization
import SlimTransport
import SlimWire

/// The fusion server as a service: the receive loop validates, acknowledges and hands frames to
/// fusion (``FeatureServer``); fusion (``FusionService``) runs on threads of its own (as many as
/// the service has detectors, `fusion.threads`; each pinned to its own CPU when there is one per
/// CPU the process may run on), below the receive path's scheduling priority,
/// and sends every agent with a new frame the fused detections in its own frame. The pass
/// threads' nice value (`fusionNice`, 10) lets the socket threads and the receive loop preempt a
/// pass: on Linux a woken thread of equal priority otherwise often waits a scheduler slice
/// (~3 ms) behind it, and one agent's Ack RTT p50 was the length of a pass (3.4 ms; 0.8 ms with
/// the nice value, measured on a 2-core EPYC VM). It still
/// gets its share of a CPU that other work saturates (SCHED_IDLE, which removes the rest of the
/// tail, starved fusion beside two CPU hogs: 15 Results for 200 frames). `slimsplit server`, `demo`,
/// `eval` and the tests all run this one type.
///
/// Graceful shutdown (its ``run()`` under a `ServiceGroup` sees SIGTERM/SIGINT, or
/// ``ServiceGroup/triggerGracefulShutdown()``): the pass under way ends, one last pass fuses every
/// frame already acknowledged, its Results and pending Acks are handed to libzmq, which gets
/// `drainMs` to send them, and then `run()` returns. Observers see every pass's outputs, the last
/// one included, before `run()` returns.
public final class FusionServer: Service, Sendable {
    /// When a fusion pass runs.
    public enum Trigger: Sendable {
        /// As soon as a frame is in (frames that arrive together share a pass), at most this many
        /// passes a second: a frame waits for no clock.
        case arrival(maxPassesPerSecond: Double)
        /// When every one of these agents has a frame newer than its last fusion (lock-step replay,
        /// so that results are deterministic; `eval` and `demo` use it).
        case allOf(Set<String>)
    }

    public typealias Observer = @Sendable (_ outputs: [FusionService.Output], _ server: FusionServer) -> Void
    /// Extra work for an accepted numbered message (a FeatureFrame or Boxes), after fusion took it,
    /// with the sensor position it reported (the fleet's handover decisions).
    public typealias FrameHook =
        @Sendable (_ agent: String, _ position: SIMD3<Double>, _ server: FusionServer) -> Void

    public let server: FeatureServer
    public let fusion: FusionService?
    public let trigger: Trigger
    public let drainMs: Int
    private let router: any ServerTransport
    private let observers = Locked<[Observer]>([])
    private let arrivals: AsyncStream<Void>
    private let arrived: AsyncStream<Void>.Continuation
    private let passSeconds = Locked<[(wall: Double, cpu: Double)]>([])
    private let logger: Logger
    private let beforeShutdown = Locked<(@Sendable (FusionServer) async -> Void)?>(nil)
    private let worker: FusionThread

    public init(
        endpoint: any ServerTransport, options: ServerOptions = ServerOptions(), fusion: FusionService?,
        trigger: Trigger = .arrival(maxPassesPerSecond: 100), drainMs: Int = 1000, fusionNice: Int32 = 10,
        logger: Logger,
        onFrame: FrameHook? = nil, onJoin: (@Sendable (_ agent: String) -> Void)? = nil
    ) {
        router = endpoint
        worker = FusionThread(nice: fusionNice, threads: fusion?.threads ?? 1)
        self.fusion = fusion
        self.trigger = trigger
        self.drainMs = drainMs
        self.logger = logger
        (arrivals, arrived) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let me = Locked<FusionServer?>(nil)
        let arrived = self.arrived
        var check: FeatureServer.FrameCheck?
        if let fusion { check = { _, header in fusion.check(header) } }
        server = FeatureServer(
            endpoint: endpoint, options: options, logger: logger, check: check,
            onFrame: { agent, frame in
                if fusion?.ingest(agent: agent, frame) == true { arrived.yield() }
                if let onFrame, let s = me.value { onFrame(agent, frame.header.position, s) }
            },
            onBoxes: { agent, boxes in
                if fusion?.ingest(agent: agent, boxes: boxes) == true { arrived.yield() }
                if let onFrame, let s = me.value { onFrame(agent, boxes.position, s) }
            },
            onJoin: { agent in
                fusion?.joined(agent: agent)
                onJoin?(agent)
            })
        me.withLock { $0 = self }
    }

    /// Adds an observer of every fusion pass's outputs (the recording, the live view, a test).
    /// Observers run on the fusion task after the pass's Results went out: keep them short.
    public func observe(_ observer: @escaping Observer) { observers.withLock { $0.append(observer) } }

    /// Work to do when a graceful shutdown begins, while frames are still taken and acknowledged
    /// (a fleet server hands its agents over); the last pass and the drain follow it.
    public func onShutdown(_ work: @escaping @Sendable (FusionServer) async -> Void) {
        beforeShutdown.withLock { $0 = work }
    }

    deinit { worker.stop() }

    /// The CPUs the fusion threads are pinned to, one each (empty: not pinned; see `FusionThread`).
    public var fusionCPUs: [Int] { worker.pinnedCPUs }

    /// Durations of the recent fusion passes, seconds (the last 4096).
    public var passDurations: [Double] { passSeconds.value.map(\.wall) }

    /// CPU time of the recent fusion passes, seconds, summed over the fusion threads (the last
    /// 4096): what a pass costs when it has the cores to itself, whoever else runs on them.
    public var passCPUTimes: [Double] { passSeconds.value.map(\.cpu) }

    /// Serves until a graceful shutdown, then drains (see the type's documentation).
    public func run() async {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await self.server.run()
                    self.arrived.finish()  // the socket closed: no more frames, so fusion ends too
                }
                group.addTask { await self.fuseUntilShutdown() }
            }
        } onGracefulShutdown: {
            if let work = self.beforeShutdown.value {
                Task {
                    await work(self)
                    self.arrived.finish()
                }
            } else {
                self.arrived.finish()
            }
        }
    }

    /// Stops as a graceful shutdown would, without a service group (tests, one-shot sessions).
    public func shutdown() { arrived.finish() }

    private func fuseUntilShutdown() async {
        var last: UInt64 = 0
        // Without a model nothing arrives here: the loop only waits for the shutdown.
        for await _ in arrivals {
            guard let fusion else { continue }
            switch trigger {
            case .arrival(let rate):
                let gapNs = UInt64(1e9 / max(rate, 0.001))
                let now = SystemClock.monotonicNs()
                if now < last &+ gapNs { try? await Task.sleep(nanoseconds: last &+ gapNs - now) }
                last = SystemClock.monotonicNs()
                await pass(fusion, only: nil)
            case .allOf(let agents):
                if Set(fusion.pending).isSuperset(of: agents) { await pass(fusion, only: nil) }
            }
        }
        // Shutdown: every frame already acknowledged gets its Result.
        if let fusion { await pass(fusion, only: nil) }
        worker.stop()
        router.drainAndClose(drainMs: Int32(clamping: drainMs))
    }

    private func pass(_ fusion: FusionService, only: [String]?) async {
        let t0 = SystemClock.monotonicNs()
        let worker = self.worker
        let cpu0 = worker.cpuNs
        let outs = await worker.run { fusion.tick(only: only, parallel: worker.parallel) }
        guard !outs.isEmpty else { return }
        let cpu = Double(worker.cpuNs &- cpu0) / 1e9
        let now = SystemClock.wallNs()
        for o in outs { server.send(fusion.result(o, fusionTimeNs: now), toAgent: o.agent) }
        let dt = Double(SystemClock.monotonicNs() - t0) / 1e9
        passSeconds.withLock { p in
            if p.count >= 4096 { p.removeFirst(p.count - 4095) }
            p.append((dt, cpu))
        }
        for o in observers.value { o(outs, self) }
    }
}

/// A service that waits for the graceful shutdown and then closes something (an HTTP endpoint, a
/// recording): it lets the service group order the closing.
public struct ClosingService: Service {
    public let name: String
    private let close: @Sendable () async -> Void

    public init(_ name: String, close: @escaping @Sendable () async -> Void) {
        self.name = name
        self.close = close
    }

    public func run() async throws {
        try? await gracefulShutdown()
        await close()
    }
}

/// The threads fusion passes run on, niced below the rest of the server (Linux nice values are
/// per thread), so that the socket threads and the receive loop preempt a pass at once. They also
/// keep a pass, which computes for milliseconds, off Swift's cooperative pool (as many threads as
/// cores), where it would hold a thread every other task needs. A pass runs on one of them and
/// spreads its agents over all of them (``parallel(_:_:)``); passes never overlap.
final class FusionThread: Sendable {
    private struct Queue {
        var jobs: [@Sendable () -> Void] = []
        var stopping = false
    }
    private let queue = Mutex(Queue())
    /// Counts queued jobs (and one stop per thread): the threads sleep on it.
    private let ready = DispatchSemaphore(value: 0)
    /// Threads in the pool (at least 1).
    let count: Int
    /// CPU time the pool's threads have spent in jobs, nanoseconds (each thread's own clock, so
    /// time a job waited for a core, or for its helpers, is not counted).
    private let cpu = Atomic<UInt64>(0)

    /// CPU nanoseconds spent in this pool's jobs so far.
    var cpuNs: UInt64 { cpu.load(ordering: .acquiring) }

    /// Runs `f` on this thread and adds the CPU time it took to `cpuNs`, before anyone waiting
    /// for `f` is released (callers release them after this returns).
    private func counted<T>(_ f: () -> T) -> T {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        let t0 = UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
        let r = f()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        cpu.add(UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec) &- t0, ordering: .releasing)
        return r
    }

    /// The CPUs the threads are pinned to, one each (empty: not pinned).
    let pinnedCPUs: [Int]

    /// Starts `threads` threads at `nice`. With two or more threads, one per CPU the process may
    /// run on (its affinity mask), each thread is pinned to its own CPU: a pass wakes its helpers
    /// from one of them, and Linux places a woken thread on the waker's CPU when it can, where the
    /// two then share one CPU in scheduler slices while another sits idle (measured on a 2-vCPU
    /// EPYC VM: a 2-thread pass took 13–17 ms instead of 9.3 about half the time, its threads
    /// alternating 4 ms slices on one CPU). Fewer threads than CPUs are not pinned: the process
    /// does not own the CPUs it would choose (other pods of a node under a CPU quota would all
    /// pick the first ones).
    init(nice: Int32, threads: Int = 1) {
        count = max(1, threads)
        let allowed = count > 1 ? Self.allowedCPUs() : []
        pinnedCPUs = count == allowed.count ? allowed : []
        for i in 0..<count {
            let box = Unmanaged.passRetained(Context(queue: self, nice: nice, cpu: pinnedCPUs.isEmpty ? nil : pinnedCPUs[i]))
            var t = pthread_t()
            pthread_create(
                &t, nil,
                { arg in
                    let c = Unmanaged<Context>.fromOpaque(arg!).takeRetainedValue()
                    _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, c.nice)  // this thread only
                    if let cpu = c.cpu { _ = slim_pin_thread(Int32(cpu)) }  // best effort
                    c.queue.loop()
                    return nil
                }, box.toOpaque())
            pthread_detach(t)
        }
    }

    private final class Context: Sendable {
        let queue: FusionThread
        let nice: Int32
        let cpu: Int?
        init(queue: FusionThread, nice: Int32, cpu: Int?) {
            self.queue = queue
            self.nice = nice
            self.cpu = cpu
        }
    }

    /// The CPUs this process may run on (its affinity mask: a container's cpuset, `taskset`), ascending.
    static func allowedCPUs() -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = Int(slim_allowed_cpus(&cpus, Int32(cpus.count)))
        return cpus.prefix(n).map(Int.init)
    }

    private func loop() {
        while true {
            ready.wait()
            let (job, stop) = queue.withLock { q -> ((@Sendable () -> Void)?, Bool) in
                q.jobs.isEmpty ? (nil, q.stopping) : (q.jobs.removeFirst(), false)
            }
            if let job { job() } else if stop { return }
        }
    }

    /// Calls `body(0) … body(n − 1)`, spread over the pool; returns when all have returned. Call
    /// it from a job of this pool (a pass): that thread takes part, and the others are idle, since
    /// passes do not overlap, so every helper it queues runs. Iterations are claimed one at a
    /// time, so a helper that starts late finds nothing left and returns at once.
    func parallel(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
        let helpers = min(n, count) - 1
        guard helpers > 0 else {
            for i in 0..<n { body(i) }
            return
        }
        let next = Mutex(0)
        let done = DispatchGroup()
        let work: @Sendable () -> Void = {
            while true {
                let i = next.withLock { k -> Int in
                    defer { k += 1 }
                    return k
                }
                guard i < n else { return }
                body(i)
            }
        }
        let queued = queue.withLock { q -> Bool in
            guard !q.stopping else { return false }
            for _ in 0..<helpers {
                done.enter()
                q.jobs.append {
                    self.counted(work)
                    done.leave()
                }
            }
            return true
        }
        if queued { for _ in 0..<helpers { ready.signal() } }
        work()
        if queued { done.wait() }
    }

    /// Runs `body` on a thread of the pool and returns its value.
    func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            let accepted = queue.withLock { q -> Bool in
                guard !q.stopping else { return false }
                q.jobs.append { c.resume(returning: self.counted(body)) }
                return true
            }
            if accepted { ready.signal() } else { c.resume(returning: counted(body)) }
        }
    }

    /// Ends the threads once the queued jobs are done. Idempotent.
    func stop() {
        let first = queue.withLock { q -> Bool in
            defer { q.stopping = true }
            return !q.stopping
        }
        if first { for _ in 0..<count { ready.signal() } }
    }
}
