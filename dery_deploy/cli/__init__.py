"""The `dery` command line: one small module per sub-command."""
