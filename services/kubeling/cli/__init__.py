"""The `kubeling` command line: a small kubectl for the kubeling API."""
