"""paperpost: personal email digests from the Hugging Face Daily Papers listing."""

__version__ = "0.1.0"
