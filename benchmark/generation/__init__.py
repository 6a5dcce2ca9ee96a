"""Generation: sampling a classifier's energy with sampler plugins, and IS/FID of the samples."""
