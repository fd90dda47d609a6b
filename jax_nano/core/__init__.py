"""The framework-free core both trainers stand on: the timed loop, the trainer interface, checkpoint rules,
checksums, reports, the leaderboard, the device check and the command-line helpers. Imports no JAX or PyTorch."""
