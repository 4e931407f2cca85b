// The transport's users (server, agent, pipeline) see the core's clock, lock and rate-limited
// log through it; layers below the transport import SlimCore themselves.
@_exported import SlimCore
