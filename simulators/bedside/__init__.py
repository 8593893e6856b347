"""Simulated bedside monitor: WLB/1 encoder, patient model and a monitor on a pseudo-terminal."""
