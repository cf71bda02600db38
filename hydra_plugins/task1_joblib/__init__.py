"""task1's `hydra/launcher=joblib`: Hydra's joblib launcher (hydra-joblib-launcher, with its config and fields),
whose Ctrl-C stops every job where it stands, writes the report and says how to go on (launcher.py). config.py
puts it into Hydra's ConfigStore under hydra-joblib-launcher's name."""
