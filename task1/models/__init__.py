"""Models: `torch` (the torch.nn versions), `scratch` (their hand-written twins, same names and signatures),
`init` (the initialisation both share) and `system` (the LightningModule that trains any of them).

`model.impl=torch|scratch` names the module in the config's `_target_` (`task1.models.${model.impl}.MLP`).
Nothing is imported here, so that reading a config imports no Lightning.
"""
