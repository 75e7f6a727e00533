"""Detectors (bleed, fracture, nodule), routing, and (later) the batched
inference engine.

``detectors.routing`` decides from a series' header which detectors apply; it
imports no torch. The networks and the engine arrive with the detectors issue.
They take arrays and metadata and return findings, knowing nothing of the
network or the DB.
"""
