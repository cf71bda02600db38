"""The Hydra config tree. It stays at the top of the repository and ships inside the wheel as the package
`task1.conf`, which task1 reads through importlib.resources (task1/cli.py: CONF)."""
