"""Text and prompt sets written for this course (no downloads)."""
