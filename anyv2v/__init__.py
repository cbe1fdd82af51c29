"""AnyV2V on I2VGen-XL: propagate a first-frame edit through a whole video, tuning-free."""

__version__ = "0.1.0"
