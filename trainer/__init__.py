"""Trainer: fits the LSTM autoencoder on normal sensor data and writes a versioned model artifact."""
