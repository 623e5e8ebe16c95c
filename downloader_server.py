"""The seed's entry point: `python downloader_server.py` runs the gate (same as `docgate server`)."""

import sys

from docgate.cli import main

if __name__ == "__main__":
    sys.exit(main(["server", *sys.argv[1:]]))
