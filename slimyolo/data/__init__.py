"""Data: darknet-layout data sets, the synthetic data set, augmentation, letterbox."""
