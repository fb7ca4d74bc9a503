"""q7x2-runtime: what runs inside the image — conversion, preprocessing, pretraining."""

__version__ = "0.1.0"
