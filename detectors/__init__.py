"""Detectors (bleed, fracture, nodule) and the batched inference engine.

Not built yet: this package arrives with the detectors issue. It will take
arrays and metadata and return findings, knowing nothing of the network or DB.
"""
