"""Model parts: encoders (open_clip towers), scale-aware attention, decoder."""
