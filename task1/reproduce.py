"""`python -m task1.reproduce`: the command in task1/tools/reproduce.py."""

from task1.tools.reproduce import cli

if __name__ == "__main__":
    cli()
