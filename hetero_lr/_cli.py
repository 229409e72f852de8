"""What the package's command lines share."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2 (argparse's)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")
