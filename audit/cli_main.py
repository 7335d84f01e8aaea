"""`python -m repro_audit.audit.cli_main`: the CLI without the console script."""

from repro_audit.audit.cli import main

if __name__ == "__main__":
    main()
