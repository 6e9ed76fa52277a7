"""What runs inside each rank: the training entry, its callbacks, patches and samples."""
