"""Labelled datasets (image folders, CSV, IDX, saved `datasets`), loading worker processes, and moving 8-bit
batches to the device."""
