"""The seed's entry point: `python downloader_client.py --api-url … --api-key …` (= docgate client)."""

import sys

from client.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
