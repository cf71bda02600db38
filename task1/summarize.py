"""`python -m task1.summarize`: the sweep report's command, in task1/sweeps/report.py."""

from task1.sweeps.report import main

if __name__ == "__main__":
    main()
