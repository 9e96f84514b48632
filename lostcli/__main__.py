"""`python -m lostcli ...` (and `accelerate launch -m lostcli ...`) runs the `lost` CLI."""

from lostcli.cli.app import main

if __name__ == "__main__":
    main()
