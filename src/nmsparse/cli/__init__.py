"""Command-line interface: ``nmsparse <command>`` (also ``python -m nmsparse``)."""
