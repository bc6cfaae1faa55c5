"""Reading and writing rasters and vectors."""
