"""kiln: fire a PyTorch model into verified, benchmarked artifacts for every runtime."""

__version__ = "0.1.0"
