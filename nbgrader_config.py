"""nbgrader settings for this course (used by the nbgrader CLI and formgrader).

The `course` command builds the same settings in code: see course_lib.grading.apply_nbgrader_settings.
"""
from pathlib import Path

from course_lib.grading import apply_nbgrader_settings

c = get_config()  # noqa: F821 - provided by nbgrader when it reads this file
apply_nbgrader_settings(c, Path(__file__).resolve().parent)
# A course-local exchange (the default, /usr/local/share/nbgrader/exchange, is not writable for most
# users): the Lab extension's assignment list works out of the box.
c.Exchange.root = str(Path(__file__).resolve().parent / "exchange")
