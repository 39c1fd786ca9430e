"""Cluster coordination: what several nodes share through Redis.

Presence (``presence``), rate-limit buckets (``rate_limits``), the Socket.IO
queue manager with its reorder buffer (``redis_manager``, ``rev_order``), and
the one way they call Redis scripts (``redis_scripts``). Each shared piece has
a local twin for a single process. It builds on ``realtime``; ``server`` wires it.
"""
