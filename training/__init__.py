"""Training: one module per method, the job runner, presets, estimates and the demo model builder."""
