"""One module per command: the work of each `pipeline` command, callable without click."""
