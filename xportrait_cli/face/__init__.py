"""Faces: 68-point landmarks (FAN or offline dlib), driving-to-portrait alignment, local patches."""
