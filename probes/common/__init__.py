"""Framework-neutral parts of recording: environment, hashing and summaries of numpy arrays."""
