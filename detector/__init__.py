"""Streaming sensor anomaly detector: rolling windows, LSTM autoencoder scoring, Kafka I/O."""

__version__ = "0.1.0"
