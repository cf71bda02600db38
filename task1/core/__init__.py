"""The core that trains: config check, build and train, callbacks, checkpoints, run folders, DDP, and the
Lightning short-cuts. Built on by `task1.tools`, never importing them."""
