"""Prefect flows for paperpost (the domain code lives in the paperpost package)."""
