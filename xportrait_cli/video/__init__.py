"""Video input and output: a streaming reader and an atomic H.264 writer with audio copy."""
