"""Prediction on users' media: portable model bundles and the frame-stream predictor."""
