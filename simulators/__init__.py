"""Simulators of the paid services osel talks to, for tests, the demo and trying a
configuration. They are written from the vendors' public documentation, are not the
vendors' services and are not part of osel's production code (`src/osel`)."""
