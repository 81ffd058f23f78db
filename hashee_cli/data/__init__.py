"""Tasks, data files and batches."""
