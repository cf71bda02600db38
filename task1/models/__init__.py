"""Models: `nets` (the torch.nn versions), `scratch` (their hand-written twins, same names and signatures),
`init` (the initialisation both share) and `system` (the LightningModule that trains any of them).

`model.impl=torch|scratch` names the module in the config's `_target_` (`task1.models.${model.impl}.MLP`); `torch`
is the name the book gives them, and `task1.models.torch` only re-exports `nets`.
Nothing is imported here, so that reading a config imports no Lightning.
"""
