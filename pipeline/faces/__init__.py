"""Faces: one detector interface and its implementations, alignment, tracking, persistence."""
