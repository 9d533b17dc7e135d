"""Chaos tests: real upstream processes that misbehave (trickle, hang, reset), and the mesh."""
