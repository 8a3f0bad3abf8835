"""Training: losses, ramps, the mean teacher and augmentation for the sift classifier."""
