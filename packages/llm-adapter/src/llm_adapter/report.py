from __future__ import annotations


def register(subparsers):  # placeholder until written
    return None
