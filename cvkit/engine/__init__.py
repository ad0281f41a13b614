"""Training engine: device and seed set-up, run directories, and (later) the Trainer."""
