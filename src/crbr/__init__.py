"""crbr: user modeling and candidate retrieval for recommender systems."""

__version__ = "0.1.0"
