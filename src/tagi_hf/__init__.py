"""tagi-hf: Task Adapters Generation from Instructions (TAGI) for the Hugging Face stack."""

__version__ = "0.1.0"
