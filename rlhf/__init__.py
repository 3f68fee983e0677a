"""The `rlhf` command line: one entry point (`rlhf.cli`) and its command groups (`rlhf/commands/`)."""
