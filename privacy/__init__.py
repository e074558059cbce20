"""Erasure: finding a person everywhere leadflow keeps them and removing them.

The suppression list that every writer follows afterwards is core
(`leadflow.suppression`), since the stream and the sinks read it; this package
holds what only an erasure request does, and may import the sinks it deletes from.
"""
