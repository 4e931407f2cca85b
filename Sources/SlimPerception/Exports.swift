// Perception's users see the box type (SlimCore) through it.
@_exported import SlimCore
