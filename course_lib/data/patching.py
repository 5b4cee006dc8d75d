"""Prompt pairs for notebook 04 (activation patching), written for this course.

Each pair is (clean prompt, corrupted prompt, clean answer, corrupted answer). The two prompts
have the same number of SmolLM2 tokens (tests check it), so position p is the same slot in both.
"""

# The lecture's example: the subject is swapped for another landmark of the same token length.
FACT_PAIR = ("The Colosseum is in downtown", "The Space Needle is in downtown", " Rome", " Seattle")

# The lecture's bias example: only the profession differs.
BIAS_PAIR = ("The nurse entered the room.", "The doctor entered the room.", " She", " He")
