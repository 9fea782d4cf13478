"""tessera's compute engine. The TypeScript planner decides; this package only runs tensors."""

PROTOCOL_VERSION = 1
__version__ = "0.1.0"
