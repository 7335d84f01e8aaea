"""`python -m audit.cli_main`: the CLI without the console script."""

from audit.cli import main

if __name__ == "__main__":
    main()
